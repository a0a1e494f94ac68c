"""pytest-benchmark: the phases of the README's job (`pdfast invert --steps 50` on the embedded demo model) at reduced
size, each through the library call the job makes:

  surrogate calibration   pdfast.scales.resolve_scales(..., "surrogate") with a small SurrogateConfig, cache off
                          (the job: 128 DDIM-25 images, 150 fine-tune steps at batch 32, lambda over K = 50);
  inversion               pdfast.invert(..., evaluate=False) with analytic scales (calibration timed apart above),
                          K = 2, batch 8, 2 + 2 Adam steps (the job: K = 50, batch 40, 30 + 30 Adam steps), without
                          and with the patch grid (5 more searches of 2 steps and the firing selection);
  verdict's sampling      engine.sample_together(16, [trigger, pattern, None]) over the verdict's whole chain, the
                          DDPM chain respaced to 100 steps (what pdfast.detection.judge runs by default), and the
                          first 10 of the full 1000-step chain (the reference setting, --eval-steps 1000).

Small enough that CI runs each body once (--benchmark-disable) in about a second; `python benchmarks/regress.py` times them
against the committed baseline (benchmarks/README.md). The job's own wall time is in benchmarks/results/logs/invert50.log.
"""
import functools

import pytest
import torch

import pdfast
from pdfast import metrics
from pdfast.config import SurrogateConfig
from pdfast.engine.fast import FastEngine
from pdfast.scales import resolve_scales

K = 2
SURROGATE = SurrogateConfig(steps=4, batch=8, n_images=8, pool_steps=4, calib_batch=8)
# patch_starts="none": the search and refinement as timed since the baseline; the patch grid (pdfast 0.4's default,
# docs/method.md 5.9) is timed apart below, so the baseline's case keeps measuring the same work
INVERSION = dict(steps=K, epochs=2, refine_epochs=2, batch=8, scales="analytic", patch_starts="none")
SAMPLING = dict(n=16, steps=10)


@functools.lru_cache(maxsize=None)
def demo():
    return pdfast.load_model(pdfast.demo_path())


@pytest.mark.benchmark(group="job-phases")
def test_surrogate_calibration(benchmark):
    model = demo()
    # use_cache=False: every round calibrates (the cache would answer all rounds after the first)
    table = benchmark(lambda: resolve_scales(model, K, "surrogate", surrogate=SURROGATE, use_cache=False))
    lam = table.values
    assert table.source == "surrogate" and not table.cached
    assert lam.shape == (K,) and torch.isfinite(lam).all() and (lam > 0).all()


@pytest.mark.benchmark(group="job-phases")
def test_inversion(benchmark):
    model = demo()
    res = benchmark(lambda: pdfast.invert(model, evaluate=False, **INVERSION))
    assert tuple(res.trigger.shape) == tuple(model.shape) and torch.isfinite(res.trigger).all()
    assert len(res.losses) == INVERSION["epochs"] + INVERSION["refine_epochs"]


@pytest.mark.benchmark(group="job-phases")
def test_inversion_with_patch_grid(benchmark):
    """The same inversion with the default patch grid: five more searches and the firing selection over the seven
    triggers (16 chains of the 100-step verdict sampler each, with plain noise and their flat parts)."""
    from pdfast.patterns import PATCH_POSITIONS

    model = demo()
    res = benchmark(lambda: pdfast.invert(model, evaluate=False, **{**INVERSION, "patch_starts": "grid"}))
    assert len(res.losses) == (1 + len(PATCH_POSITIONS)) * INVERSION["epochs"] + INVERSION["refine_epochs"]
    assert res.inversion.selection["chosen"] in ("search", "refine", *(f"patch-{p}" for p in PATCH_POSITIONS))


@pytest.mark.benchmark(group="job-phases")
@pytest.mark.parametrize("chain", ["respaced-100", "full-first-10"])
def test_verdict_sampling(benchmark, chain):
    from pdfast.chain import DDPMSampler
    from pdfast.config import DetectionConfig

    model = demo()
    trigger = -torch.rand(model.shape, generator=torch.Generator().manual_seed(0))
    engine = FastEngine(model)
    pattern = metrics.trigger_pattern(trigger)
    if chain == "respaced-100":
        sampler = DDPMSampler(model.schedule, clip_sample=False, respace=DetectionConfig().eval_steps)
    else:
        sampler = DDPMSampler(model.schedule, SAMPLING["steps"], clip_sample=False)
    imgs = benchmark(lambda: engine.sample_together(SAMPLING["n"], [trigger, pattern, None], sampler=sampler))
    assert [tuple(i.shape) for i in imgs] == [(SAMPLING["n"], *model.shape)] * 3
    assert all(torch.isfinite(i).all() for i in imgs)
