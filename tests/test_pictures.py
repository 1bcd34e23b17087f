"""Pictures a reader can use (issue 12, item 4), checked on the figures' own objects: axis limits set by
the runs that did not diverge, distinguishable overlapping lines, epoch 0 in view, integer epoch ticks,
plain log tick labels, races with distinct paths and the minima in the legend, schedule plots with a
readable title and named phase boundaries."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from descend import schedules as S  # noqa: E402
from descend.lab import data as D  # noqa: E402
from descend.lab import plots as P  # noqa: E402
from descend.lab import report as R  # noqa: E402
from descend.lab import train as T  # noqa: E402
from descend.lab.problems import problem  # noqa: E402
from descend.lab.trajectory import trajectory  # noqa: E402


def _comp(epochs: int = 20) -> T.Comparison:
    """gd and momentum with identical curves (they coincide), adam a little apart, and one 'lion' run
    that blows up to 1e11 at epoch 3 (diverged)."""
    rng = np.random.default_rng(0)
    data = D.prepare(rng.normal(size=(500, 3)), np.arange(500) % 2, name="toy")
    runs = []
    for name, shift in (("gd", 0.0), ("momentum", 0.0), ("adam", 0.01), ("lion", None)):
        for seed in range(2):
            run = T.Run(name, seed, {"lr": 0.1})
            for e in range(epochs + 1):
                if shift is None and e > 3:
                    break
                acc = 0.1 if e == 0 else 0.9 + 0.004 * e + (shift or 0) - 0.002 * seed
                loss = 2.0 / (1 + e) if shift is not None else 2.0 * 1e4 ** e
                run.rows.append(dict(optimizer=name, seed=seed, epoch=e, train_loss=loss, val_loss=loss,
                                     val_metric=acc if shift is not None else 0.3, lr=0.1, seconds=0.1 * e))
            if shift is None:
                run.diverged_epoch = 3
            runs.append(run)
    settings = dict(task="toy", kind="classification", metric="accuracy", optimizers=["gd", "momentum", "adam", "lion"],
                    seeds=[0, 1], epochs=epochs, batch_size=8, hidden=[4], schedule=None, divergence_factor=1e3,
                    train_rows=400, val_rows=100, n_features=3)
    return T.Comparison(data=data, runs=runs, settings=settings, goal=0.9)


@pytest.fixture(scope="module")
def figs():
    comp = _comp()
    return comp, R.metric_figure(comp), R.loss_figure(comp)


def _curve_lines(ax, names):
    return {ln.get_label(): ln for ln in ax.get_lines() if ln.get_label().split(" ")[0] in names}


def test_a_diverged_run_does_not_set_the_scale_and_is_marked(figs):
    _, _, loss = figs
    ax = loss.axes[0]
    lo, hi = ax.get_ylim()
    assert hi < 10, (lo, hi)  # the healthy losses go from 2 down to 0.1; lion's 1e11 does not stretch the axis
    crosses = [ln for ln in ax.get_lines() if ln.get_marker() == "x"]
    assert len(crosses) == 2  # one × per diverged run ...
    for ln in crosses:
        (x,), (y,) = ln.get_data()
        assert x == 3 and lo <= y <= hi and not ln.get_clip_on()  # ... at its epoch, on the edge, visible


def test_coinciding_lines_stay_distinguishable(figs):
    comp, metric, loss = figs
    for fig in (metric, loss):
        lines = _curve_lines(fig.axes[0], comp.optimizers)
        styles = {(ln.get_linestyle(), ln.get_marker()) for ln in lines.values()}
        assert len(styles) == len(comp.optimizers)
        gd, mom = lines["gd"], lines["momentum"]
        assert mom.get_zorder() > gd.get_zorder() and mom.get_linestyle() != "-"  # dashes over the solid line
        assert gd.get_markevery() != mom.get_markevery()  # markers on different epochs


def test_epoch_zero_is_in_view_and_epoch_ticks_are_integers_within_the_run(figs):
    comp, metric, loss = figs
    for fig in (metric, loss):
        ax = fig.axes[0]
        x0, x1 = ax.get_xlim()
        assert x0 < 0 <= 20 < x1
        shown = [t for t in ax.get_xticks() if x0 <= t <= x1]
        assert all(float(t).is_integer() and 0 <= t <= 20 for t in shown), shown
    lo, hi = metric.axes[0].get_ylim()
    assert lo < 0.1 < hi  # the untrained model's accuracy (epoch 0) is on the axis


def test_the_later_epochs_are_magnified(figs):
    _, metric, _ = figs
    insets = [a for a in metric.axes[0].child_axes]
    assert len(insets) == 1
    lo, hi = insets[0].get_ylim()
    assert hi - lo < 0.2 and lo > 0.8  # the curves' end, 0.9–0.99, readable


def test_log_axes_label_only_major_ticks_plainly(figs):
    _, _, loss = figs
    ax = loss.axes[0]
    assert isinstance(ax.yaxis.get_minor_formatter(), NullFormatter)
    loss.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert labels and all("times" not in s and "^" not in s for s in labels), labels


def test_the_legend_is_outside_the_axes(figs):
    _, metric, _ = figs
    assert metric.legends and metric.axes[0].get_legend() is None


# ------------------------------------------------------------------------------- races


@pytest.fixture(scope="module")
def race():
    prob = problem("himmelblau")
    runs = [trajectory(prob, n, 60, lr=lr) for n, lr in (("gd", 0.005), ("momentum", 0.005), ("adam", 0.1))]
    return prob, runs, P.race_figure(prob, runs)


def test_race_paths_are_distinct(race):
    prob, runs, fig = race
    left = fig.axes[0]
    paths = [ln for ln in left.get_lines() if ln.get_label() in {P._label(t) for t in runs}]
    assert len(paths) == 3
    assert len({(ln.get_linestyle(), ln.get_marker()) for ln in paths}) == 3
    widths = [ln.get_linewidth() for ln in paths]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]  # earlier paths show as a rim


def test_race_contour_lines_are_few_and_light(race):
    _, _, fig = race
    left = fig.axes[0]
    from matplotlib.contour import QuadContourSet

    lines = [c for c in left.collections if isinstance(c, QuadContourSet) and not c.filled]
    assert len(lines) == 1 and len(lines[0].levels) <= 15


def test_race_legend_names_the_minima_and_the_start(race):
    prob, runs, fig = race
    labels = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert "global minima" in labels and "start" in labels
    assert all(P._label(t) in labels for t in runs)


def test_race_gif_heads_differ_and_progress_is_reported(tmp_path):
    prob = problem("booth")
    runs = [trajectory(prob, n, 10, lr=0.05) for n in ("gd", "momentum")]
    seen = []
    P.race_gif(prob, runs, tmp_path / "r.gif", frames=4, fps=2, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] and [d for d, _ in seen] == sorted(d for d, _ in seen)


# ------------------------------------------------------------------------------- schedules


def test_schedule_plot_title_is_short_and_phases_are_named():
    sched = S.wsd(peak=1e-3, warmup_steps=100, stable_steps=600, decay_steps=300, decay="sqrt", end=1e-5)
    fig = S.plot(sched, 1001)
    ax = fig.axes[0]
    title = ax.get_title()
    assert title.startswith("wsd: peak=0.001, warmup_steps=100") and "start=0" not in title and "'" not in title
    assert len(title.splitlines()) <= 2
    vlines = [ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]
    assert sorted(ln.get_xdata()[0] for ln in vlines) == [100, 700, 1000]
    top = [a for a in ax.child_axes]
    fig.canvas.draw()
    names = [t.get_text() for a in top for t in a.get_xticklabels()]
    assert names == ["warm-up ends\nt=100", "decay starts\nt=700", "end\nt=1000"]


def test_the_figure_dimensions_stay_sane():
    comp = _comp(epochs=3)
    fig = R.figure(comp)
    w, h = fig.get_size_inches()
    assert 8 < w < 14 and 3 < h < 7 and not math.isnan(fig.axes[0].get_ylim()[0])


def test_a_metric_plot_is_cut_to_its_span_below_the_best_value():
    # an R² of −50 (epoch 0, a far-off seed) would flatten every other curve: R² shows at most 2
    # below its best, accuracy 1; other metrics (a user's own, of any scale) are not cut
    lo, hi = P.metric_limits([0.5, 0.45, -50.0, math.nan], "R²", pad=0.0)
    assert (lo, hi) == (0.5 - 2.0, 0.5)
    lo, hi = P.metric_limits([0.9, -3.0], "accuracy", pad=0.0)
    assert (lo, hi) == (pytest.approx(-0.1), 0.9)
    assert P.metric_limits([12.0, -40.0], "bleu", pad=0.0) == (-40.0, 12.0)
    lo, hi = P.metric_limits([0.2, 0.4], "R²", pad=0.1)
    assert (lo, hi) == (pytest.approx(0.18), pytest.approx(0.42))
    assert P.metric_limits([0.7], "accuracy", pad=0.5) == pytest.approx((0.2, 1.2))  # one value: a span of 1 to pad
    assert P.metric_limits([math.nan, math.inf], "R²") is None
