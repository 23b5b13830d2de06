import torch

from ctxsae.report.plots import activation_heatmap, pareto_front, pareto_plot, token_label


def test_pareto_front_keeps_only_undominated_points():
    xs, ys = [1, 2, 3, 4, 2], [0.5, 0.3, 0.4, 0.1, 0.6]
    assert pareto_front(xs, ys) == [0, 1, 3]
    assert pareto_front(xs, ys, maximize=True) == [0, 4]  # e.g. CE loss recovered: higher is better


def test_pareto_plot_and_heatmap_write_pngs(tmp_path):
    rows = [{"model": m, "l0": l0, "fvu": 1 / l0} for m in ("topk", "relu") for l0 in (4, 8, 16)]
    rows.append({"model": "topk", "l0": float("nan"), "fvu": 0.1})  # skipped, not drawn
    fig = pareto_plot(rows, path=tmp_path / "pareto.png")
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    assert len(fig.axes[0].collections) == 2  # one scatter per group
    z = torch.zeros(12, 5)
    z[3, 1] = -1.0
    activation_heatmap(z, z.abs(), [1, 2], [f"t{i}\n" for i in range(12)], "title", marks=[3], path=tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000
    assert token_label("  a\nb") == "··a⏎b"
