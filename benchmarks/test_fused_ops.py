"""benchmarks/fused_ops.py, the side-by-side harness: its shape option, its refusals, and one tiny run end to end
where the native library is built (it times nothing worth keeping here: one round of a few milliseconds)."""
import pytest
import torch

import fused_ops
import pdfast.kernels as K


def test_parse_shapes():
    assert fused_ops.parse_shapes("40x3x32x32,16x3x16x16") == fused_ops.SHAPES
    for bad in ("40x3x32", "0x3x8x8", "ax3x8x8"):
        with pytest.raises(ValueError):
            fused_ops.parse_shapes(bad)


def test_refuses_what_it_cannot_compare(tmp_path, capsys):
    with pytest.raises(SystemExit):
        fused_ops.main(["--dtype", "bfloat16", "--out", str(tmp_path / "x.md")])   # bf16 is CUDA-only
    if not torch.cuda.is_available():
        assert fused_ops.main(["--device", "cuda", "--out", str(tmp_path / "x.md")]) == 2
        assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "x.md").exists()


def test_cpu_run_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PDFAST_KERNELS", raising=False)
    out = tmp_path / "ops.md"
    rc = fused_ops.main(["--shapes", "2x3x4x4", "--rounds", "1", "--min-s", "0.001", "--no-pin-malloc",
                         "--out", str(out)])
    if not K.native.available():
        assert rc == 2 and "native library is not available" in capsys.readouterr().err
        return
    assert rc == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| 2x3x4x4 |")]
    assert [r.split(" | ")[1] for r in rows] == fused_ops.CASES
    assert "--shapes 2x3x4x4 --rounds 1 --min-s 0.001 --no-pin-malloc" in out.read_text()
