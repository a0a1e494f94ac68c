"""The fast engine against the reference engine (the specification): same loss, same gradient, same samples.

CPU tests run fp32 without compile (inductor's CPU gradients of the UNet were measured 18-20% off float64, so
compiled gradients are never asserted on CPU). The CUDA-graph code paths run eagerly here (cuda_graphs="emulate");
the capture itself is checked by the gpu tests.
"""
import pytest
import torch
from _kernel_cases import assert_close, count_launches, row_launches

from pdfast.engine import make_engine
from pdfast.chain import DDPMSampler, GeneratorNoise
from pdfast.engine.fast import FastEngine
from pdfast.engine.memory import PeakMemory, saved_tensor_bytes
from pdfast.errors import PdfastError
from pdfast.model import DiffusionModel
from pdfast.objectives import ShiftObjective
from pdfast.schedule import Schedule


def chain_inputs(model, batch, k, seed=1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    shape = model.shape
    noise = torch.randn(batch, *shape, generator=g).to(device)
    zs = [torch.randn(batch, *shape, generator=g).to(device) for _ in range(k)]
    delta = (0.5 * torch.randn(*shape, generator=g)).to(device)
    return dict(delta=delta, noise=noise, zs=zs, sampler=DDPMSampler(model.schedule, k),
                lambdas=model.schedule.analytic_scales(k).tolist())


def with_objective(inp, norm, relative=False):
    """The engine's arguments: the chain inputs and eq. 17 (or its relative form) over their lambda table."""
    args = {k: v for k, v in inp.items() if k != "lambdas"}
    return dict(args, objective=ShiftObjective(inp["lambdas"], norm, relative))


def rel(a, b):
    return float((a - b).norm() / b.norm())


def cosine(a, b):
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def assert_matches(model, engine, k, loss_steps, norm, batch=3, tol=1e-5, device="cpu", relative=False):
    inp = with_objective(chain_inputs(model, batch, k, device=device), norm, relative)
    want_loss, want_grad = make_engine("reference", model).loss_and_grad(**inp, loss_steps=loss_steps)
    loss, grad = engine.loss_and_grad(**inp, loss_steps=loss_steps)
    assert grad.shape == inp["delta"].shape and grad.dtype == inp["delta"].dtype
    assert abs(loss - want_loss) <= tol * abs(want_loss)
    assert rel(grad, want_grad) <= tol
    return engine.describe()


def act_bytes(model, batch):
    engine = FastEngine(model, memory_budget=0)
    x = torch.zeros(batch, *model.shape)
    return engine.activation_bytes(x, torch.tensor(model.schedule.T - 1))


@pytest.mark.parametrize("k", [1, 3, 6])
@pytest.mark.parametrize("which", ["last", "all"])
@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_fp32_matches_reference_all_budgets(tiny_model, k, which, norm):
    loss_steps = [k - 1] if which == "last" else list(range(k))
    state = 3 * tiny_model.channels * tiny_model.sample_size ** 2 * 4
    partial = (k + 1) * state + 1.5 * act_bytes(tiny_model, 3)  # states + one step's activations: keeps 1 step
    for budget, kept in [(None, k), (0, 0), (partial, 1)]:
        info = assert_matches(tiny_model, FastEngine(tiny_model, memory_budget=budget), k, loss_steps, norm)
        assert (info["kept_steps"], info["recomputed_steps"]) == (kept, k - kept)


@pytest.mark.parametrize("clip", [False, True])
def test_graphed_paths_emulated_match_reference(tiny_unet, clip):
    model = DiffusionModel(tiny_unet, Schedule.from_config({"clip_sample": clip}), sample_size=8).frozen()
    for budget in (0, (5 + 1) * 3 * 3 * 64 * 4 + 2.5 * act_bytes(model, 3)):
        engine = FastEngine(model, memory_budget=budget, cuda_graphs="emulate")
        for norm, loss_steps in [("l1", [1, 4]), ("l2", [0, 1, 2, 3, 4])]:
            info = assert_matches(model, engine, 5, loss_steps, norm)
            assert info["graphed_backward"] and info["graphs_forward"] == 1


def test_clip_sample_schedule(tiny_unet):
    model = DiffusionModel(tiny_unet, Schedule.from_config({"clip_sample": True, "variance_type": "fixed_large"}),
                           sample_size=8).frozen()
    for budget in (None, 0):
        assert_matches(model, FastEngine(model, memory_budget=budget), 4, [1, 3], "l1")


def test_clip_sample_is_the_samplers(tiny_unet):
    """clip_sample belongs to the sampler: DDPMSampler(clip_sample=True) on a schedule whose config says off runs the
    clipped chain, exactly as the sampler of a schedule that says on; None keeps the config's."""
    off = Schedule.from_config({"clip_sample": False, "num_train_timesteps": 20})
    on = Schedule.from_config({"clip_sample": True, "num_train_timesteps": 20})
    x, eps, z = 3 * torch.randn(2, 3, 4, 4), 5 * torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for i in (0, 10, 19):
        assert torch.equal(DDPMSampler(off, clip_sample=True).step(i, x, eps, z), DDPMSampler(on).step(i, x, eps, z))
        assert torch.equal(DDPMSampler(on, clip_sample=False).step(i, x, eps, z), DDPMSampler(off).step(i, x, eps, z))
    assert not torch.equal(DDPMSampler(off).step(0, x, eps, z), DDPMSampler(on).step(0, x, eps, z))
    model = DiffusionModel(tiny_unet, off, sample_size=8).frozen()
    clipped = FastEngine(model).sample(2, seed=1, sampler=DDPMSampler(off, clip_sample=True))
    assert torch.equal(clipped, FastEngine(DiffusionModel(tiny_unet, on, sample_size=8).frozen()).sample(2, seed=1))


@pytest.mark.parametrize("sampler", ["ddpm", "ddpm-clip", "ddim"])
def test_every_sampler_steps_from_its_rows(sampler):
    """step_from_row on the sampler's own rows is its step (DDIM's last row makes x0 its output)."""
    from pdfast.chain import DDIMSampler

    sched = Schedule.from_config({"clip_sample": False, "num_train_timesteps": 20})
    s = DDIMSampler(sched, 5) if sampler == "ddim" else DDPMSampler(sched, 20, clip_sample=sampler == "ddpm-clip")
    rows = s.rows(len(s.timesteps))
    assert rows.shape == (len(s.timesteps), s.row_width) and rows.dtype == torch.float64
    g = torch.Generator().manual_seed(0)
    for i in range(len(s.timesteps)):
        x, eps, z = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(3))
        z = z if s.needs_noise(i) else None
        row = rows[i].to(torch.float32)
        want = s.step(i, x, eps, z)
        got = s.step_from_row(x, eps, row, z if z is not None else torch.zeros_like(x))
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("graphs", [False, "emulate"])
def test_ddim_chain_through_both_engines(tiny_model, graphs):
    """Nothing asks whether a sampler has rows: the DDIM chain is differentiated by the fast engine (its graphed,
    row-driven step included) as by the reference."""
    from pdfast.chain import DDIMSampler

    inp = chain_inputs(tiny_model, 3, 4)
    inp.update(sampler=DDIMSampler(tiny_model.schedule, 6), zs=[None] * 4)
    args = with_objective(inp, "l2")
    want_loss, want_grad = make_engine("reference", tiny_model).loss_and_grad(**args, loss_steps=[1, 3])
    for budget in (None, 0):
        engine = FastEngine(tiny_model, memory_budget=budget, cuda_graphs=graphs)
        loss, grad = engine.loss_and_grad(**args, loss_steps=[1, 3])
        assert abs(loss - want_loss) <= 1e-5 * abs(want_loss) and rel(grad, want_grad) <= 1e-5
        assert engine.describe()["graphed_backward"] == (graphs == "emulate" and budget == 0)


@pytest.mark.parametrize("norm", ["l1", "l2"])
@pytest.mark.parametrize("graphs", [False, "emulate"])
def test_relative_objective_through_the_checkpointed_chain(tiny_model, norm, graphs):
    """total(M, delta) = M / n(delta) is applied by autograd on top of the engine's adjoint: same as the reference's
    autograd through the whole graph, for every memory plan."""
    for budget in (None, 0):
        assert_matches(tiny_model, FastEngine(tiny_model, memory_budget=budget, cuda_graphs=graphs), 4, [1, 3], norm,
                       relative=True)


def _interpreting_or_skip():
    from pdfast.kernels._dispatch import interpreting

    if not interpreting():
        pytest.skip("TRITON_INTERPRET is off (a real-GPU run): CPU tensors cannot take the Triton path")


ROW_KERNELS = ("_ddpm_update_fwd_kernel", "_ddpm_update_bwd_kernel", "_batch_mean_fwd_kernel", "_shift_loss_bwd_kernel")


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("graphs", [False, "emulate"])
def test_triton_kernels_through_interpreter(tiny_model, monkeypatch, graphs):
    """The whole iteration with the Triton backend (interpreted on CPU) equals the reference engine and the same
    engine on the torch backend. With the graphed code paths (emulated: the CUDA-graph bodies run eagerly) every
    recomputed step runs the row kernels (coefficients read from the graph's static row), forward and backward;
    without them the eager steps run the float kernels and no row kernel."""
    _interpreting_or_skip()
    inp = with_objective(chain_inputs(tiny_model, 3, 3), "l1")
    want = make_engine("reference", tiny_model).loss_and_grad(**inp, loss_steps=[0, 2])
    engine = FastEngine(tiny_model, memory_budget=0, cuda_graphs=graphs)
    counts = count_launches(monkeypatch)
    monkeypatch.setenv("PDFAST_KERNELS", "torch")
    torch_loss, torch_grad = engine.loss_and_grad(**inp, loss_steps=[0, 2])
    assert not counts  # the torch backend launched nothing
    monkeypatch.delenv("PDFAST_KERNELS")
    monkeypatch.setenv("PDFAST_FORCE_TRITON", "1")  # TRITON_INTERPRET=1 is set by conftest
    loss, grad = engine.loss_and_grad(**inp, loss_steps=[0, 2])
    # the same engine: a graphed step per kernel backend (a captured graph keeps the kernels it was captured with)
    assert engine.describe()["graphs_backward"] == (2 if graphs else 0)
    assert abs(loss - want[0]) <= 1e-5 * want[0] and rel(grad, want[1]) <= 1e-5
    assert abs(loss - torch_loss) <= 1e-6 * torch_loss and rel(grad, torch_grad) <= 1e-6
    rows = row_launches(counts)
    if graphs:  # 3 recomputed steps, each its forward and backward kernels
        assert all(rows[k] >= 3 for k in ROW_KERNELS), counts
    else:
        assert not any(rows.values()) and counts["_ddpm_update_bwd_kernel", False] >= 2, counts


@pytest.mark.triton_interpreter
@pytest.mark.parametrize("norm", ["l1", "l2"])
@pytest.mark.parametrize("step", [0, 2], ids=["noisy", "last"])
def test_recomputed_step_runs_the_row_kernels(tiny_model, monkeypatch, norm, step):
    """One recomputed step and its VJP through the CUDA graph's code path (_GraphedBackwardStep with capture=False
    runs the captured body eagerly): with the Triton backend each fused op launches its row kernel once forward and
    once backward, and (a_i, dL_i/d delta, L_i) equal the torch backend's on the same inputs. The last step of the
    schedule (t = 0) adds no noise."""
    from pdfast.engine.fast import _GraphedBackwardStep

    _interpreting_or_skip()
    model = DiffusionModel(tiny_model.net, Schedule.from_config({"clip_sample": False, "num_train_timesteps": 3}),
                           sample_size=8).frozen()
    engine, sampler = FastEngine(model, memory_budget=0), DDPMSampler(model.schedule)
    objective = ShiftObjective(model.schedule.analytic_scales(3).tolist(), norm)
    g = torch.Generator().manual_seed(5)
    x, z, a = (torch.randn(3, *model.shape, generator=g) for _ in range(3))
    delta = 0.5 * torch.randn(1, *model.shape, generator=g)
    row = engine._rows(sampler, objective, {step}, 3, "cpu")[step]
    t, z = torch.tensor(sampler.timesteps[step]), z if sampler.needs_noise(step) else None
    out = {}
    counts = count_launches(monkeypatch)
    for setting in ("torch", "triton"):
        monkeypatch.setenv("PDFAST_KERNELS", setting)
        graphed = _GraphedBackwardStep(engine._eps, objective, sampler, x, delta, row, capture=False)
        out[setting] = graphed(x, t, z, a, row, delta)
        assert row_launches(counts) == dict.fromkeys(ROW_KERNELS, int(setting == "triton")), (setting, counts)
    for got, want in zip(out["triton"], out["torch"]):
        assert_close(got, want, 1e-6)


@pytest.mark.parametrize("dtype", ["bfloat16", "bf16-autocast"])
@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_bf16_close_to_fp32_reference(tiny_model, dtype, norm):
    # batch 8: at batch 3 a few elements of mean_b eps - lam delta sit near 0 and flip the L1 sign in bf16
    inp = chain_inputs(tiny_model, 8, 3)
    want_loss, want_grad = make_engine("reference", tiny_model).loss_and_grad(**with_objective(inp, norm), loss_steps=[2])
    engine = FastEngine(tiny_model, dtype=dtype, memory_budget=0)
    loss, grad = engine.loss_and_grad(**with_objective(inp, norm), loss_steps=[2])
    assert engine.describe()["dtype"] == dtype
    assert abs(loss - want_loss) <= 1e-2 * abs(want_loss)
    assert cosine(grad, want_grad) > 0.99
    assert grad.dtype == torch.float32


@pytest.mark.parametrize("graphs", [False, "emulate"])
def test_sampling_matches_reference_sampler(tiny_unet, graphs):
    from pdfast.sampling import sample

    model = DiffusionModel(tiny_unet, Schedule.from_config({"clip_sample": False, "num_train_timesteps": 20}),
                           sample_size=8).frozen()
    trigger = torch.rand(3, 8, 8) - 0.5
    want = sample(model, 5, trigger=trigger, seed=3, batch=2)
    got = FastEngine(model, cuda_graphs=graphs).sample(5, trigger=trigger, seed=3, batch=2)
    assert got.shape == want.shape and (got - want).abs().max() <= 1e-5
    assert torch.equal(FastEngine(model).sample(3, seed=4, steps=5), sample(model, 3, seed=4, steps=5))


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 3, 5, 5)])
def test_chunked_noise_equals_per_step_draws(shape):
    g = torch.Generator().manual_seed(0)
    want = [torch.randn(shape, generator=g) for _ in range(7)]
    stream = GeneratorNoise(torch.Generator().manual_seed(0), "cpu", chunk=3)
    stream.plan(7)
    got = [stream.z(i, shape) for i in range(7)]
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_callers_network_is_not_modified(tiny_unet):
    tiny_unet.train()  # a network that is neither frozen nor in eval mode
    model = DiffusionModel(tiny_unet, Schedule.from_config({"clip_sample": False}), sample_size=8)
    flags = {n: p.requires_grad for n, p in tiny_unet.named_parameters()}
    before = {n: p.detach().clone() for n, p in tiny_unet.named_parameters()}
    engine = FastEngine(model, dtype="bfloat16", memory_budget=0)
    engine.loss_and_grad(**with_objective(chain_inputs(model, 3, 2), "l1"), loss_steps=[1])
    engine.sample(1, steps=2)
    assert tiny_unet.training
    for n, p in tiny_unet.named_parameters():
        assert p.dtype == torch.float32 and p.requires_grad == flags[n] and p.grad is None
        assert torch.equal(p, before[n])


def test_memory_bounded_with_budget_zero_while_reference_grows(tiny_model):
    peaks = {}
    for k in (2, 8):
        inp = chain_inputs(tiny_model, 4, k)
        for name, engine in [("reference", make_engine("reference", tiny_model)),
                             ("fast", FastEngine(tiny_model, memory_budget=0))]:
            with PeakMemory("cpu", exclude=[tiny_model.net, getattr(engine, "net", None)]) as pm:
                engine.loss_and_grad(**with_objective(inp, "l1"), loss_steps=[k - 1])
            peaks[name, k] = pm.peak_bytes
    assert peaks["fast", 8] <= 1.5 * peaks["fast", 2]
    assert peaks["reference", 8] > 3 * peaks["reference", 2]
    assert peaks["fast", 8] < peaks["reference", 8]


def test_activation_estimate_counts_saved_tensors_not_weights(tiny_model):
    x = torch.randn(4, *tiny_model.shape, requires_grad=True)
    t = torch.tensor(999)
    n4 = saved_tensor_bytes(tiny_model.eps, x, t, exclude=[tiny_model.net])
    n8 = saved_tensor_bytes(tiny_model.eps, torch.randn(8, *tiny_model.shape, requires_grad=True), t,
                            exclude=[tiny_model.net])
    assert n4 > 0 and 1.8 < n8 / n4 < 2.2  # activations scale with the batch; the weights are left out


def test_bad_input_and_delta_shapes(tiny_model):
    inp = chain_inputs(tiny_model, 3, 2)
    engine = FastEngine(tiny_model)
    with pytest.raises(PdfastError, match="unknown norm"):
        engine.loss_and_grad(**with_objective(inp, "l3"), loss_steps=[1])
    with pytest.raises(PdfastError, match="no options"):
        make_engine("reference", tiny_model, dtype="bfloat16")
    with pytest.raises(PdfastError, match="dtype"):
        FastEngine(tiny_model, dtype="float16")
    inp["delta"] = inp["delta"][None]
    loss, grad = engine.loss_and_grad(**with_objective(inp, "l2"), loss_steps=[1])
    assert grad.shape == (1, *tiny_model.shape)
    assert make_engine("fast", tiny_model).name == "fast"


def test_compile_failure_falls_back_to_eager_with_a_warning(tiny_model):
    engine = FastEngine(tiny_model, compile="no_such_backend", memory_budget=0)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        assert_matches(tiny_model, engine, 2, [1], "l1")
    assert not engine.describe()["compiled"]


@pytest.mark.slow
def test_compile_plumbing_with_aot_eager(tiny_model):
    """torch.compile through AOTAutograd without inductor (inductor's CPU gradients are not asserted)."""
    engine = FastEngine(tiny_model, compile="aot_eager", memory_budget=0)
    info = assert_matches(tiny_model, engine, 3, [2], "l1", tol=1e-4)
    assert info["compiled"] and info["compile_seconds"] > 0
    seconds = info["compile_seconds"]
    assert_matches(tiny_model, engine, 3, [2], "l1", tol=1e-4)
    assert engine.describe()["compile_seconds"] == seconds  # compiled once, reused


# ------------------------------------------------------------------------------------------------ GPU
@pytest.fixture
def cuda_model(tiny_unet):
    return DiffusionModel(tiny_unet, Schedule.from_config({"clip_sample": False}), sample_size=8).frozen().to("cuda")


@pytest.fixture
def no_tf32():
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.gpu
def test_gpu_fp32_graphs_and_kernels_match_reference(cuda_model, no_tf32):
    engine = FastEngine(cuda_model, dtype="float32", compile=False, memory_budget=0)
    info = assert_matches(cuda_model, engine, 6, [2, 5], "l1", batch=8, tol=1e-4, device="cuda")
    assert info["graphs_forward"] == 1 and info["graphs_backward"] == 1 and info["graphed_backward"]


@pytest.mark.gpu
def test_gpu_default_engine_close_to_reference(cuda_model):
    engine = FastEngine(cuda_model)  # bf16, compiled, graphs, Triton kernels, budget from free memory
    inp = chain_inputs(cuda_model, 8, 4, device="cuda")
    want_loss, want_grad = make_engine("reference", cuda_model).loss_and_grad(**with_objective(inp, "l2"), loss_steps=[3])
    for budget in (None, 0):
        engine.memory_budget = budget
        loss, grad = engine.loss_and_grad(**with_objective(inp, "l2"), loss_steps=[3])
        assert abs(loss - want_loss) <= 2e-2 * abs(want_loss) and cosine(grad, want_grad) > 0.99
    info = engine.describe()
    assert info["dtype"] == "bfloat16" and info["compiled"], info


@pytest.mark.gpu
def test_gpu_sampling_matches_reference_sampler(tiny_unet, no_tf32):
    from pdfast.sampling import sample

    model = DiffusionModel(tiny_unet, Schedule.from_config({"clip_sample": False, "num_train_timesteps": 20}),
                           sample_size=8).frozen().to("cuda")
    want = sample(model, 5, seed=3, batch=4)
    got = FastEngine(model, dtype="float32", compile=False).sample(5, seed=3, batch=4)
    assert (got - want).abs().max() <= 1e-4



@pytest.mark.gpu
def test_gpu_captured_step_runs_the_row_kernels(cuda_model, no_tf32, monkeypatch):
    """On CUDA the captured backward step launches the Triton row kernels (counted when the graph is captured and
    when its replay is checked) and gives the loss and gradient of the same engine on the torch backend."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delenv("PDFAST_FORCE_TRITON", raising=False)
    inp = with_objective(chain_inputs(cuda_model, 8, 6, device="cuda"), "l2")
    monkeypatch.setenv("PDFAST_KERNELS", "torch")
    want = FastEngine(cuda_model, dtype="float32", compile=False, memory_budget=0).loss_and_grad(**inp,
                                                                                               loss_steps=[2, 5])
    monkeypatch.delenv("PDFAST_KERNELS")
    counts = count_launches(monkeypatch)
    engine = FastEngine(cuda_model, dtype="float32", compile=False, memory_budget=0)
    loss, grad = engine.loss_and_grad(**inp, loss_steps=[2, 5])
    assert engine.describe()["graphs_backward"] == 1
    assert all(row_launches(counts)[k] > 0 for k in ROW_KERNELS), counts
    assert abs(loss - want[0]) <= 1e-5 * abs(want[0]) and rel(grad, want[1]) <= 1e-5

class _Spread:
    """A new objective in a few lines, with no hand-written gradient: the batch spread of eps_theta at each loss
    step (a denoising-consistency-like term) plus eq. 17's shift term, scaled by (1 + mean delta^2)."""

    def __init__(self, lambdas):
        self.lambdas = lambdas

    def params(self, i):
        return (float(self.lambdas[i]),)

    def term(self, eps, delta, params):
        lam = params[0]
        r = eps.float().mean(0) - lam * delta.float().reshape(eps.shape[1:])
        return eps.float().var(0).mean() + r.abs().mean()

    def total(self, mean_term, delta):
        return mean_term * (1 + delta.float().pow(2).mean())


@pytest.mark.parametrize("graphs", [False, "emulate"])
def test_a_new_objective_is_differentiated_by_autograd_through_every_engine(tiny_model, graphs):
    inp = chain_inputs(tiny_model, 4, 4)
    args = {k: v for k, v in inp.items() if k != "lambdas"}
    objective = _Spread(inp["lambdas"])
    want_loss, want_grad = make_engine("reference", tiny_model).loss_and_grad(**args, objective=objective,
                                                                             loss_steps=[1, 3])
    for budget in (None, 0):
        engine = FastEngine(tiny_model, memory_budget=budget, cuda_graphs=graphs)
        loss, grad = engine.loss_and_grad(**args, objective=objective, loss_steps=[1, 3])
        assert abs(loss - want_loss) <= 1e-5 * abs(want_loss) and rel(grad, want_grad) <= 1e-5


@pytest.mark.parametrize("engine_name", ["reference", "fast"])
def test_sampling_several_triggers_together_equals_one_by_one(tiny_unet, engine_name):
    """The verdict samples eps + trigger and eps + pattern as one chain of twice the batch: the images of two
    separate chains with the same seed, up to the float rounding of a convolution over another batch size (none on
    the demo model at batch 16 vs 32; 5e-7 on this tiny UNet)."""
    model = DiffusionModel(tiny_unet, Schedule.from_config({"clip_sample": False, "num_train_timesteps": 20}),
                           sample_size=8).frozen()
    engine = make_engine(engine_name, model)
    g = torch.rand(3, 8, 8) - 0.5
    together = engine.sample_together(5, [g, None, -g], seed=7, batch=2)
    for got, trig in zip(together, [g, None, -g]):
        torch.testing.assert_close(got, engine.sample(5, trigger=trig, seed=7, batch=2), atol=1e-5, rtol=0)
