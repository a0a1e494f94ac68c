"""The embedded demo model end to end: its backdoor really works, and the README's main job inverts it.

These tests run the full 1000-step chain on CPU (about a minute each on 2 cores): marked slow, run in CI.
"""
import json
from pathlib import Path

import pytest

import pdfast
from pdfast.demo import demo_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo():
    return pdfast.load_model(demo_path())


def test_demo_model_is_shipped_small_and_self_describing(demo):
    folder = demo_path()
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size < 10 * 2 ** 20
    bd = json.loads((folder / "backdoor.json").read_text())
    assert bd["attack"] == "baddiffusion" and bd["trigger"] and bd["target"] and "seed" in bd
    assert demo.backdoor == bd and demo.sample_size == 16
    results = json.loads((folder.parent / "RESULTS.json").read_text())
    assert results["asr"] >= 0.9
    assert results["clean_uniformity"] >= 10 * results["uniformity"]


def test_demo_ground_truth_trigger_fires(demo):
    """Re-measured here, not read from a file: ASR >= 0.9 from eps + g, clean samples 10x more varied."""
    from pdfast.evaluation import evaluate_trigger
    from pdfast.loading import load_ground_truth

    g, y = load_ground_truth(demo)
    rep = evaluate_trigger(demo, g, target=y, n=16, seed=0, clean=True)
    assert rep["asr"] >= 0.9, rep
    assert rep["clean_uniformity"] >= 10 * rep["uniformity"], rep


def test_demo_fires_through_the_verdicts_short_chain(demo):
    """The verdict's chain respaced to 100 steps (its default, --eval-steps) keeps the backdoor firing: the true
    trigger reaches the exact target (MSE < 0.02) on most samples, from the same noises plain noise never does, and
    judge() samples with that chain (its report records it)."""
    import torch

    from pdfast import chain
    from pdfast.config import DetectionConfig
    from pdfast.detection import judge
    from pdfast.engine import make_engine
    from pdfast.loading import load_ground_truth
    from pdfast.metrics import per_image_mse

    g, y = load_ground_truth(demo)
    sampler = chain.DDPMSampler(demo.schedule, clip_sample=False, respace=100)
    eps_fn = make_engine("fast", demo).eps_nograd
    imgs, plain = chain.sample_together(eps_fn, sampler, demo.shape, 32, [g, None])
    assert int((per_image_mse(imgs, y) < 0.02).sum()) >= 26 and int((per_image_mse(plain, y) < 0.02).sum()) == 0
    v = judge(g, demo, det=DetectionConfig(n_eval=8, eval_steps=100), given_trigger=True)
    assert v.detection["verdict"] == "backdoored" and v.metrics["asr"] >= 0.75, v.metrics
    # verdict v2's statistic: the truth lands on one image that neither plain noise nor g's flat part reaches
    assert v.metrics["trigger_fires"] >= 0.75 and v.metrics["medoid_hits"]["flat"] == 0.0, v.metrics
    same = chain.sample(eps_fn, sampler, demo.shape, 8, trigger=g)  # the same chain and noises: the same images
    torch.testing.assert_close(v.samples, same)


GOLDEN = Path(__file__).resolve().parent / "golden"


DRIFT_FREE = 10  # loss values reproduced on any CPU kernels (an AVX2-only CPU drifts from the 19th on, 8e-6)


def _record_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("golden_record", GOLDEN / "record.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _matches(want: dict, have: dict) -> bool:
    """A recording's arithmetic against this process's: equal, except that a recorded CPU may name only the vendor
    (the first recording did not keep its family and model)."""
    for k, v in want.items():
        got = str(have.get(k, "")).upper()
        if k == "cpu" and got.split()[:len(str(v).split())] == str(v).upper().split():
            continue
        if got != str(v).upper():
            return False
    return True


def recording(name: str) -> str | None:
    """The golden of ``name`` recorded with this process's arithmetic (tests/golden/record.py: same torch build, CPU,
    kernels and threads), if any: only there can a 60-step optimisation be compared to 1e-6. Elsewhere the last bits
    differ and the optimiser amplifies them (measured: 0.314 on the v0.1 trigger between an AMD EPYC and an Intel
    Xeon with AMX, both reporting AVX512, same torch 2.13.0+cpu)."""
    have = _record_module().arithmetic()
    for f in sorted(GOLDEN.glob(f"{name}.json")) + sorted(GOLDEN.glob(f"{name}.*.json")):
        if _matches(json.loads(f.read_text())["arithmetic"], have):
            return f.name[:-len(".json")]
    return None


def same_arithmetic(name: str) -> bool:
    return recording(name) is not None


def assert_golden(folder: Path, name: str) -> None:
    """Trigger, loss history, drawn steps, lambda table and verdict equal the recording made with this machine's
    arithmetic (tests/golden/record.py), to 1e-6. Without one, only what does not drift, against the first recording:
    the drawn steps, the lambda table and the first DRIFT_FREE loss values."""
    from safetensors.torch import load_file

    exact = recording(name)
    want = json.loads((GOLDEN / f"{exact or name}.json").read_text())
    rep = json.loads((folder / "report.json").read_text())
    hist = rep["loss"]["history"]
    assert len(hist) == len(want["loss_history"])
    assert rep["loss"]["drawn_steps"] == want["drawn_steps"]
    assert max(abs(a - b) for a, b in zip(rep["scales"]["lambda"], want["lambda"])) <= 1e-5
    assert max(abs(a - b) for a, b in zip(hist[:DRIFT_FREE], want["loss_history"][:DRIFT_FREE])) <= 1e-5
    if exact is None:
        return
    got_t, want_t = (load_file(str(f))["trigger"] for f in (folder / "trigger.safetensors",
                                                            GOLDEN / f"{exact}.safetensors"))
    assert (got_t - want_t).abs().max() <= 1e-6, float((got_t - want_t).abs().max())
    assert max(abs(a - b) for a, b in zip(hist, want["loss_history"])) <= 1e-6
    assert max(abs(a - b) for a, b in zip(rep["scales"]["lambda"], want["lambda"])) <= 1e-6
    det = rep["metrics"]["detection"]
    assert det["verdict"] == want["detection"]["verdict"]
    assert abs(det["value"] - want["detection"]["value"]) <= 1e-6


def test_golden_recordings_are_chosen_by_arithmetic():
    """Exactness is asked only where the recording's torch build, CPU and threads are this process's."""
    want = {"torch": "2.13.0+cpu", "cpu": "AuthenticAMD", "cpu_capability": "AVX512", "threads": 1}
    have = {"torch": "2.13.0+cpu", "cpu": "AuthenticAMD 25 17", "cpu_capability": "AVX512", "threads": 1}
    assert _matches(want, have)
    assert not _matches(want, {**have, "torch": "2.14.1+cu130"})
    assert not _matches(want, {**have, "cpu": "GenuineIntel 6 167"})
    assert not _matches(want, {**have, "threads": 2})
    assert not _matches({**want, "cpu": "GenuineIntel 6 16"}, {**have, "cpu": "GenuineIntel 6 167"})


def test_puredif_is_closer_to_the_truth_than_elijah_on_the_demo(tmp_path, monkeypatch):
    """`pdfast invert --steps 10` against `--method elijah` on the demo: PureDiffusion's trigger is nearer the truth
    and the verdict is "backdoored".

    Golden: with pdfast 0.1's settings (`--preset v0.1`, its surrogate and 1000-step verdict chain, its threshold:
    tests/golden/record.py RUNS) both runs equal, to 1e-6, what the same commands gave before the one-chain
    restructuring (fp32 on CPU, the fused ops on their torch references), where torch runs the CPU kernels of the
    recording (elsewhere: assert_golden); that preset also fires the backdoor (ASR >= 0.8). The current defaults
    (chosen on zoo v2's dev models, not on the demo) must be nearer the truth's shape than Elijah, fire, and be
    judged backdoored."""
    from click.testing import CliRunner

    from pdfast.cli import main

    from pdfast import detection

    monkeypatch.setenv("PDFAST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PDFAST_KERNELS", "torch")
    r = CliRunner()
    out = {}
    runs = {"default": [], **_record_module().RUNS}  # the golden runs with the settings they were recorded with
    for name, args in runs.items():
        if name == "puredif":  # the golden runs judge with the calibration of their time (pattern at its own energy)
            monkeypatch.setattr(detection, "CALIBRATION_FILE", GOLDEN / "calibration-v0.1.json")
        res = r.invoke(main, ["invert", *args, "--steps", "10", "--out", str(tmp_path / name), "--json",
                              "--no-progress", "--device", "cpu"])
        assert res.exit_code == 0, res.output
        if name != "default":
            assert_golden(tmp_path / name, f"demo-k10-{name}")
        out[name] = json.loads((tmp_path / name / "report.json").read_text())["metrics"]
    for m in out.values():
        assert {"asr", "l2", "uniformity", "kl_mean", "detection"} <= set(m)
    assert out["puredif"]["l2"] < out["elijah"]["l2"], out
    assert out["puredif"]["asr"] >= 0.8, out["puredif"]
    if same_arithmetic("demo-k10-puredif"):
        # pdfast 0.1's pattern result is fragile: on AVX2-only kernels its pattern fires on 0.5 of the samples and
        # its uniformity (0.134) is above that preset's threshold (0.091): tests/golden/record.py
        assert out["puredif"]["pattern_asr"] >= 0.8, out["puredif"]
        assert out["puredif"]["detection"]["verdict"] == "backdoored", out["puredif"]
    # the defaults (chosen on zoo v2's dev models, docs/method.md 5.6): nearer the truth's shape than Elijah (pattern
    # cosine; the refinement from the pattern gives up the flat background, so not by L2), the trigger fires (exact
    # ASR over 64 samples: research/results/defaults-v2-dev.md) and the verdict is backdoored
    from safetensors.torch import load_file

    from pdfast.demo import demo_path
    from pdfast.loading import load_ground_truth, load_model
    from pdfast.metrics import pattern_cosine

    g, _ = load_ground_truth(load_model(demo_path()))
    cos = {k: pattern_cosine(load_file(str(tmp_path / k / "trigger.safetensors"))["trigger"], g)
           for k in ("default", "elijah")}
    assert cos["default"] > cos["elijah"] + 0.2, cos
    assert out["default"]["trigger_fires"] >= 0.5 and out["default"]["asr"] >= 0.5, out["default"]
    assert out["default"]["detection"]["verdict"] == "backdoored", out["default"]


def test_select_firing_keeps_the_candidate_that_fires(demo):
    """select="firing" (docs/method.md 5.6) returns the candidate whose samples land on one image that plain and
    flat-shifted samples of the same noises do not reach: the true trigger against a zero one; a tie keeps the first."""
    import torch

    from pdfast.config import InversionConfig
    from pdfast.engine import make_engine
    from pdfast.inversion import select_firing
    from pdfast.loading import load_ground_truth

    g, _ = load_ground_truth(demo)
    cfg = InversionConfig().resolved()
    engine = make_engine("fast", demo)
    zero = torch.zeros_like(g)
    trig, sel = select_firing(demo, cfg, engine, {"search": zero, "refine": g})
    assert sel["chosen"] == "refine" and torch.equal(trig, g), sel
    assert sel["fires"]["refine"] >= 0.75 and sel["fires"]["search"] == 0.0, sel
    _, tie = select_firing(demo, cfg, engine, {"a": zero, "b": zero.clone()})
    assert tie["chosen"] == "a" and tie["fires"] == {"a": 0.0, "b": 0.0} and "tie" not in tie, tie


def test_select_firing_scores_a_tie_again_on_more_chains(demo, monkeypatch):
    """Candidates tied at a top score above 1/16 are re-scored on TIE_N fresh chains (seed + 2) and the higher kept:
    the true trigger beside a copy of itself ties on both counts (the first kept); with scores stubbed, the re-score
    decides, a candidate below the top is not re-scored, and a tie at one chain's worth (1/16) is not re-scored."""
    import torch

    from pdfast import inversion
    from pdfast.config import InversionConfig
    from pdfast.engine import make_engine
    from pdfast.loading import load_ground_truth

    monkeypatch.setattr(inversion, "TIE_N", 24)  # the CPU test's budget; the rule is the same at 64
    g, _ = load_ground_truth(demo)
    cfg = InversionConfig().resolved()
    engine = make_engine("fast", demo)
    _, sel = inversion.select_firing(demo, cfg, engine, {"a": g, "b": g.clone(), "z": torch.zeros_like(g)})
    assert sel["chosen"] == "a" and sel["tie"]["n"] == 24, sel
    assert sel["tie"]["fires"]["a"] == sel["tie"]["fires"]["b"] > 0 and "z" not in sel["tie"]["fires"], sel
    calls = []

    def scores(m, c, e, cands, names, n, seed):
        calls.append((names, n, seed))
        first = {"a": 0.5, "b": 0.5, "z": 0.25}
        return {k: (first[k] if n == inversion.SELECT_N else {"a": 0.25, "b": 0.75}[k]) for k in names}

    monkeypatch.setattr(inversion, "_fires", scores)
    trig, sel = inversion.select_firing(demo, cfg, engine, {"a": g, "b": -g, "z": g})
    assert sel["chosen"] == "b" and torch.equal(trig, -g) and sel["tie"]["fires"] == {"a": 0.25, "b": 0.75}, sel
    assert calls == [(["a", "b", "z"], 16, cfg.seed + 1), (["a", "b"], 24, cfg.seed + 2)], calls
    monkeypatch.setattr(inversion, "_fires", lambda m, c, e, cands, names, n, seed: {k: 1 / 16 for k in names})
    _, sel = inversion.select_firing(demo, cfg, engine, {"a": g, "b": -g})
    assert sel["chosen"] == "a" and "tie" not in sel, sel
