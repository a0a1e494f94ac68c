"""benchmarks/fused_engine.py, the engine with and without its fused ops: its options, its refusal without a GPU,
and one tiny CPU run end to end with the Triton kernels interpreted (it times nothing worth keeping here)."""
import importlib.util
import json
import os

import pytest
import torch

import fused_engine


def test_options():
    args = fused_engine.parse_args(["--ks", "10, 50,1000"])
    assert args.ks == [10, 50, 1000] and args.batch == 40 and args.arch == "cifar10"
    for bad in (["--ks", "10,x"], ["--ks", "0"], ["--repeats", "0"]):
        with pytest.raises(SystemExit):
            fused_engine.parse_args(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is there")
def test_refuses_cuda_without_a_gpu(tmp_path):
    with pytest.raises(SystemExit, match="no CUDA device"):
        fused_engine.main(["--device", "cuda", "--out-dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_cpu_run_end_to_end(tmp_path, monkeypatch):
    """Both sides through the graphed code path (emulated), the fused side on the interpreted Triton kernels: the
    same loss and gradient, and a table row per K and side."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("PDFAST_FORCE_TRITON", "1")
    monkeypatch.delenv("PDFAST_KERNELS", raising=False)
    result = fused_engine.main(["--device", "cpu", "--arch", "tiny", "--size", "8", "--ks", "2", "--batch", "2",
                                "--repeats", "1", "--graphs", "emulate", "--budget-gib", "0",
                                "--out-dir", str(tmp_path)])
    fused, plain = result["rows"]
    assert (fused["side"], plain["side"]) == ("fused", "torch")
    assert fused["backends"]["ddpm_update"] == "triton" and plain["backends"]["ddpm_update"] == "torch"
    assert fused["graphed_backward"] and fused["recomputed_steps"] == 2
    assert fused["loss_rel_diff"] < 1e-5 and fused["grad_rel_diff"] < 1e-5
    md = next(tmp_path.glob("fused-engine-*.md")).read_text()
    assert [line.split(" | ")[1] for line in md.splitlines() if line.startswith("| 2 |")] == ["fused", "torch"]
    assert json.loads(next(tmp_path.glob("fused-engine-*.json")).read_text())["complete"]
    assert "PDFAST_KERNELS" not in os.environ  # the script restored the setting
