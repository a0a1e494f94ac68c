"""Issue 20/22 probe: on zoo v2 dev backdoors that pdfast's search from -U(0, 1) misses (trigger-only residual with
flat negatives), does the same search started from another image reach the true trigger? Starts: a library trigger
drawn on its -1 background (HEART, TREE: shapes other than the model's own), an all -1 frame ("bg"), or one of
pdfast.patterns.patch_starts ("sq-tl", "sq-tr", "sq-bl", "sq-br", "sq-c": a +1 square on a -1 frame).

Each start: pdfast.invert(model, start=..., epochs=30, refine_epochs=0, patch_starts="none") with every other option
at the pdfast preset (K = 10, surrogate scales), then the exact ASR of the result over 32 samples of the model's own
sampler (seed 0; pdfast.evaluation.evaluate_trigger), its pattern cosine to the true trigger, RMS and mean.

    OMP_NUM_THREADS=1 python research/patch_probe.py MODEL_DIR START [START ...]

Prints one JSON line per start (research/results/patch-probe.md keeps the runs and their commands).
"""
from __future__ import annotations

import json
import sys
import time


def start_image(name: str, model):
    """The start as an image in [-1, 1]: a library trigger, "bg" (all -1) or "sq-<position>" (patch_starts)."""
    import torch

    from pdfast.loading import load_pattern
    from pdfast.patterns import patch_starts

    if name == "bg":
        return torch.full(model.shape, -1.0)
    if name.startswith("sq-"):
        return patch_starts(model.channels, model.sample_size)[name[3:]]
    return load_pattern(name, model.sample_size, model.channels, kind="trigger")


def probe(folder: str, name: str) -> dict:
    """One start on one model: the search from it and what its trigger does."""
    import pdfast
    from pdfast import metrics
    from pdfast.evaluation import evaluate_trigger
    from pdfast.loading import load_ground_truth, load_model

    model = load_model(folder)
    g, y = load_ground_truth(model)
    t0 = time.time()
    res = pdfast.invert(model, start=start_image(name, model), evaluate=False, epochs=30, refine_epochs=0,
                        patch_starts="none", progress=False)
    tr = res.trigger.reshape(g.shape)
    ev = evaluate_trigger(model, tr, target=y, n=32, seed=0, clean=False)
    return {"model": folder.rstrip("/").split("/")[-1], "start": name, "asr": ev["asr"],
            "cos": metrics.pattern_cosine(tr, g), "rms": float(tr.pow(2).mean().sqrt()), "mean": float(tr.mean()),
            "s": round(time.time() - t0)}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2:
        print("usage: python research/patch_probe.py MODEL_DIR START [START ...]", file=sys.stderr)
        return 2
    for name in argv[1:]:
        print(json.dumps(probe(argv[0], name)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
