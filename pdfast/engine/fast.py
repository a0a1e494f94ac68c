"""The fast chain engine: the reference engine's semantics at a fraction of its memory and time.

One inversion iteration runs the chain x_0 = noise + delta, x_{i+1} = step(x_i, eps_theta(x_i, t_i), z_i) and the
shift loss L = (1/|S|) sum_{i in S} || mean_b eps_theta(x_i, t_i) - lambda_i delta || (S = loss_steps), then
backpropagates to delta. The reference keeps the whole autograd graph: about 1.7 GiB per step at batch 40 on the
CIFAR-10 UNet (docs/method.md section 9). This engine instead:

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
5. Runs the chain and the loss through pdfast.chain and the objective's terms, whose fused ops (``ddpm_update``,
   ``shift_loss``) pick their backend per device in pdfast.kernels (native or Triton where built, torch otherwise).
   The graphed step takes its coefficients from a device row, so it runs their row forms (``ddpm_update_row``,
   ``shift_loss_row``: Triton kernels that read the row on the device, captured in the graph like the network).

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

from .. import chain
from ..chain import ReplayNoise
from .base import ChainSampling
from ..errors import PdfastError
from ..model import DiffusionModel
from ..objectives import chain_rule
from . import memory

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "bf16-autocast": "bf16-autocast", "autocast": "bf16-autocast"}


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


def step_vjp(fn, sampler, objective, x, delta, t, row, z, a):
    """One chain step from its row and its vector-Jacobian product: eps = fn(x_i, t_i),
    x_{i+1} = sampler.step_from_row(x_i, eps, coefficients, z_i), L_i = w term(eps, delta, params); returns
    (a_i, dL_i/d delta, L_i) with a_i = (d x_{i+1}/d x_i)^T a + dL_i/d x_i. ``row``: the sampler's
    ``row_width`` coefficients, then the objective's params, then the loss weight w."""
    n = sampler.row_width
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        d = delta.detach().requires_grad_(True)
        eps = fn(x, t)
        x_next = sampler.step_from_row(x, eps, row[:n], z)
        loss = row[-1] * objective.term(eps, d, row[n:-1])
        gx, gd = torch.autograd.grad([x_next, loss], [x, d], [a, torch.ones_like(loss)])
    return gx, gd, loss.detach()


class _GraphedBackwardStep:
    """One recomputed chain step and its vector-Jacobian product, captured in a CUDA graph.

    Replays eps = eps_theta(x_i, t_i); x_{i+1} = step(x_i, eps); L_i = w term(eps, delta, params_i) and returns
    (a_i, dL_i/d delta, L_i) with a_i = (d x_{i+1}/d x_i)^T a_{i+1} + dL_i/d x_i. The step coefficients, the
    objective's per-step params and the loss weight w (1 in S, 0 outside) live in one static row (sampler
    coefficients, then params, then w), so one graph serves every timestep.
    """

    def __init__(self, fn, objective, sampler, x: torch.Tensor, delta: torch.Tensor, row: torch.Tensor,
                 capture: bool = True, warmup: int = 3):
        self.fn, self.objective, self.sampler = fn, objective, sampler
        dev = x.device
        self.x, self.z, self.a = (torch.zeros_like(x) for _ in range(3))
        self.t = torch.zeros((), dtype=torch.long, device=dev)
        self.row = row.detach().to(dev, torch.float32).clone()  # a real step's row: a finite warm-up step
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
        return step_vjp(self.fn, self.sampler, self.objective, self.x, self.delta, self.t, self.row, self.z, self.a)

    def __call__(self, x, t, z, a, row, delta):
        self.x.copy_(x)
        self.t.copy_(t)
        self.row.copy_(row)
        self.delta.copy_(delta)
        for buf, val in ((self.z, z), (self.a, a)):
            if val is None:
                buf.zero_()
            else:
                buf.copy_(val)
        if self.graph is None:
            return self._body()
        self.graph.replay()
        gx, gd, loss = self.out
        return gx.clone(), gd.clone(), loss.clone()


class FastEngine(ChainSampling):
    """Checkpointed, compiled, bf16, CUDA-graphed chain engine; same loss and gradient as ``reference``.

    dtype: "auto" (bf16 weights on CUDA, fp32 on CPU), "float32", "bfloat16", "bf16-autocast".
    compile: "auto" (on CUDA only), True/False, or a torch.compile backend name ("aot_eager" for tests).
    memory_budget: bytes for the stored chain states plus kept activations; None = on CUDA 80% of the free memory,
    on CPU half of the available RAM (short chains: no recomputation); 0 = recompute every step.
    cuda_graphs: "auto" (on CUDA), False, or "emulate" (the graphed code paths run eagerly on any device, without
    capture: how the tests check them on CPU). The step and the loss terms run the fused ops of pdfast.kernels, whose
    backend (native, Triton or torch) is chosen per device there (PDFAST_KERNELS overrides it); the graphed step runs
    their row forms (Triton, or the torch formula).
    """

    name = "fast"

    def __init__(self, model: DiffusionModel, *, dtype="auto", compile="auto", memory_budget=None,
                 cuda_graphs="auto"):
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

    def eps_nograd(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """A no-grad network call, replayed from a CUDA graph where one is captured for this shape (sampling runs
        through this: ChainSampling)."""
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

    # ---------------------------------------------------------------- one step
    def _step_with_grad(self, i, x_state, t_dev, sampler, noise, d, objective, in_loss: bool, last: int):
        """Step i with autograd: (x_i leaf, x_{i+1} or None at the last step, L_i or None outside the loss steps)."""
        with torch.enable_grad():
            x = x_state.detach().requires_grad_(True)
            eps = self._eps(x, t_dev)
            x_next = sampler.step(i, x, eps, _z(sampler, noise, i, x)) if i < last else None
            loss = objective.term(eps, d, objective.params(i)) if in_loss else None
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
    def loss_and_grad(self, delta: torch.Tensor, noise: torch.Tensor, zs: Sequence[torch.Tensor | None], sampler,
                      objective, loss_steps: Sequence[int]) -> tuple[float, torch.Tensor]:
        """The objective's value and d/d delta, the chain run from x_0 = noise + delta (see the module docstring):
        the mean of the terms over the loss steps by the checkpointed adjoint, then ``objective.total`` by autograd.
        """
        wanted = set(int(i) for i in loss_steps)
        last, device = max(wanted), noise.device
        d = delta.detach().to(device, torch.float32).reshape(1, *noise.shape[1:]).clone().requires_grad_(True)
        t_dev = torch.as_tensor(list(sampler.timesteps[:last + 1]), dtype=torch.long, device=device)
        replay = ReplayNoise(noise, zs)
        x0 = noise.to(torch.float32) + d.detach()
        n_keep = self.plan(last + 1, x0, t_dev[0])
        kept: dict[int, tuple] = {}
        memory.hold([x0])

        def forward(i, x):  # the first n_keep steps keep their graphs, the others store only the next state
            if i < n_keep:
                kept[i] = self._step_with_grad(i, x, t_dev[i], sampler, replay, d, objective, i in wanted, last)
                x_next = kept[i][1].detach()
            else:
                with torch.no_grad():
                    x_next = sampler.step(i, x, self.eps_nograd(x, t_dev[i]), _z(sampler, replay, i, x))
            memory.hold([x_next])
            return x_next

        states = chain.unroll(forward, x0, last)
        if last < n_keep:  # the last step only feeds the loss
            kept[last] = self._step_with_grad(last, states[last], t_dev[last], sampler, replay, d, objective, True, last)
        backward = _Backward(self, states, kept, t_dev, sampler, replay, d, objective, wanted, last)
        a = chain.walk_back(backward.vjp, last)
        if d.grad is not None:
            backward.g_direct += d.grad
        grad = (a.sum(0, keepdim=True) + backward.g_direct) / len(wanted)
        self._last = self._plan_report(n_keep, last + 1, x0, backward.graphed is not None)
        value, grad = chain_rule(objective, float(backward.total / len(wanted)), grad, d.detach())
        return value, grad.reshape(delta.shape).to(delta.dtype)

    def _plan_report(self, n_keep: int, n_calls: int, x0: torch.Tensor, graphed: bool) -> dict:
        budget = self._budget_bytes(x0.device)
        return {
            "kept_steps": n_keep, "recomputed_steps": n_calls - n_keep,
            # forward: n_keep calls with grad + (last - n_keep) without; backward: n_calls - n_keep recomputed
            "network_calls": n_calls if n_keep == n_calls else 2 * n_calls - 1 - n_keep,
            "graphed_backward": graphed,
            "activation_bytes_per_step": self._act_bytes.get((tuple(x0.shape), x0.device)),
            "state_bytes": x0.numel() * 4,
            "memory_budget_bytes": None if math.isinf(budget) else int(budget),
        }

    def _rows(self, sampler, objective, wanted, n_calls, device) -> torch.Tensor:
        """Per-step rows (sampler coefficients, objective params, loss weight) for the graphed backward step."""
        params = torch.as_tensor([objective.params(i) for i in range(n_calls)], dtype=torch.float64)
        w = torch.as_tensor([[1.0 if i in wanted else 0.0] for i in range(n_calls)], dtype=torch.float64)
        return torch.cat([sampler.rows(n_calls), params, w], dim=1).to(device, torch.float32)

    def backward_graph(self, x: torch.Tensor, d: torch.Tensor, sampler, objective):
        """The captured backward step for this shape, sampler and objective (CUDA, or emulated), or None."""
        if not self._graphs_on(x):
            return None
        # the kernel backends too: a captured step keeps the kernels it was captured with (PDFAST_KERNELS may change)
        key = (tuple(x.shape), x.device, sampler.graph_key, type(objective).__name__, getattr(objective, "norm", None),
               _kernels_key(x.device))
        if key not in self._graphs_bwd:
            t0 = torch.tensor(sampler.timesteps[0], device=x.device)
            row = self._rows(sampler, objective, {0}, 1, x.device)[0]
            probe_a, probe_z, probe_d = torch.randn_like(x), torch.randn_like(x), torch.randn_like(d) * 0.1
            self._graphs_bwd[key] = self._capture(
                lambda: _GraphedBackwardStep(self._eps, objective, sampler, x, d, row, self.cuda_graphs != "emulate"),
                lambda g: g(x, t0, probe_z, probe_a, row, probe_d)[:2],
                lambda: step_vjp(self._eps, sampler, objective, x, probe_d, t0, row, probe_z, probe_a)[:2], "backward")
        return self._graphs_bwd[key]

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
            "kernels": _kernel_backends(self.model.device),
            "checkpointing": True,
            "memory_budget": self.memory_budget,
            **self._last,
        }


def _z(sampler, noise, i: int, x: torch.Tensor):
    """z_i for step i, or None where the sampler adds no noise."""
    return noise.z(i, x.shape) if sampler.needs_noise(i) else None


def _kernel_backends(device: torch.device) -> dict | str:
    """Which backend each fused op uses on this device (pdfast.kernels), for the report."""
    try:
        from pdfast.kernels import backends
    except ImportError:
        return "pdfast.kernels"
    return backends(device)


def _kernels_key(device: torch.device):
    backends = _kernel_backends(device)
    return tuple(sorted(backends.items())) if isinstance(backends, dict) else backends


class _Backward:
    """The adjoint walk of one iteration: vjp(i, a_{i+1}) -> a_i, accumulating the loss and dL/d delta directly.

    a_i = (d x_{i+1}/d x_i)^T a_{i+1} + sum of dL_i/d x_i; a step keeps its forward graph if the memory plan allowed,
    else it is recomputed from the stored state x_i (replaying the same z_i, so exactly), graphed on CUDA.
    """

    def __init__(self, engine, states, kept, t_dev, sampler, noise, d, objective, wanted, last):
        self.engine, self.states, self.kept, self.t_dev = engine, states, kept, t_dev
        self.sampler, self.noise, self.d, self.objective, self.wanted, self.last = (
            sampler, noise, d, objective, wanted, last)
        self.g_direct = torch.zeros_like(d)
        self.total = torch.zeros((), dtype=torch.float32, device=d.device)
        recompute = len(kept) < last + 1
        self.graphed = engine.backward_graph(states[0], d, sampler, objective) if recompute else None
        self.rows = (engine._rows(sampler, objective, wanted, last + 1, d.device) if self.graphed is not None
                     else None)

    def vjp(self, i: int, a):
        if i not in self.kept and self.graphed is not None:
            x = self.states[i]
            a, gd, loss_i = self.graphed(x, self.t_dev[i], _z(self.sampler, self.noise, i, x), a, self.rows[i],
                                         self.d.detach())
            self.g_direct += gd
            self.total += loss_i
        else:
            a = self._autograd_step(i, a)
        self.states[i] = None  # x_i is no longer needed: a_i now carries its gradient
        return a

    def _autograd_step(self, i: int, a):
        x, x_next, loss_i = self.kept.pop(i) if i in self.kept else self.engine._step_with_grad(
            i, self.states[i], self.t_dev[i], self.sampler, self.noise, self.d, self.objective, i in self.wanted,
            self.last)
        outs, grads = [], []
        if x_next is not None:
            outs.append(x_next)
            grads.append(a)
        if loss_i is not None:
            outs.append(loss_i)
            grads.append(torch.ones_like(loss_i))  # upstream 1 per term; 1/|S| is applied at the end
            self.total += loss_i.detach()
        torch.autograd.backward(outs, grads, inputs=[x, self.d] if loss_i is not None else [x])
        return x.grad
