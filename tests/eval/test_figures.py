import torch

from ctxsae.eval.figures import activation_heatmap, token_label


def test_heatmap_writes_a_png(tmp_path):
    z = torch.zeros(12, 5)
    z[3, 1] = -1.0
    activation_heatmap(z, z.abs(), [1, 2], [f"t{i}\n" for i in range(12)], "title", marks=[3], path=tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000
    assert token_label("  a\nb") == "··a⏎b"
