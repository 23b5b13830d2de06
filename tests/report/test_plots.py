from ctxsae.report.plots import line_plot, pareto_front, pareto_plot


def test_pareto_front_keeps_only_undominated_points():
    xs, ys = [1, 2, 3, 4, 2], [0.5, 0.3, 0.4, 0.1, 0.6]
    assert pareto_front(xs, ys) == [0, 1, 3]
    assert pareto_front(xs, ys, maximize=True) == [0, 4]  # e.g. CE loss recovered: higher is better


def test_pareto_plot_writes_a_png(tmp_path):
    rows = [{"model": m, "l0": l0, "fvu": 1 / l0} for m in ("topk", "relu") for l0 in (4, 8, 16)]
    rows.append({"model": "topk", "l0": float("nan"), "fvu": 0.1})  # skipped, not drawn
    fig = pareto_plot(rows, path=tmp_path / "pareto.png")
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    assert len(fig.axes[0].collections) == 2  # one scatter per group


def test_line_plot_draws_each_line_in_ascending_x_and_the_reference(tmp_path):
    fig = line_plot({"a": [(2, 0.5), (1, 0.7)], "b": [(1, 0.9)]}, "tokens", "ratio", tmp_path / "lines.png", reference=1.0)
    a, b, reference = fig.axes[0].lines
    assert list(a.get_xdata()) == [1, 2] and list(a.get_ydata()) == [0.7, 0.5] and b.get_label() == "b"
    assert list(reference.get_ydata()) == [1.0, 1.0]
    assert (tmp_path / "lines.png").stat().st_size > 1000
