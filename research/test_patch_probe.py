"""research/patch_probe.py: the starts it names, and its usage line."""
import torch

import patch_probe as pp


class _Shape:
    channels, sample_size, shape = 3, 16, (3, 16, 16)


def test_starts():
    from pdfast.patterns import draw_trigger, patch_starts

    m = _Shape()
    assert torch.equal(pp.start_image("bg", m), torch.full((3, 16, 16), -1.0))
    assert torch.equal(pp.start_image("sq-br", m), patch_starts(3, 16)["br"])
    assert torch.equal(pp.start_image("HEART", m), draw_trigger("HEART", 16))


def test_usage(capsys):
    assert pp.main(["only-a-model"]) == 2 and "usage" in capsys.readouterr().err
