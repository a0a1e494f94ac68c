"""Record a golden result from a `pdfast invert --out DIR` folder: the trigger, the loss history and the verdict.

    python tests/golden/record.py DIR tests/golden/NAME

The files in this folder were recorded with `pdfast invert --steps 10 [--method elijah] --device cpu` on the demo
model at commit 4a26fcf (before the one-chain restructuring), fp32 on CPU, kernels on their torch references, with
torch 2.13.0+cpu on a CPU where torch runs its AVX512 kernels, one intra-op thread (``arithmetic``: what the machines
that reproduced them to 1e-6 in every later session ran). The golden test (tests/test_demo.py) re-runs the same
commands and asserts the same numbers to 1e-6 only where all three are the same; elsewhere the arithmetic differs in
the last bits, which 60 optimiser steps amplify (an AVX2-only CPU reproduces the first 18 loss values, then drifts;
torch 2.14.1 moves the trigger by 0.314), and the test checks what does not drift. Record with OMP_NUM_THREADS=1.
"""
import json
import shutil
import sys
from pathlib import Path


def main(src: str, dst: str) -> None:
    src_p, dst_p = Path(src), Path(dst)
    import torch

    rep = json.loads((src_p / "report.json").read_text())
    arithmetic = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                  "threads": torch.get_num_threads()}
    keep = {"arithmetic": arithmetic, "config": rep["config"],
            "loss_history": rep["loss"]["history"], "drawn_steps": rep["loss"]["drawn_steps"],
            "lambda": rep["scales"]["lambda"], "detection": rep["metrics"]["detection"],
            "pattern_uniformity": rep["metrics"]["pattern_uniformity"], "uniformity": rep["metrics"]["uniformity"]}
    dst_p.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{dst}.json").write_text(json.dumps(keep, indent=1))
    shutil.copyfile(src_p / "trigger.safetensors", f"{dst}.safetensors")


if __name__ == "__main__":
    main(*sys.argv[1:3])
