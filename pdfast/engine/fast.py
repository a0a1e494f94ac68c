"""The fast chain engine: the reference engine's semantics at a fraction of its memory and time.

One inversion iteration runs the chain x_0 = noise + delta, x_{i+1} = step(x_i, eps_theta(x_i, t_i), z_i) and the
shift loss L = (1/|S|) sum_{i in S} || mean_b eps_theta(x_i, t_i) - lambda_i delta || (S = loss_steps), then
backpropagates to delta. The reference keeps the whole autograd graph: about 1.7 GiB per step at batch 40 on the
CIFAR-10 UNet (METHOD.md section 9). This engine instead:

1. Checkpoints across timesteps, by hand. A forward pass without grad stores only the fp32 chain states
   x_0..x_last. The backward pass walks i = last..0, recomputes eps_i = eps_theta(x_i, t_i) with grad, rebuilds
   x_{i+1} and the loss term L_i, and pulls the adjoint back one step:
       a_i = (d x_{i+1} / d x_i)^T a_{i+1} + d L_i / d x_i,        a_last+1 = 0,
   so grad_delta = (1/|S|) (sum_b a_0 + sum_{i in S} d L_i / d delta)  (x_0 = noise + delta; L_i also holds
   -lambda_i delta directly). With a memory budget, the first steps whose activations fit it keep their graphs
   from the forward pass and are not recomputed: short chains pay no recomputation. Recomputation replays the
   same DDPM noise z_i (passed in explicitly), so it is exact.
2. Compiles the network with torch.compile once per shape and grad mode, reused across calls (default on CUDA
   only: inductor's CPU gradients of the UNet were measured 18-20% off float64). Compile time is reported apart.
3. Runs the network in bf16 on CUDA (a bf16 copy of the weights: activations halve, autocast saves only 12%),
   while the trigger, the chain states, the scales and the loss stay fp32.
4. On CUDA, captures CUDA graphs by hand (static input buffers, copy_ then replay) for the no-grad network call
   and for one whole recomputed step with its vector-Jacobian product: at batch 40 the UNet is launch-bound.
   torch.compile's mode='reduce-overhead' is not used: its graphs overwrite outputs on the chain x = f(f(x)).
5. Uses the fused kernels ``ddpm_update`` and ``shift_loss`` (pdfast.kernels, Triton on CUDA, their torch
   references on CPU) for the update and the loss.

The caller's network is never modified: the engine works on a frozen copy (eval, requires_grad off, cast to the
engine dtype) taken at construction; build a new engine after changing the weights.
"""
from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from typing import Sequence

import torch

from ..errors import PdfastError
from ..model import DiffusionModel
from . import memory
from .base import register, shift_loss_torch

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "bf16-autocast": "bf16-autocast", "autocast": "bf16-autocast"}
# Column order of the per-step coefficient rows used inside CUDA graphs (one copy_ per step fills them all).
_ROW = ("c1", "c2", "sigma", "sqrt_abar", "sqrt_one_minus_abar", "a0", "at", "lam", "w")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _first_line(err: Exception) -> str:
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"


class EpsNetwork(torch.nn.Module):
    """eps_theta(x, t) with fp32 in and out, whatever precision the wrapped network runs in.

    mode "float32": as is; "bfloat16": the network's weights are bf16 and x is cast to bf16; "bf16-autocast":
    fp32 weights under torch.autocast(bf16). ``net`` is a diffusers UNet2DModel or any callable net(x, t) -> eps.
    """

    def __init__(self, net, mode: str):
        super().__init__()
        self.net = net
        self.mode = mode
        self.is_unet = isinstance(net, torch.nn.Module) and hasattr(net, "config") and hasattr(net, "save_pretrained")

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.mode == "bf16-autocast":
            # cache_enabled=False: the weight-cast cache must not outlive a CUDA graph capture
            with torch.autocast(x.device.type, dtype=torch.bfloat16, cache_enabled=False):
                out = self._call(x, t)
        elif self.mode == "bfloat16":
            out = self._call(x.to(torch.bfloat16), t)
        else:
            out = self._call(x, t)
        return out.float()

    def _call(self, x, t):
        if self.is_unet:
            return self.net(x, t, return_dict=False)[0]
        out = self.net(x, t)
        return out.sample if hasattr(out, "sample") else out


def frozen_copy(net, mode: str):
    """A copy of the network in eval mode with requires_grad off, bf16 weights for mode "bfloat16".

    Non-module callables cannot be copied or cast: they are used as they are (bf16 through autocast).
    """
    if not isinstance(net, torch.nn.Module):
        return net, ("bf16-autocast" if mode == "bfloat16" else mode)
    net = copy.deepcopy(net).eval().requires_grad_(False)
    if mode == "bfloat16":
        # diffusers logs a warning on ModelMixin.to(bf16) about fp32-only modules; UNet2DModel has none
        log = logging.getLogger("diffusers.models.modeling_utils")
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            net = net.to(torch.bfloat16)
        finally:
            log.setLevel(level)
    return net, mode


def update_from_row(x: torch.Tensor, eps: torch.Tensor, row: torch.Tensor, z: torch.Tensor,
                    clip: bool, clip_range: float) -> torch.Tensor:
    """The DDPM step with its coefficients in a tensor row (layout ``_ROW``), so one CUDA graph serves every t.

    x_{t-1} = c1 (x_t - c2 eps) + sigma z, or with clip_sample the x0 form
    x0 = clamp((x_t - sqrt(1-abar_t) eps)/sqrt(abar_t)), x_{t-1} = a0 x0 + at x_t + sigma z  (pdfast.schedule.step).
    """
    if clip:
        x0 = ((x - row[4] * eps) / row[3]).clamp(-clip_range, clip_range)
        mean = row[5] * x0 + row[6] * x
    else:
        mean = row[0] * (x - row[1] * eps)
    return mean + row[2] * z


class _GraphedForward:
    """One no-grad network call captured in a CUDA graph: copy x and t into static buffers, replay, clone eps.

    With capture=False the same buffers are used and the call runs eagerly: the path tests run on CPU.
    """

    def __init__(self, fn, x: torch.Tensor, t: torch.Tensor, capture: bool = True, warmup: int = 3):
        self.fn = fn
        self.x, self.t = x.detach().clone(), t.detach().clone()
        self.graph = None
        if not capture:
            return
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(warmup):  # compiles, autotunes and allocates workspaces before capture
                fn(self.x, self.t)
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.out = fn(self.x, self.t)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.x.copy_(x)
        self.t.copy_(t)
        if self.graph is None:
            with torch.no_grad():
                return self.fn(self.x, self.t)
        self.graph.replay()
        return self.out.clone()  # the static output is overwritten by the next replay


class _GraphedBackwardStep:
    """One recomputed chain step and its vector-Jacobian product, captured in a CUDA graph.

    Replays eps = eps_theta(x_i, t_i); x_{i+1} = update(x_i, eps); L_i = w || mean_b eps - lam delta || and
    returns (a_i, dL_i/d delta, L_i) with a_i = (d x_{i+1}/d x_i)^T a_{i+1} + dL_i/d x_i. The coefficients, lam
    and the loss weight w (1 in S, 0 outside) live in a static row, so one graph serves every timestep.
    """

    def __init__(self, fn, x: torch.Tensor, delta: torch.Tensor, norm: str, clip: bool, clip_range: float,
                 capture: bool = True, warmup: int = 3):
        self.fn, self.norm, self.clip, self.clip_range = fn, norm, clip, clip_range
        dev = x.device
        self.x, self.z, self.a = (torch.zeros_like(x) for _ in range(3))
        self.t = torch.zeros((), dtype=torch.long, device=dev)
        self.row = torch.zeros(len(_ROW), dtype=torch.float32, device=dev)
        self.row[0] = self.row[3] = 1.0  # c1 = sqrt_abar = 1: a finite warm-up step
        self.delta = torch.zeros_like(delta)
        self.graph = None
        if not capture:  # same buffers and body, run eagerly (tests on CPU)
            return
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(warmup):  # compiles the backward too (AOTAutograd compiles it at the first backward)
                self._body()
        torch.cuda.current_stream(dev).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._body()

    def _body(self):
        with torch.enable_grad():
            x = self.x.detach().requires_grad_(True)
            d = self.delta.detach().requires_grad_(True)
            eps = self.fn(x, self.t)
            x_next = update_from_row(x, eps, self.row, self.z, self.clip, self.clip_range)
            loss = self.row[8] * shift_loss_torch(eps, d, self.row[7], self.norm)
            gx, gd = torch.autograd.grad([x_next, loss], [x, d], [self.a, torch.ones_like(loss)])
        return gx, gd, loss.detach()

    def __call__(self, x, t, z, a, row, delta):
        self.x.copy_(x)
        self.t.copy_(t)
        self.row.copy_(row)
        self.delta.copy_(delta)
        if z is None:
            self.z.zero_()
        else:
            self.z.copy_(z)
        if a is None:
            self.a.zero_()
        else:
            self.a.copy_(a)
        if self.graph is None:
            return self._body()
        self.graph.replay()
        gx, gd, loss = self.out
        return gx.clone(), gd.clone(), loss.clone()


class _NoiseStream:
    """The per-step DDPM noise z_t of pdfast.sampling.sample, drawn from the same CPU generator in the same order.

    torch.randn of shape (k, *S) from a CPU generator equals k successive draws of shape S when S has a multiple
    of 16 elements (the vectorised normal fill works in blocks of 16; tested), so those draws come in chunks and go
    to the GPU in one pinned, non-blocking copy instead of one blocking copy per step.
    """

    def __init__(self, gen: torch.Generator, shape: tuple, n_draws: int, device: torch.device,
                 chunk: int | None = None):
        self.gen, self.shape, self.left, self.device = gen, tuple(shape), n_draws, device
        if chunk is None:
            chunk = 64 if device.type == "cuda" else 1
        self.chunk = chunk if math.prod(self.shape) % 16 == 0 else 1
        self.buf: list[torch.Tensor] = []

    def next(self) -> torch.Tensor:
        if not self.buf:
            k = min(self.chunk, self.left)
            if k <= 1:
                self.left -= 1
                return torch.randn(self.shape, generator=self.gen).to(self.device)
            block = torch.randn((k, *self.shape), generator=self.gen)
            if self.device.type == "cuda":
                block = block.pin_memory()
            self.buf = list(block.to(self.device, non_blocking=True).unbind(0))
        self.left -= 1
        return self.buf.pop(0)


@register("fast")
class FastEngine:
    """Checkpointed, compiled, bf16, CUDA-graphed chain engine; same loss and gradient as ``reference``.

    dtype: "auto" (bf16 weights on CUDA, fp32 on CPU), "float32", "bfloat16", "bf16-autocast".
    compile: "auto" (on CUDA only), True/False, or a torch.compile backend name ("aot_eager" for tests).
    memory_budget: bytes for the stored chain states plus kept activations; None = on CUDA 80% of the free memory,
    on CPU half of the available RAM (short chains: no recomputation); 0 = recompute every step.
    cuda_graphs: "auto" (on CUDA), False, or "emulate" (the graphed code paths run eagerly on any device, without
    capture: how the tests check them on CPU). kernels: "auto"/True use pdfast.kernels (Triton on CUDA tensors, their
    torch references on CPU); False uses the pdfast.schedule and shift_loss_torch formulas.
    """

    name = "fast"

    def __init__(self, model: DiffusionModel, *, dtype="auto", compile="auto", memory_budget=None,
                 cuda_graphs="auto", kernels="auto"):
        self.model = model
        on_cuda = model.device.type == "cuda"
        if dtype == "auto":
            dtype = "bfloat16" if on_cuda else "float32"
        if str(dtype) not in DTYPES and dtype not in (torch.float32, torch.bfloat16):
            raise PdfastError(f"unknown engine dtype '{dtype}'; use auto, float32, bfloat16 or bf16-autocast")
        mode = {torch.float32: "float32", torch.bfloat16: "bfloat16"}.get(dtype) or DTYPES[str(dtype)]
        net, self.mode = frozen_copy(model.net, mode)
        self.net = EpsNetwork(net, self.mode)
        self.compile_backend = None
        if compile == "auto":
            compile = on_cuda
        if compile:
            self.compile_backend = compile if isinstance(compile, str) else "inductor"
        self.memory_budget = memory_budget
        if cuda_graphs == "auto":
            cuda_graphs = on_cuda
        self.cuda_graphs = "emulate" if cuda_graphs == "emulate" else bool(cuda_graphs)
        self.use_kernels = kernels in ("auto", True)
        coef = model.schedule.step_coefficients()  # float64, per t
        self._coef = {k: v.tolist() for k, v in coef.items()}
        self._rows64 = torch.stack([coef[k] for k in _ROW[:7]], dim=1)  # (T, 7)
        self._compiled = None  # torch.compile(self.net), made at the first call
        self._compiled_keys: set = set()
        self.compile_seconds = 0.0
        self._graphs_fwd: dict = {}
        self._graphs_bwd: dict = {}
        self._act_bytes: dict = {}
        self._last: dict = {}

    # ---------------------------------------------------------------- the network
    def _eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps_theta(x, t) in fp32: the compiled network (compiled once per shape and grad mode) or the eager one."""
        if self.compile_backend is None:
            return self.net(x, t)
        key = (tuple(x.shape), x.dtype, torch.is_grad_enabled(), x.device)
        if key in self._compiled_keys:
            return self._compiled(x, t)
        start = time.perf_counter()
        try:
            if self._compiled is None:
                self._compiled = torch.compile(self.net, backend=self.compile_backend, dynamic=False)
            out = self._compiled(x, t)
            if out.requires_grad:  # AOTAutograd compiles the backward at its first use: do it now, timed here
                torch.autograd.grad(out, x, torch.zeros_like(out), retain_graph=True)
            _sync(x.device)
        except Exception as err:  # no compiler, no triton, an unsupported op: run eagerly
            warnings.warn(f"torch.compile failed ({_first_line(err)}); running the network eagerly")
            self.compile_backend, self._compiled = None, None
            return self.net(x, t)
        self.compile_seconds += time.perf_counter() - start
        self._compiled_keys.add(key)
        return out

    def _graphs_on(self, x: torch.Tensor) -> bool:
        return self.cuda_graphs == "emulate" or (self.cuda_graphs and x.is_cuda)

    def _eps_nograd(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """A no-grad network call, replayed from a CUDA graph where one is captured for this shape."""
        if self._graphs_on(x):
            key = (tuple(x.shape), x.device)
            if key not in self._graphs_fwd:
                capture = self.cuda_graphs != "emulate"
                self._graphs_fwd[key] = self._capture(lambda: _GraphedForward(self._eps, x, t, capture),
                                                      lambda g: g(x, t), lambda: self._eps(x, t), "forward")
            graph = self._graphs_fwd[key]
            if graph is not None:
                return graph(x, t)
        return self._eps(x, t)

    def _capture(self, build, run_graph, run_eager, what: str):
        """Capture a graph and check one replay against the eager result; None (eager fallback) on failure."""
        try:
            graph = build()
            got, want = run_graph(graph), run_eager()
            got, want = (got,) if torch.is_tensor(got) else got, (want,) if torch.is_tensor(want) else want
            for g, w in zip(got, want):
                err = float((g.float() - w.float()).norm() / w.float().norm().clamp_min(1e-12))
                if not err < 1e-2:
                    raise RuntimeError(f"replay differs from eager by {err:.2e} (relative)")
            return graph
        except Exception as err:
            warnings.warn(f"CUDA graph capture of the {what} step failed ({_first_line(err)}); running it without graphs")
            return None

    # ---------------------------------------------------------------- step and loss
    def _update(self, x: torch.Tensor, eps: torch.Tensor, t: int, z: torch.Tensor | None) -> torch.Tensor:
        """x_{t-1} = c1 (x_t - c2 eps) + sigma_t z: the fused kernel, or pdfast.schedule.step (always with clip_sample)."""
        schedule = self.model.schedule
        if self.use_kernels and not schedule.clip_sample:
            from pdfast.kernels import ddpm_update

            c = self._coef
            return ddpm_update(x, eps, c["c1"][t], c["c2"][t], c["sigma"][t], noise=z if t > 0 else None)
        return schedule.step(x, eps, t, z)

    def _loss_term(self, eps: torch.Tensor, delta: torch.Tensor, lam: float, norm: str) -> torch.Tensor:
        """L_i = || mean_b eps - lam delta || (mean over elements; l1 or squared l2), PureDiffusion eq. 16-17."""
        if self.use_kernels:
            from pdfast.kernels import shift_loss

            return shift_loss(eps, delta, lam, norm)
        return shift_loss_torch(eps, delta, lam, norm)

    def _step_with_grad(self, i, x_state, t_dev, t, z, delta, lam, in_loss: bool, last: int, norm: str):
        """Step i with autograd: (x_i leaf, x_{i+1} or None at the last step, L_i or None outside the loss steps)."""
        with torch.enable_grad():
            x = x_state.detach().requires_grad_(True)
            eps = self._eps(x, t_dev)
            x_next = self._update(x, eps, t, z) if i < last else None
            loss = self._loss_term(eps, delta, lam, norm) if in_loss else None
        return x, x_next, loss

    # ---------------------------------------------------------------- memory plan
    def activation_bytes(self, x: torch.Tensor, t: torch.Tensor) -> int:
        """Bytes one network call keeps for backward at this shape (saved-tensor count of one eager call, cached)."""
        key = (tuple(x.shape), x.device)
        if key not in self._act_bytes:
            probe = x.detach().requires_grad_(True)
            self._act_bytes[key] = memory.saved_tensor_bytes(self.net, probe, t, exclude=[self.net])
        return self._act_bytes[key]

    def _budget_bytes(self, device: torch.device) -> float:
        if self.memory_budget is not None:
            return float(self.memory_budget)
        if device.type == "cuda":
            return 0.8 * memory.cuda_free_bytes(device)
        avail = memory.host_available_bytes()
        # on CPU: half of the available RAM, so a K = 1000 chain recomputes instead of running out of memory
        return 0.5 * avail if avail else math.inf

    def plan(self, n_calls: int, x: torch.Tensor, t: torch.Tensor) -> int:
        """How many leading steps keep their activations: as many as fit the budget after the n_calls states."""
        budget = self._budget_bytes(x.device)
        if budget == math.inf:
            return n_calls
        act = max(self.activation_bytes(x, t), 1)
        spare = budget - n_calls * x.numel() * 4
        return int(max(0, min(n_calls, spare // act)))

    # ---------------------------------------------------------------- one iteration
    def loss_and_grad(self, delta: torch.Tensor, noise: torch.Tensor, zs: Sequence[torch.Tensor | None],
                      timesteps: Sequence[int], lambdas: Sequence[float], loss_steps: Sequence[int],
                      norm: str) -> tuple[float, torch.Tensor]:
        """Loss L = (1/|S|) sum_{i in S} || mean_b eps_theta(x_i, t_i) - lambda_i delta || and dL/d delta.

        Same semantics as the reference engine; see the module docstring for the checkpointed backward pass.
        """
        if norm not in ("l1", "l2"):
            raise PdfastError(f"unknown norm '{norm}'; use l1 or l2")
        wanted = set(int(i) for i in loss_steps)
        last = max(wanted)
        n_calls = last + 1
        device = noise.device
        shape = noise.shape[1:]
        d = delta.detach().to(device, torch.float32).reshape(1, *shape).clone().requires_grad_(True)
        t_dev = torch.as_tensor(list(timesteps[:n_calls]), dtype=torch.long, device=device)

        def z_at(i):
            z = zs[i] if i < len(zs) else None
            return None if z is None else z.to(device, torch.float32, non_blocking=True)

        x0 = (noise.to(torch.float32) + d.detach())
        n_keep = self.plan(n_calls, x0, t_dev[0])
        states: list[torch.Tensor | None] = [x0]
        kept: dict[int, tuple] = {}
        memory.hold([x0])

        # forward: the first n_keep steps keep their graphs, the others store only the next state
        for i in range(n_calls):
            t = int(timesteps[i])
            if i < n_keep:  # kept: no recomputation in the backward pass
                kept[i] = self._step_with_grad(i, states[i], t_dev[i], t, z_at(i), d, float(lambdas[i]),
                                               i in wanted, last, norm)
                x_next = kept[i][1]
            elif i < last:
                with torch.no_grad():
                    x_next = self._update(states[i], self._eps_nograd(states[i], t_dev[i]), t, z_at(i))
            else:
                break  # the last step only feeds the loss: its network call happens in the backward pass
            if i < last:
                states.append(x_next.detach())
                memory.hold(states[-1:])

        # backward: a = dLsum/dx_{i+1}, walked from the last step to the first (Lsum = |S| L)
        graphed = self._backward_graph(states[0], d, norm) if n_keep < n_calls else None
        rows = self._rows(timesteps, lambdas, wanted, n_calls, device) if graphed is not None else None
        a = None
        g_direct = torch.zeros_like(d)
        total = torch.zeros((), dtype=torch.float32, device=device)
        for i in range(last, -1, -1):
            t = int(timesteps[i])
            if i not in kept and graphed is not None:
                a, gd, loss_i = graphed(states[i], t_dev[i], z_at(i) if t > 0 else None, a, rows[i], d.detach())
                g_direct += gd
                total += loss_i
            else:
                x, x_next, loss_i = kept.pop(i) if i in kept else self._step_with_grad(
                    i, states[i], t_dev[i], t, z_at(i), d, float(lambdas[i]), i in wanted, last, norm)
                outs, grads = [], []
                if x_next is not None:
                    outs.append(x_next)
                    grads.append(a)
                if loss_i is not None:
                    outs.append(loss_i)
                    grads.append(torch.ones_like(loss_i))  # upstream 1 per term; 1/|S| is applied at the end
                    total += loss_i.detach()
                torch.autograd.backward(outs, grads, inputs=[x, d] if loss_i is not None else [x])
                a = x.grad
                del x, x_next, loss_i, outs, grads
            states[i] = None  # x_i is no longer needed: a_i now carries its gradient
        if d.grad is not None:
            g_direct += d.grad
        grad = (a.sum(0, keepdim=True) + g_direct) / len(wanted)
        self._last = {
            "kept_steps": n_keep, "recomputed_steps": n_calls - n_keep,
            # forward: n_keep calls with grad + (last - n_keep) without; backward: n_calls - n_keep recomputed
            "network_calls": n_calls if n_keep == n_calls else 2 * n_calls - 1 - n_keep,
            "graphed_backward": graphed is not None,
            "activation_bytes_per_step": self._act_bytes.get((tuple(x0.shape), device)),
            "state_bytes": x0.numel() * 4,
            "memory_budget_bytes": None if math.isinf(budget := self._budget_bytes(device)) else int(budget),
        }
        return float(total / len(wanted)), grad.reshape(delta.shape).to(delta.dtype)

    def _rows(self, timesteps, lambdas, wanted, n_calls, device) -> torch.Tensor:
        """Per-step coefficient rows (layout _ROW) for the graphed backward step, moved to the device at once."""
        ts = torch.as_tensor(list(timesteps[:n_calls]), dtype=torch.long)
        lam = torch.as_tensor([float(v) for v in lambdas[:n_calls]], dtype=torch.float64)
        w = torch.as_tensor([1.0 if i in wanted else 0.0 for i in range(n_calls)], dtype=torch.float64)
        rows = torch.cat([self._rows64[ts], lam[:, None], w[:, None]], dim=1)
        return rows.to(device, torch.float32)

    def _backward_graph(self, x: torch.Tensor, d: torch.Tensor, norm: str):
        """The captured backward step for this shape and norm (CUDA only), or None."""
        if not self._graphs_on(x):
            return None
        schedule = self.model.schedule
        key = (tuple(x.shape), x.device, norm)
        if key not in self._graphs_bwd:
            clip, rng = schedule.clip_sample, schedule.clip_sample_range
            t0 = torch.tensor(schedule.T - 1, device=x.device)
            row = self._rows([schedule.T - 1], [0.5], {0}, 1, x.device)[0]
            probe_a = torch.randn_like(x)
            probe_z = torch.randn_like(x)
            probe_d = torch.randn_like(d) * 0.1

            def eager():
                with torch.enable_grad():
                    xx = x.detach().requires_grad_(True)
                    dd = probe_d.detach().requires_grad_(True)
                    eps = self._eps(xx, t0)
                    x_next = update_from_row(xx, eps, row, probe_z, clip, rng)
                    loss = shift_loss_torch(eps, dd, row[7], norm)
                    return torch.autograd.grad([x_next, loss], [xx, dd], [probe_a, torch.ones_like(loss)])

            self._graphs_bwd[key] = self._capture(
                lambda: _GraphedBackwardStep(self._eps, x, d, norm, clip, rng, self.cuda_graphs != "emulate"),
                lambda g: g(x, t0, probe_z, probe_a, row, probe_d)[:2], eager, "backward")
        return self._graphs_bwd[key]

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, n: int, trigger: torch.Tensor | None = None, seed: int = 0, batch: int = 64,
               progress: bool = False, steps: int | None = None) -> torch.Tensor:
        """n images of the DDPM chain x_T = eps + trigger, x_{t-1} = c1 (x_t - c2 eps_theta) + sigma z; in [-1, 1].

        Same seeding as pdfast.sampling.sample (one CPU generator: the batch's noise, then z per step), so in fp32
        without compile the images match it; on CUDA with the compiled bf16 network, graphs and the fused update.
        """
        from tqdm.auto import tqdm

        device = self.model.device
        schedule = self.model.schedule
        shape = self.model.shape
        gen = torch.Generator(device="cpu").manual_seed(seed)
        ts = schedule.timesteps(steps) if steps else schedule.timesteps()
        t_dev = torch.as_tensor(ts, dtype=torch.long, device=device)
        out = []
        for start in range(0, n, batch):
            b = min(batch, n - start)
            x = torch.randn((b, *shape), generator=gen).to(device)
            if trigger is not None:
                x = x + trigger.to(device, x.dtype).reshape(1, *shape)
            noise = _NoiseStream(gen, (b, *shape), sum(1 for t in ts if t > 0), device)
            bar = tqdm(range(len(ts)), desc=f"sample {start + b}/{n}", disable=not progress, mininterval=1.0,
                       leave=False)
            for i in bar:
                t = ts[i]
                eps = self._eps_nograd(x, t_dev[i])
                z = noise.next() if t > 0 else None
                x = self._update(x, eps, t, z)
            out.append(x.clamp(-1, 1).cpu())
        return torch.cat(out)

    # ---------------------------------------------------------------- report
    def describe(self) -> dict:
        """The settings in effect and what the last loss_and_grad call did (for reports and the benchmarks)."""
        return {
            "engine": self.name,
            "device": str(self.model.device),
            "dtype": self.mode,
            "compiled": self.compile_backend is not None,
            "compile_backend": self.compile_backend,
            "compile_seconds": round(self.compile_seconds, 3),
            "cuda_graphs": self.cuda_graphs,
            "graphs_forward": sum(g is not None for g in self._graphs_fwd.values()),
            "graphs_backward": sum(g is not None for g in self._graphs_bwd.values()),
            "kernels": "pdfast.kernels" if self.use_kernels else "torch",
            "checkpointing": True,
            "memory_budget": self.memory_budget,
            **self._last,
        }
