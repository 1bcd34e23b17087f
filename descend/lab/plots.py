"""Pictures of optimizer races and of curves over steps (matplotlib, headless).

Every function builds on :class:`matplotlib.figure.Figure` directly, not on ``pyplot``: nothing
here touches matplotlib's global state or needs a display, and the figures work the same in a script,
a test, a CI job or a notebook (where a returned Figure is shown inline).

- :func:`contour_paths` — the contour lines of a 2-D problem (or the curve of a 1-D one) with the paths
  of several optimizers, their start, the known minima (★ global, ☆ local) and saddles (×);
- :func:`loss_curves` — lines over steps (or epochs): trajectories' f(θ_t) − f*, or any named series,
  optionally with a band (mean ± spread over seeds);
- :func:`race_figure` — both side by side, what ``descend race --out race.png`` writes;
- :func:`race_gif` — the race as an animated GIF (matplotlib's PillowWriter).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from descend.blocks import Auto
from descend.lab.problems import Problem, problem as get_problem
from descend.lab.trajectory import Trajectory

__all__ = ["contour_paths", "loss_curves", "race_figure", "race_gif", "metric_limits", "COLORS"]

#: Colours given to trajectories / series in order (matplotlib's tab10).
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf"]


#: per trajectory, in order, beside its colour: a line style and a marker (its path's samples, its end
#: point, its head in a GIF), so paths that run together stay apart
STYLES = [("-", "o"), ("--", "s"), ("-.", "^"), (":", "D"), ((0, (6, 2, 1, 2, 1, 2)), "v"), ((0, (9, 3)), "P"),
          ((0, (1, 1)), "X"), ((0, (4, 1, 4, 4)), "*")]


#: the widest y span a plot of a validation metric shows, down from its best value: an R² of −50 at
#: epoch 0 (or a seed far off) would otherwise flatten every other curve; other metrics are not capped
METRIC_SPAN = {"accuracy": 1.0, "R²": 2.0}


def metric_limits(values: Iterable[float], metric: str, pad: float = 0.06) -> tuple[float, float] | None:
    """y limits for a plot of ``metric``: the finite ``values``' range, cut to :data:`METRIC_SPAN`
    below the highest, padded by ``pad`` of the span on each side. None without a finite value."""
    vals = [float(v) for v in values if math.isfinite(v)]
    if not vals:
        return None
    hi = max(vals)
    lo = max(min(vals), hi - METRIC_SPAN.get(metric, math.inf))
    margin = pad * (hi - lo or 1.0)
    return lo - margin, hi + margin


def _style(i: int, n: int) -> dict[str, Any]:
    """Trajectory i of n: colour, dash, marker, and a width that shrinks with i, so where paths
    coincide the earlier ones show as a rim around the later ones drawn on top."""
    ls, marker = STYLES[i % len(STYLES)]
    return dict(color=COLORS[i % len(COLORS)], ls=ls, marker=marker, lw=1.3 + 0.8 * (n - 1 - i), zorder=3 + i / max(n, 1))


def _landmark_handles(prob: Problem, start: bool) -> list:
    """Legend entries for the start and the known points (global and local minima, saddles) that are drawn."""
    from matplotlib.lines import Line2D

    out = []
    if start:
        out.append(Line2D([], [], ls="", marker="o", color="k", ms=6, label="start"))
    out.append(Line2D([], [], ls="", marker="*", color="gold", mec="k", ms=13,
                      label="global minim" + ("a" if len(prob.minima) > 1 else "um")))
    if prob.local_minima:
        out.append(Line2D([], [], ls="", marker="*", color="white", mec="k", ms=12,
                          label="local minim" + ("a" if len(prob.local_minima) > 1 else "um")))
    if prob.saddles and prob.dim == 2:
        out.append(Line2D([], [], ls="", marker="x", color="k", ms=9, mew=2, label="saddle"))
    return out


def _axes(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _label(t: Trajectory) -> str:
    lr = t.hyperparameters.get("lr")
    text = (f"{t.label} (η=auto)" if lr == "auto" or isinstance(lr, Auto) else
            t.label if lr is None or callable(lr) else f"{t.label} (η={lr:g})")
    return text + (" — diverged" if t.diverged else "")


def _grid(prob: Problem, n: int):
    (x0, x1), (y0, y1) = prob.bounds
    xs, ys = np.linspace(x0, x1, n), np.linspace(y0, y1, n)
    X, Y = np.meshgrid(xs, ys)
    with torch.no_grad():
        Z = prob.f(torch.from_numpy(np.stack([X, Y]))).numpy()
    return X, Y, Z


def contour_paths(problem: str | Problem, trajectories: Sequence[Trajectory] = (), ax=None, *,
                  resolution: int = 200, title: str | None = None, legend: bool = True) -> Figure:
    """Contour lines of a 2-D problem with optimizers' paths (a 1-D problem: its curve and iterates).

    Levels are spaced logarithmically in f − f*, so the floor of a valley stays visible.

    Args:
        problem: a name or a :class:`~descend.lab.problems.Problem`.
        trajectories: :class:`~descend.lab.trajectory.Trajectory` objects on this problem.
        ax: draw into these axes (default: a new Figure).
        resolution: grid points per axis.
        title: default: the problem's name and formula.
        legend: draw the legend (the paths, the start, the minima and saddles) inside the axes.

    Returns:
        The Figure.
    """
    prob = get_problem(problem)
    fig, ax = _axes(ax, (6.0, 5.0))
    fmin = prob.min_value
    if prob.dim == 1:
        xs = np.linspace(*prob.bounds[0], resolution)
        with torch.no_grad():
            ys = prob.f(torch.from_numpy(xs[None])).numpy()
        ax.plot(xs, ys, color="0.3", lw=1.5, zorder=1)
        for i, t in enumerate(trajectories):
            ok = np.isfinite(t.points[:, 0]) & np.isfinite(t.losses)
            st = _style(i, len(trajectories))
            ax.plot(t.points[ok, 0], t.losses[ok], color=st["color"], ls=st["ls"], lw=0.9, marker=st["marker"], ms=4,
                    alpha=0.85, zorder=st["zorder"], label=_label(t))
        for m in prob.minima:
            ax.plot(m[0], float(prob(m)), "*", color="gold", mec="k", ms=13, zorder=8)
        for m in prob.local_minima:
            ax.plot(m[0], float(prob(m)), "*", color="white", mec="k", ms=12, zorder=8)
        ax.set_xlim(*prob.bounds[0])
        ax.set_xlabel("x")
        ax.set_ylabel("f(x)")
    elif prob.dim == 2:
        X, Y, Z = _grid(prob, resolution)
        gap = Z - fmin
        top = float(np.nanmax(gap))
        low = max(float(np.nanmin(gap[gap > 0])) if np.any(gap > 0) else top * 1e-6, top * 1e-6)
        # shading: a smooth image of log(f − f*) (no band seams); lines: a dozen, thin and light, so the
        # steep walls of a valley do not merge into grey
        from matplotlib.colors import LogNorm

        ax.imshow(np.clip(gap, low, top), extent=(X.min(), X.max(), Y.min(), Y.max()), origin="lower",
                  cmap="Blues_r", norm=LogNorm(low, top), alpha=0.6, aspect="auto", interpolation="bilinear",
                  zorder=0)
        ax.contour(X, Y, Z, levels=fmin + np.geomspace(low, top, 12), colors="0.3", linewidths=0.5, alpha=0.5)
        n = len(trajectories)
        for i, t in enumerate(trajectories):
            p = t.points[np.all(np.isfinite(t.points), axis=1)]
            st = _style(i, n)
            every = max(1, len(p) // 12)
            ax.plot(p[:, 0], p[:, 1], color=st["color"], ls=st["ls"], lw=st["lw"], alpha=0.95, label=_label(t),
                    zorder=st["zorder"], marker=st["marker"], ms=5, mec="white", mew=0.6,
                    markevery=(i * every // max(n, 1), every))
            # end points: earlier ones larger, so one that ends under another still shows its rim
            ax.plot(p[-1, 0], p[-1, 1], st["marker"], color=st["color"], mec="k", ms=8 + 2.5 * (n - 1 - i),
                    zorder=6 + i / max(n, 1))
        if trajectories:
            s = trajectories[0].points[0]
            ax.plot(s[0], s[1], "o", color="k", ms=6, zorder=4)
        for m in prob.minima:
            ax.plot(*m, "*", color="gold", mec="k", ms=13, zorder=8)
        for m in prob.local_minima:
            ax.plot(*m, "*", color="white", mec="k", ms=12, zorder=8)
        for m in prob.saddles:
            ax.plot(*m, "x", color="k", ms=9, mew=2, zorder=8)
        ax.set_xlim(*prob.bounds[0])
        ax.set_ylim(*prob.bounds[1])
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    else:
        raise ValueError(f"contour_paths: invalid problem {prob.name!r} of dimension {prob.dim}; expected 1 or 2")
    ax.set_title(title if title is not None else f"{prob.name}: {prob.formula}", fontsize=10)
    if legend:
        handles = ax.get_legend_handles_labels()[0] + _landmark_handles(prob, bool(trajectories) and prob.dim == 2)
        ax.legend(handles=handles, loc="best", fontsize=8, framealpha=0.85)
    return fig


def loss_curves(series: Sequence[Trajectory] | Mapping[str, Any], ax=None, *, log: bool = True,
                xlabel: str = "step", ylabel: str | None = None, title: str | None = None,
                legend: bool = True) -> Figure:
    """Lines over steps: trajectories' losses, or any named series (loss vs step, metric vs epoch, lr ...).

    Args:
        series: either a list of :class:`~descend.lab.trajectory.Trajectory` (plotted as the gap
            f(θ_t) − f* to the known minimum value, floored at 1e-16 for the log scale), or a mapping
            ``label → y``, ``label → (x, y)`` or ``label → (x, y, lo, hi)`` where ``lo``/``hi`` draw a
            shaded band (e.g. mean ± standard deviation over seeds). Non-finite values are skipped.
        ax: draw into these axes (default: a new Figure).
        log: logarithmic y axis.
        xlabel, ylabel, title: axis labels and title (ylabel default: "f(θ) − f*" for
            trajectories, "loss" otherwise).

    Returns:
        The Figure.
    """
    fig, ax = _axes(ax, (6.0, 4.0))
    items: list[tuple[str, np.ndarray, np.ndarray, Any]] = []
    if isinstance(series, Mapping):
        for name, v in series.items():
            if isinstance(v, tuple) and len(v) in (2, 4):
                x, y = np.asarray(v[0], float), np.asarray(v[1], float)
                band = (np.asarray(v[2], float), np.asarray(v[3], float)) if len(v) == 4 else None
            else:
                y = np.asarray(v, float)
                x, band = np.arange(len(y)), None
            items.append((str(name), x, y, band))
        default_ylabel = "loss"
    else:
        for t in series:
            y = np.maximum(t.losses - t.problem.min_value, 1e-16) if log else t.losses - t.problem.min_value
            items.append((_label(t), np.arange(len(t.losses)), y, None))
        default_ylabel = "f(θ) − f*"
    for i, (name, x, y, band) in enumerate(items):
        st = _style(i, len(items))
        c = st["color"]
        ok = np.isfinite(y)
        ax.plot(x[ok], y[ok], color=c, ls=st["ls"], lw=min(st["lw"], 3.0), marker=st["marker"], ms=5,
                markevery=(i * max(1, ok.sum() // 8) // max(len(items), 1), max(1, ok.sum() // 8)),
                zorder=st["zorder"], label=name)
        if band is not None:
            lo, hi = band
            okb = np.isfinite(lo) & np.isfinite(hi)
            ax.fill_between(x[okb], lo[okb], hi[okb], color=c, alpha=0.2, lw=0)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel if ylabel is not None else default_ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    if items and legend:
        ax.legend(loc="best", fontsize=8, framealpha=0.85)
    return fig


def race_figure(problem: str | Problem, trajectories: Sequence[Trajectory]) -> Figure:
    """The paths (left) and f(θ_t) − f* over steps (right) in one Figure: ``descend race``'s PNG."""
    prob = get_problem(problem)
    fig = Figure(figsize=(11.0, 5.0), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.15, 1.0])
    contour_paths(prob, trajectories, ax=left, legend=False)
    loss_curves(trajectories, ax=right, title="f(θ_t) − f*, the gap to the minimum value", legend=False)
    handles = left.get_legend_handles_labels()[0] + _landmark_handles(prob, bool(trajectories) and prob.dim == 2)
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False)
    return fig


def race_gif(problem: str | Problem, trajectories: Sequence[Trajectory], path: str | Path, *,
             frames: int = 60, fps: int = 12, dpi: int = 80,
             progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the race as an animated GIF: the paths grow step by step over the contour plot.

    Steps are sampled evenly onto at most ``frames`` frames, plus a pause on the last one; at the
    default size a GIF is a few hundred kB.

    Args:
        problem: a name or a Problem; trajectories: the runs; path: where to write the .gif.
        frames: the most frames; fps: frames per second; dpi: resolution.
        progress: called as ``progress(done, total)`` after each frame is drawn (rendering takes seconds).

    Returns:
        The path written.
    """
    from matplotlib.animation import FuncAnimation, PillowWriter

    prob = get_problem(problem)
    if frames < 1:
        raise ValueError(f"race_gif: invalid frames={frames!r}; expected an integer >= 1")
    fig = Figure(figsize=(5.6, 5.2), layout="constrained")
    ax = fig.add_subplot()
    contour_paths(prob, [], ax=ax, legend=False)
    lines, heads = [], []
    n = len(trajectories)
    for i, t in enumerate(trajectories):
        st = _style(i, n)
        style = dict(marker=st["marker"], ms=3, lw=0.8) if prob.dim == 1 else dict(lw=min(st["lw"], 3.0))
        (line,) = ax.plot([], [], color=st["color"], ls=st["ls"], label=_label(t), zorder=st["zorder"], **style)
        # heads: each its own shape, earlier ones larger; the minima's stars stay on top of them
        (head,) = ax.plot([], [], st["marker"], color=st["color"], mec="k", ms=8 + 2.5 * (n - 1 - i),
                          zorder=6 + i / max(n, 1))
        lines.append(line)
        heads.append(head)
    if trajectories and prob.dim == 2:
        s0 = trajectories[0].points[0]
        ax.plot(s0[0], s0[1], "o", color="k", ms=6, zorder=4)
    if trajectories:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=h.get_color(), ls=ln.get_linestyle(), marker=h.get_marker(), mec="k",
                          label=ln.get_label()) for ln, h in zip(lines, heads)]
        handles += _landmark_handles(prob, prob.dim == 2)
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 3), fontsize=8, frameon=False)
    longest = max((len(t.points) for t in trajectories), default=1)
    ticks = np.unique(np.linspace(0, longest - 1, frames).round().astype(int))
    ticks = np.concatenate([ticks, np.full(max(1, fps), ticks[-1])])  # hold the end a second
    base = ax.get_title()

    def xy(t: Trajectory, k: int):
        p = t.points[: k + 1]
        ok = np.all(np.isfinite(p), axis=1)
        if prob.dim == 1:
            return p[ok, 0], t.losses[: k + 1][ok]
        return p[ok, 0], p[ok, 1]

    def draw(k: int):
        for t, line, head in zip(trajectories, lines, heads):
            x, y = xy(t, k)
            line.set_data(x, y)
            head.set_data(x[-1:], y[-1:])
        ax.set_title(f"{base}   step {k}", fontsize=10)
        return lines + heads

    anim = FuncAnimation(fig, draw, frames=ticks, blit=False)
    path = Path(path)
    anim.save(str(path), writer=PillowWriter(fps=fps), dpi=dpi,
              progress_callback=(lambda i, total: progress(i + 1, total)) if progress is not None else None)
    return path
