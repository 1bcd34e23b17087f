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

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from descend.lab.problems import Problem, problem as get_problem
from descend.lab.trajectory import Trajectory

__all__ = ["contour_paths", "loss_curves", "race_figure", "race_gif", "COLORS"]

#: Colours given to trajectories / series in order (matplotlib's tab10).
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf"]


def _axes(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _label(t: Trajectory) -> str:
    lr = t.hyperparameters.get("lr")
    text = t.label if lr is None or callable(lr) else f"{t.label} (η={lr:g})"
    return text + (" — diverged" if t.diverged else "")


def _grid(prob: Problem, n: int):
    (x0, x1), (y0, y1) = prob.bounds
    xs, ys = np.linspace(x0, x1, n), np.linspace(y0, y1, n)
    X, Y = np.meshgrid(xs, ys)
    with torch.no_grad():
        Z = prob.f(torch.from_numpy(np.stack([X, Y]))).numpy()
    return X, Y, Z


def contour_paths(problem: str | Problem, trajectories: Sequence[Trajectory] = (), ax=None, *,
                  resolution: int = 200, title: str | None = None) -> Figure:
    """Contour lines of a 2-D problem with optimizers' paths (a 1-D problem: its curve and iterates).

    Levels are spaced logarithmically in f − f*, so the floor of a valley stays visible.

    Args:
        problem: a name or a :class:`~descend.lab.problems.Problem`.
        trajectories: :class:`~descend.lab.trajectory.Trajectory` objects on this problem.
        ax: draw into these axes (default: a new Figure).
        resolution: grid points per axis.
        title: default: the problem's name and formula.

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
        for t, c in zip(trajectories, COLORS * 10):
            ok = np.isfinite(t.points[:, 0]) & np.isfinite(t.losses)
            ax.plot(t.points[ok, 0], t.losses[ok], "o-", color=c, ms=3, lw=0.8, alpha=0.8, label=_label(t))
        for m in prob.minima:
            ax.plot(m[0], float(prob(m)), "*", color="gold", mec="k", ms=15, zorder=5)
        for m in prob.local_minima:
            ax.plot(m[0], float(prob(m)), "*", color="white", mec="k", ms=13, zorder=5)
        ax.set_xlim(*prob.bounds[0])
        ax.set_xlabel("x")
        ax.set_ylabel("f(x)")
    elif prob.dim == 2:
        X, Y, Z = _grid(prob, resolution)
        gap = Z - fmin
        top = float(np.nanmax(gap))
        low = max(float(np.nanmin(gap[gap > 0])) if np.any(gap > 0) else top * 1e-6, top * 1e-6)
        levels = fmin + np.geomspace(low, top, 30)
        ax.contourf(X, Y, Z, levels=levels, cmap="Blues_r", alpha=0.35, extend="both")
        ax.contour(X, Y, Z, levels=levels, colors="0.45", linewidths=0.5)
        for t, c in zip(trajectories, COLORS * 10):
            p = t.points[np.all(np.isfinite(t.points), axis=1)]
            every = max(1, len(p) // 40)
            ax.plot(p[:, 0], p[:, 1], "-", color=c, lw=1.6, alpha=0.9, label=_label(t), zorder=3)
            ax.plot(p[::every, 0], p[::every, 1], "o", color=c, ms=2.5, zorder=3)
            ax.plot(p[-1, 0], p[-1, 1], "o", color=c, mec="k", ms=6, zorder=6)
        if trajectories:
            s = trajectories[0].points[0]
            ax.plot(s[0], s[1], "o", color="k", ms=6, zorder=4)
        for m in prob.minima:
            ax.plot(*m, "*", color="gold", mec="k", ms=15, zorder=5)
        for m in prob.local_minima:
            ax.plot(*m, "*", color="white", mec="k", ms=13, zorder=5)
        for m in prob.saddles:
            ax.plot(*m, "x", color="k", ms=9, mew=2, zorder=5)
        ax.set_xlim(*prob.bounds[0])
        ax.set_ylim(*prob.bounds[1])
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    else:
        raise ValueError(f"contour_paths: invalid problem {prob.name!r} of dimension {prob.dim}; expected 1 or 2")
    ax.set_title(title if title is not None else f"{prob.name}: {prob.formula}", fontsize=10)
    if trajectories:
        ax.legend(loc="best", fontsize=8, framealpha=0.85)
    return fig


def loss_curves(series: Sequence[Trajectory] | Mapping[str, Any], ax=None, *, log: bool = True,
                xlabel: str = "step", ylabel: str | None = None, title: str | None = None) -> Figure:
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
    for (name, x, y, band), c in zip(items, COLORS * 10):
        ok = np.isfinite(y)
        ax.plot(x[ok], y[ok], color=c, lw=1.6, label=name)
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
    if items:
        ax.legend(loc="best", fontsize=8, framealpha=0.85)
    return fig


def race_figure(problem: str | Problem, trajectories: Sequence[Trajectory]) -> Figure:
    """The paths (left) and f(θ_t) − f* over steps (right) in one Figure: ``descend race``'s PNG."""
    fig = Figure(figsize=(11.0, 4.6), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.15, 1.0])
    contour_paths(problem, trajectories, ax=left)
    loss_curves(trajectories, ax=right, title="f(θ_t) − f*, the gap to the minimum value")
    return fig


def race_gif(problem: str | Problem, trajectories: Sequence[Trajectory], path: str | Path, *,
             frames: int = 60, fps: int = 12, dpi: int = 80) -> Path:
    """Write the race as an animated GIF: the paths grow step by step over the contour plot.

    Steps are sampled evenly onto at most ``frames`` frames, plus a pause on the last one; at the
    default size a GIF is a few hundred kB.

    Args:
        problem: a name or a Problem; trajectories: the runs; path: where to write the .gif.
        frames: the most frames; fps: frames per second; dpi: resolution.

    Returns:
        The path written.
    """
    from matplotlib.animation import FuncAnimation, PillowWriter

    prob = get_problem(problem)
    if frames < 1:
        raise ValueError(f"race_gif: invalid frames={frames!r}; expected an integer >= 1")
    fig = Figure(figsize=(5.6, 4.6), layout="constrained")
    ax = fig.add_subplot()
    contour_paths(prob, [], ax=ax)
    lines, heads = [], []
    for t, c in zip(trajectories, COLORS * 10):
        style = dict(marker="o", ms=3, lw=0.8) if prob.dim == 1 else dict(lw=1.8)
        (line,) = ax.plot([], [], color=c, label=_label(t), zorder=3, **style)
        (head,) = ax.plot([], [], "o", color=c, mec="k", ms=8, zorder=6)  # above the minima's stars
        lines.append(line)
        heads.append(head)
    if trajectories:
        ax.legend(loc="best", fontsize=8, framealpha=0.85)
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
    anim.save(str(path), writer=PillowWriter(fps=fps), dpi=dpi)
    return path
