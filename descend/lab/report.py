"""The comparison's outputs: metrics.csv, the figures, the results table, a reading of the numbers,
and one self-contained HTML page (figures embedded as base64 PNG; no external URL of any kind, so it
opens offline).

Spread over seeds: curves show the mean over seeds and a band from the lowest to the highest seed;
the table shows mean ± sample standard deviation. Diverged runs are left out of means (their curves
stop, marked ×, at the epoch they diverged) and counted in the status column.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from descend.lab.plots import metric_limits
from descend.lab.train import CSV_COLUMNS, Comparison, Summary

__all__ = ["write_csv", "figure", "metric_figure", "loss_figure", "table_rows", "table_text", "reading",
           "write_report", "check_out_dir", "REPORT_FILES"]


# ------------------------------------------------------------------------------- csv


def write_csv(comp: Comparison, path: str | Path) -> Path:
    """metrics.csv: one row per optimizer, seed and epoch, columns :data:`~descend.lab.train.CSV_COLUMNS`."""
    path = Path(path)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
        w.writeheader()
        for row in comp.rows:
            w.writerow({k: (repr(float(v)) if isinstance(v, float) else v) for k, v in row.items()})
    return path


# ------------------------------------------------------------------------------- figures


def _curves(comp: Comparison, name: str, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """epochs, mean, low, high of ``key`` over the non-diverged seeds of ``name`` (all seeds if all diverged)."""
    runs = comp.runs_of(name)
    ok = [r for r in runs if not r.diverged] or runs
    n = max(len(r.rows) for r in ok)
    m = np.full((len(ok), n), np.nan)
    for i, r in enumerate(ok):
        vals = np.array([row[key] for row in r.rows], dtype=float)
        vals[~np.isfinite(vals)] = np.nan
        m[i, :len(vals)] = vals
    with np.errstate(all="ignore"), _quiet():
        return np.arange(n), np.nanmean(m, 0), np.nanmin(m, 0), np.nanmax(m, 0)


class _quiet:
    """Silence numpy's "mean of empty slice" for epochs no seed reached."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


#: per optimizer, in order, a line style and a marker beside its colour: curves that run together
#: (GD and Momentum at the same effective step) stay distinguishable, in colour and in grey
_STYLES = [("-", "o"), ("--", "s"), ("-.", "^"), (":", "D"), ((0, (6, 2, 1, 2, 1, 2)), "v"), ((0, (9, 3)), "P"),
           ((0, (1, 1)), "X"), ((0, (4, 1, 4, 4)), "*")]


def _healthy_range(comp: Comparison, key: str, log: bool, first_epoch: int = 0) -> tuple[float, float] | None:
    """The y range of the curves and bands of the runs that did not diverge (all runs if every run
    diverged), every epoch including 0: a diverged run does not set the scale."""
    vals = []
    names = [n for n in comp.optimizers if not all(r.diverged for r in comp.runs_of(n))] or comp.optimizers
    for name in names:
        _, mean, lo, hi = _curves(comp, name, key)
        vals += [v for v in np.concatenate([mean[first_epoch:], lo[first_epoch:], hi[first_epoch:]]) if math.isfinite(v) and (v > 0 or not log)]
    if not vals:
        return None
    if not log:
        return metric_limits(vals, comp.data.metric_name, pad=0.04)
    lo, hi = min(vals), max(vals)
    span = math.log10(hi) - math.log10(lo)
    pad = 10 ** max(0.04 * span, 0.05)
    return lo / pad, hi * pad


def _plot(ax, comp: Comparison, key: str, ylabel: str, log: bool = False) -> None:
    """Mean over seeds (a line with its own colour, dash and marker), a band from the lowest to the
    highest seed, and × where a run diverged — placed on the axis edge if its value is off the scale,
    which only the runs that did not diverge set. Later optimizers' dashed lines are drawn over the
    earlier solid ones, so where two curves coincide both stay visible."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    colors = plt.get_cmap("tab10")
    epochs = int(comp.settings["epochs"])
    n = len(comp.optimizers)
    every = max(1, round(epochs / 5))
    if log:
        ax.set_yscale("log")
    limits = _healthy_range(comp, key, log)
    if limits is not None:
        ax.set_ylim(*limits)
    for i, name in enumerate(comp.optimizers):
        c = colors(i % 10)
        ls, marker = _STYLES[i % len(_STYLES)]
        ep, mean, lo, hi = _curves(comp, name, key)
        if log:  # a log axis has no place for 0 (lr="auto" shows 0 before its first step)
            mean, lo, hi = (np.where(v > 0, v, np.nan) for v in (mean, lo, hi))
        runs = comp.runs_of(name)
        div = sum(r.diverged for r in runs)
        label = name + (f" (diverged {div}/{len(runs)})" if div else "")
        z = 3 + i / max(n, 1)  # later (dashed) lines over earlier (solid) ones: the solid shows through the gaps
        start = i % every  # markers of different optimizers on different epochs
        ax.plot(ep, mean, color=c, lw=1.8, ls=ls, marker=marker, ms=5, markevery=(start, every), label=label,
                zorder=z)
        if len(runs) - div > 1:
            ax.fill_between(ep, lo, hi, color=c, alpha=0.15, lw=0, zorder=1)
        for r in runs:
            if r.diverged:
                finite = [row[key] for row in r.rows if math.isfinite(row[key]) and (row[key] > 0 or not log)]
                y0, y1 = ax.get_ylim()
                y = finite[-1] if finite else y1
                ax.plot([r.diverged_epoch], [min(max(y, y0), y1)], "x", color=c, ms=9, mew=2.2, zorder=10,
                        clip_on=False)
    ax.set_xlim(-0.02 * epochs - 0.15, epochs * 1.02 + 0.15)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    if log:
        y0, y1 = ax.get_ylim()
        decades = math.log10(y1) - math.log10(y0)
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0,) if decades > 2.5 else (1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if not log:
        _zoom(ax, comp, key)


def _zoom(ax, comp: Comparison, key: str) -> None:
    """An inset with the later epochs magnified, where the full range (epoch 0 included) squeezes the
    curves together, placed in a corner no curve passes through (none if there is no such corner)."""
    epochs = int(comp.settings["epochs"])
    first = max(1, epochs // 4)
    full, late = ax.get_ylim(), _healthy_range(comp, key, False, first_epoch=first)
    if late is None or epochs < 4 or (late[1] - late[0]) > 0.4 * (full[1] - full[0]):
        return
    points = []  # every plotted point, in axes fractions
    for line in ax.get_lines():
        xy = np.column_stack(line.get_data()).astype(float)
        xy = xy[np.isfinite(xy).all(axis=1)]
        if len(xy):
            points.append(ax.transLimits.transform(ax.transScale.transform(xy)))
    pts = np.concatenate(points) if points else np.zeros((0, 2))
    for box in ((0.42, 0.07, 0.55, 0.5), (0.07, 0.45, 0.5, 0.45)):
        x0, y0, w, h = box
        inside = (pts[:, 0] > x0 - 0.03) & (pts[:, 0] < x0 + w + 0.03) & (pts[:, 1] > y0 - 0.03) & (pts[:, 1] < y0 + h)
        if not inside.any():
            break
    else:
        return
    inset = ax.inset_axes(box)
    for line in ax.get_lines():
        x, y = line.get_data()
        if len(x) > 1:
            inset.plot(x, y, color=line.get_color(), ls=line.get_linestyle(), lw=1.4, marker=line.get_marker(),
                       ms=4, markevery=line.get_markevery(), zorder=line.get_zorder())
    inset.set_xlim(first - 0.3, epochs + 0.3)
    inset.set_ylim(*late)
    from matplotlib.ticker import MaxNLocator

    inset.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
    inset.tick_params(labelsize=7)
    inset.grid(alpha=0.3)
    inset.set_title(f"epochs {first}–{epochs}, magnified", fontsize=7, pad=2)
    ax.indicate_inset_zoom(inset, edgecolor="0.5", alpha=0.6)


def _legend(fig, ax) -> None:
    """One legend under the plot(s), so no curve hides behind it."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), fontsize=8, frameon=False)


def _model_text(comp: Comparison) -> str:
    """``MLP 64→64→10`` or ``1-D CNN 40→(32,32,32 channels)→10``."""
    s = comp.settings
    if s.get("model") == "cnn1d":
        return f"1-D CNN {s['n_features']}→({','.join(map(str, s['hidden']))} channels)→{comp.data.n_outputs}"
    return f"MLP {s['n_features']}→{'→'.join(map(str, s['hidden']))}→{comp.data.n_outputs}"


def _title(comp: Comparison) -> str:
    s = comp.settings
    return (f"{s['task']}: {_model_text(comp)}, "
            f"{_plural(len(s['seeds']), 'seed')}, batch {s['batch_size']}" + (f", schedule {s['schedule']}" if s['schedule'] else "")
            + (" — partial (interrupted)" if s.get("partial") else ""))


def metric_figure(comp: Comparison):
    """Validation metric vs epoch: mean over seeds, band from the lowest to the highest seed."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=110, layout="constrained")
    _plot(ax, comp, "val_metric", f"validation {comp.data.metric_name}")
    ax.set_title(_title(comp), fontsize=9)
    _legend(fig, ax)
    return fig


def loss_figure(comp: Comparison):
    """Training loss (whole training set, after each epoch) vs epoch, log scale."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=110, layout="constrained")
    _plot(ax, comp, "train_loss", "training loss", log=True)
    ax.set_title(_title(comp), fontsize=9)
    _legend(fig, ax)
    return fig


def lr_figure(comp: Comparison):
    """The learning rate in use vs epoch (the rate of each epoch's last step), log scale: the
    estimate of ``lr="auto"`` as it grows and settles, a schedule's shape, or a flat line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=110, layout="constrained")
    _plot(ax, comp, "lr", "learning rate in use", log=True)
    ax.set_title(_title(comp), fontsize=9)
    _legend(fig, ax)
    return fig


def lr_varies(comp: Comparison) -> bool:
    """Whether any run's learning rate changed over its epochs (``lr="auto"``, a schedule)."""
    for run in comp.runs:
        lrs = [float(r["lr"]) for r in run.rows[1:]]
        if any(not math.isclose(x, lrs[0], rel_tol=1e-9) for x in lrs[1:]):
            return True
    return False


def tuning_figure(comp: Comparison):
    """compare --tuned: each rule's search, its validation metric against the rate (the grid's seeds,
    ★ the rate chosen), and its ``lr="auto"`` rows as one ◆: their mean final metric over the seeds, at
    the rate the estimate ended with (the median over the seeds of the last quarter's epochs).
    None without a search."""
    import matplotlib.pyplot as plt

    tuning = comp.settings.get("tuning") or {}
    tuned = [(label, t) for label, t in tuning.items() if t.get("curve")]
    if not tuned:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=110, layout="constrained")
    sums = {s.optimizer: s for s in comp.summaries()}
    ys = []
    for i, (label, t) in enumerate(tuned):
        c = f"C{i % 10}"
        rule = label.removesuffix(" (tuned)")
        pts = [(lr, v) for lr, v in t["curve"] if v is not None]
        if pts:
            ax.plot(*zip(*pts), "o-", color=c, lw=1.5, ms=4, label=f"{rule}: the search")
            ys += [v for _, v in pts]
        chosen = dict(pts).get(t["lr"])
        if chosen is not None:
            ax.plot([t["lr"]], [chosen], "*", color=c, ms=14, mec="k", mew=0.6, zorder=5)
        auto = f"{rule} (lr=auto)"
        s = sums.get(auto)
        if s is not None and math.isfinite(s.final_mean):
            ends = []
            for run in comp.runs_of(auto):
                lrs = [float(r["lr"]) for r in run.rows[1:] if float(r["lr"]) > 0]
                if lrs and not run.diverged:
                    ends += lrs[-max(1, len(lrs) // 4):]
            if ends:
                ax.plot([float(np.median(ends))], [s.final_mean], "D", color=c, ms=9, mec="k", mew=0.8, zorder=6,
                        label=f"{rule}: lr=auto, one run")
                ys.append(s.final_mean)
    limits = metric_limits(ys, comp.data.metric_name)
    if limits is not None:
        ax.set_ylim(*limits)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (lr=auto: where its estimate ended)")
    n = len(comp.settings.get("tuning_seeds", [0]))
    ax.set_ylabel(f"validation {comp.data.metric_name}")
    ax.set_title(f"{_title(comp)}\nsearch on {n} seed{'s' if n != 1 else ''} (★ chosen); "
                 f"◆ lr=auto, mean over the seeds", fontsize=9)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    return fig


def figure(comp: Comparison):
    """Both panels side by side (the picture in the README)."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110, layout="constrained")
    _plot(a, comp, "val_metric", f"validation {comp.data.metric_name}")
    _plot(b, comp, "train_loss", "training loss", log=True)
    fig.suptitle(_title(comp), fontsize=10)
    _legend(fig, a)
    return fig


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# ------------------------------------------------------------------------------- the table


def _fmt(x: float, digits: int = 3) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _hp_text(hp: dict[str, Any]) -> str:
    parts = []
    for k, v in hp.items():
        v = f"{v:g}" if isinstance(v, float) else str(v).replace(" ", "")
        parts.append(f"{k}={v}")
    return " ".join(parts)


def schedule_text(comp: Comparison) -> str:
    """The active ``--schedule`` as the table and the report show it ("" if none); a plateau schedule
    says what feeds it."""
    spec = comp.settings.get("schedule")
    if not spec:
        return ""
    from descend.lab.train import feeds_on_validation_loss

    return spec + (" (fed the validation loss after each epoch)" if feeds_on_validation_loss(spec) else "")


def _status(comp: Comparison, s: Summary) -> str:
    planned = len(comp.settings["seeds"])
    partial = f"partial: {s.seeds}/{planned} seeds" if comp.settings.get("partial") and s.seeds < planned else ""
    if not s.diverged:
        return partial or "ok"
    first = min(r.diverged_epoch for r in comp.runs_of(s.optimizer) if r.diverged)
    return f"diverged {s.diverged}/{s.seeds} (epoch {first})" + (f", {partial}" if partial else "")


def _partial_note(comp: Comparison) -> str | None:
    p = comp.settings.get("partial")
    if not p:
        return None
    return (f"Interrupted after {p['runs_done']} of {p['runs_planned']} runs (partial): the numbers cover "
            "the finished runs only.")


def table_rows(comp: Comparison) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table (strings)."""
    m = comp.data.metric_name
    head = ["optimizer", "hyperparameters", f"final val {m}", f"best val {m}",
            f"epochs to {m} ≥ {comp.goal:.3f}", "time/run", "status"]
    rows = []
    sched = schedule_text(comp)
    for s in comp.summaries():
        final = "—" if s.all_diverged else f"{_fmt(s.final_mean)} ± {_fmt(s.final_std)}"
        goal = (f"never (0/{s.seeds} seeds)" if s.reached_goal == 0 else
                f"{s.epochs_to_goal:.1f} ({s.reached_goal}/{s.seeds} seeds)")
        if s.all_diverged:
            goal = "—"
        hp = _hp_text(s.hyperparameters) + (f" schedule={sched}" if sched else "")
        rows.append([s.optimizer, hp, final, _fmt(s.best_mean), goal,
                     f"{s.seconds:.1f} s", _status(comp, s)])
    tuning = comp.settings.get("tuning")
    if tuning:  # compare --tuned: what finding each row's learning rate cost (descend.lab.tune)
        from descend.lab.tune import tuning_cost_text

        head.insert(6, "tuning cost")
        for r in rows:
            r.insert(6, tuning_cost_text(tuning[r[0]]) if r[0] in tuning else "—")
    return head, rows


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def table_text(comp: Comparison) -> str:
    """The results table as aligned plain text for the terminal."""
    head, rows = table_rows(comp)
    w = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * x for x in w]), *map(line, rows)])


# ------------------------------------------------------------------------------- the reading


def resolution(comp: Comparison) -> float:
    """The smallest difference in the final validation metric worth reading: one validation row for
    accuracy (1/n_val), 0.0005 for R² (the table's rounding)."""
    n_val = comp.settings.get("val_rows") or len(comp.data.x_val)
    return 1.0 / n_val if comp.data.kind == "classification" and n_val else 0.0005


def reading(comp: Comparison) -> list[str]:
    """A few sentences read off the numbers: who won and by how much (against the seed spread and the
    metric's resolution: a gap within either is a tie), who reached the goal first and in how many
    seeds, who diverged, and what to distrust (a partial run, a tiny validation split)."""
    m = comp.data.metric_name
    pts = comp.data.kind == "classification"

    def gap(d: float) -> str:
        return f"{100 * d:.1f} percentage points" if pts else f"{d:.3f}"

    sums = comp.summaries()
    ok = sorted((s for s in sums if not s.all_diverged and math.isfinite(s.final_mean)),
                key=lambda s: -s.final_mean)
    out = [note] if (note := _partial_note(comp)) else []
    res = resolution(comp)
    res_text = (f"one validation row is {gap(res)}" if pts else f"the table's rounding, {res:g}")
    if not ok:
        if sums and all(s.all_diverged for s in sums):
            out.append("Every run diverged: lower the learning rates (e.g. --lr 0.001) and run again.")
        else:
            out.append(f"No run that finished has a finite validation {m}, so there is nothing to rank.")
    else:
        best = ok[0]
        seeds = lambda s: _plural(s.seeds - s.diverged, "seed")  # noqa: E731
        after = f"after {comp.settings['epochs']} epochs"

        def within(a: Summary, b: Summary) -> tuple[bool, float]:
            spread = max(a.final_std, b.final_std) if min(a.seeds - a.diverged, b.seeds - b.diverged) > 1 else 0.0
            return a.final_mean - b.final_mean <= max(spread, res) + 1e-12, spread

        tied = [best] + [s for s in ok[1:] if within(best, s)[0]]
        if len(tied) > 1:
            lo = tied[-1]
            spread = max(s.final_std for s in tied)
            names = ", ".join(s.optimizer for s in tied[:-1]) + f" and {lo.optimizer}"
            values = (f"{best.final_mean:.3f}" if f"{best.final_mean:.3f}" == f"{lo.final_mean:.3f}"
                      else f"{lo.final_mean:.3f} to {best.final_mean:.3f}")
            out.append(f"{names} tied for the best validation {m}, {values} (means over the seeds, {after}): "
                       f"the gaps, at most {gap(best.final_mean - lo.final_mean)}, are within the seed-to-seed "
                       f"spread (standard deviation up to {spread:.3f}) or the metric's resolution ({res_text}), "
                       "so they are not clearly apart.")
        else:
            out.append(f"{best.optimizer} ended with the best validation {m}, {best.final_mean:.3f} "
                       f"(mean over {seeds(best)}) {after}.")
            second = ok[1] if len(ok) > 1 else None
            if second is not None:
                d = best.final_mean - second.final_mean
                _, spread = within(best, second)
                single = min(best.seeds - best.diverged, second.seeds - second.diverged) < 2
                verdict = ("from a single seed, so not a measure of consistency" if single else
                           f"more than the seed-to-seed spread (standard deviation up to {spread:.3f}) and the "
                           f"metric's resolution ({res_text}), so the lead is consistent")
                out.append(f"The runner-up, {second.optimizer}, reached {second.final_mean:.3f}: "
                           f"{gap(d)} behind, {verdict}.")
        worst = ok[-1]
        if worst not in tied and (len(tied) > 1 or worst is not ok[1]):
            out.append(f"Last was {worst.optimizer} at {worst.final_mean:.3f} "
                       f"({gap(best.final_mean - worst.final_mean)} behind {best.optimizer}).")
        out += _goal_sentences(comp, ok, m)
    for s in sums:
        if s.diverged:
            first = min(r.diverged_epoch for r in comp.runs_of(s.optimizer) if r.diverged)
            out.append(f"{s.optimizer} ({_hp_text(s.hyperparameters)}) diverged in {s.diverged} of {_plural(s.seeds, 'seed')}, "
                       f"first at epoch {first}: its loss became non-finite or exceeded "
                       f"{comp.settings['divergence_factor']:g}× the initial loss; try a smaller lr.")
    if sums and not any(s.diverged for s in sums):
        out.append("No run diverged.")
    out += [f"Note: {n}" for n in getattr(comp.data, "notes", [])]
    for name, ratio in still_rising(comp).items():
        out.append(f"{name}'s learning-rate estimate (lr=auto) was still rising when training ended: ×{ratio:.1f} "
                   "over the last quarter of the epochs (median over the seeds), so it had not settled; its "
                   "estimate needs steps to grow, and a longer run may end elsewhere.")
    out.extend(tuned_reading(comp))
    return out


#: the rise over the last quarter of the epochs from which the reading says an estimate had not settled
RISING = 1.5


def still_rising(comp: Comparison) -> dict[str, float]:
    """Per ``lr="auto"`` row without a schedule (whose shape moves the rate in use by design): the
    median over its finished seeds of the rate in use at the end (the median of the last three
    epochs') over the same three quarters of the way through; rows at ``RISING`` or more."""
    if comp.settings.get("schedule"):
        return {}
    out = {}
    for s in comp.summaries():
        if s.hyperparameters.get("lr") != "auto":
            continue
        ratios = []
        for run in comp.runs_of(s.optimizer):
            lrs = [float(r["lr"]) for r in run.rows[1:]]
            if run.diverged or len(lrs) < 8:
                continue
            q = round(0.75 * len(lrs))
            before, end = float(np.median(lrs[q - 3:q])), float(np.median(lrs[-3:]))
            if before > 0 and math.isfinite(end):
                ratios.append(end / before)
        rise = float(np.median(ratios)) if ratios else 0.0
        if rise >= RISING:
            out[s.optimizer] = rise
    return out


def tuned_reading(comp: Comparison) -> list[str]:
    """compare --tuned: per rule, lr="auto" from one run against the grid-tuned rate, in points."""
    tuning = comp.settings.get("tuning")
    if not tuning:
        return []
    sums = {s.optimizer: s for s in comp.summaries()}
    out = []
    for label, cost in tuning.items():
        if cost.get("search") == "auto" or label not in sums:
            continue
        rule = label.rsplit(" (", 1)[0]
        auto = sums.get(f"{rule} (lr=auto)")
        t = sums[label]
        best = cost.get("select") == "best"  # the rate picked by each run's best epoch, not its last
        txt = (f"{rule}: the {cost['search']} search over {cost['lrs'][2]} rates "
               f"({cost['lrs'][0]:.2g} … {cost['lrs'][1]:.2g}) picked lr={cost['lr']:.2g}"
               + (" by each run's best epoch" if best else "") + f" for {cost['runs']} runs and {cost['epochs']} epochs")
        if cost.get("heldout") is not None and math.isfinite(cost.get("best", math.nan)):
            txt += (f" (it scored {cost['best']:.3f} on the validation rows that chose it; chosen on one half of "
                    f"them and measured on the other, {cost['heldout']:.3f})")
        a, b = (auto.best_mean, t.best_mean) if best and auto is not None else (
            (auto.final_mean, t.final_mean) if auto is not None else (math.nan, math.nan))
        if math.isfinite(a) and math.isfinite(b):
            txt += (f"; lr=\"auto\" in one run " + ("reached at its best epoch" if best else "ended at")
                    + f" {a:.3f} against {b:.3f} ({100 * (a - b):+.1f} points)")
        out.append(txt + ".")
    return out


def _goal_sentences(comp: Comparison, ok: list[Summary], m: str) -> list[str]:
    """Who reached the goal: first those that did in every seed (ranked by mean epochs), then those
    that did in some seeds only (their mean covers only those seeds), then those that never did."""
    g = f"{comp.goal:.3f}"
    if not math.isfinite(comp.goal):
        return []
    every = sorted((s for s in ok if s.reached_goal and s.reached_goal == s.seeds), key=lambda s: s.epochs_to_goal)
    some = [s for s in ok if s.reached_goal and s.reached_goal < s.seeds]
    never = [s for s in ok if s.reached_goal == 0]
    out = []
    if every:
        f = every[0]
        txt = (f"Fastest to validation {m} ≥ {g} in every seed: {f.optimizer} ({f.epochs_to_goal:.1f} epochs on "
               f"average, {f.reached_goal}/{f.seeds} seeds)")
        if len(every) > 1 and every[-1].epochs_to_goal > f.epochs_to_goal:
            txt += f"; slowest of those: {every[-1].optimizer} ({every[-1].epochs_to_goal:.1f})"
        out.append(txt + ".")
    if some:
        out.append(f"Reached {g} in some seeds only: " + ", ".join(
            f"{s.optimizer} ({s.reached_goal}/{s.seeds} seeds, {s.epochs_to_goal:.1f} epochs on average in those)"
            for s in some) + ".")
    if never:
        out.append(f"Never reached {g}: {', '.join(s.optimizer for s in never)}.")
    return out


# ------------------------------------------------------------------------------- the page

_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45;overflow-wrap:break-word}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
.wide{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;font-size:.92em;margin:.5em 0;max-width:100%}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top} th{background:#f3f3f3}
td.hp,td.long{overflow-wrap:anywhere;min-width:8em}
@media (max-width:800px){body{margin:1em auto;padding:0 .5em} table{font-size:.8em} th,td{padding:.2em .35em}}
td.num{text-align:right;font-variant-numeric:tabular-nums} tr.diverged td{background:#fde8e8}
.fig{max-width:100%;height:auto;border:1px solid #eee} .muted{color:#666;font-size:.9em}
ul.reading li{margin:.2em 0} code{background:#f5f5f5;padding:0 .2em}
"""


def _img(png: bytes, alt: str) -> str:
    return (f'<img class="fig" alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')


def render_html(comp: Comparison, figures: dict[str, bytes], command: str | None = None) -> str:
    """The report page as a string (``figures``: file name → PNG bytes, embedded in that order)."""
    e = html.escape
    s = comp.settings
    head, rows = table_rows(comp)
    status_col = head.index("status")
    table = ['<div class="wide"><table>', "<tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        cls = ' class="diverged"' if "diverged" in r[status_col] else ""
        cells = "".join(f'<td{" class=num" if 2 <= i <= 5 else " class=hp" if i == 1 else ""}>{e(c)}</td>'
                        for i, c in enumerate(r))
        table.append(f"<tr{cls}>{cells}</tr>")
    table.append("</table></div>")
    settings = [
        ("task", f"{s['task']} ({s['kind']}; metric: {s['metric']}) — {s['train_rows']} training rows, "
                 f"{s['val_rows']} validation rows, {s['n_features']} features"),
        ("model", f"{_model_text(comp)}, ReLU"),
        ("training", f"{s['epochs']} epochs, mini-batches of {s['batch_size']}, seeds {', '.join(map(str, s['seeds']))} "
                     "(per seed: the same initial weights and batch order for every optimizer)"),
        ("schedule", (schedule_text(comp) + ", peaking at each optimizer's lr") if s["schedule"]
         else "none (constant learning rate)"),
        ("goal", f"validation {s['metric']} ≥ {comp.goal:.3f}"),
    ]
    if command:
        settings.insert(0, ("command", command))
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>descend compare — {e(s['task'])}</title>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<style>{_CSS}</style></head><body>",
        f"<h1>descend compare — {e(s['task'])}{' (partial)' if s.get('partial') else ''}</h1>",
        '<p class="muted">A self-contained report: the figures are embedded; the numbers are in '
        "<code>metrics.csv</code> beside this file.</p>",
        "<h2>Reading</h2>", '<ul class="reading">', *[f"<li>{e(t)}</li>" for t in reading(comp)], "</ul>",
        "<h2>Results</h2>", *table,
        '<p class="muted">final/best: mean ± sample standard deviation over the seeds that did not diverge; '
        "epochs to goal: mean over the seeds that reached it; time/run: wall time of the training steps.</p>",
        "<h2>Curves</h2>",
        '<p class="muted">Lines: mean over seeds; bands: lowest to highest seed; ×: a run that diverged. '
        "Training loss is measured on the whole training set after each epoch (epoch 0: before training)."
        + (" Learning rate: the rate each epoch's last step used (lr=auto: the estimate in use; a schedule: "
           "its value then)." if "lr.png" in figures else "")
        + (" Search: each rule's validation metric against the rates tried, and lr=auto from one run at the rate "
           "its estimate ended with." if "tuning.png" in figures else "") + "</p>",
        *[f"<p>{_img(png, name)}</p>" for name, png in figures.items()],
        "<h2>Settings</h2>", '<div class="wide"><table>',
        *[f'<tr><th>{e(k)}</th><td class="long">{e(v)}</td></tr>' for k, v in settings], "</table></div>",
        "</body></html>",
    ]
    return "\n".join(parts)


#: the files :func:`write_report` writes; a folder holding only these (or report.html / metrics.csv
#: among others of a previous run's kind) is a previous report that may be replaced whole
REPORT_FILES = ("metrics.csv", "val_metric.png", "train_loss.png", "lr.png", "compare.png", "report.html")


def check_out_dir(out_dir: str | Path) -> None:
    """Raise ValueError (one line, naming the folder) unless :func:`write_report` can write ``out_dir``.

    Checked before any training, so a bad ``--out`` costs nothing: ``out_dir`` must be a new folder
    (its parents are created), an empty one, or a previous report (it holds ``report.html`` or
    ``metrics.csv``), which is then replaced whole; the nearest existing folder above it must take a
    new folder (tried: a temporary one is made and removed).
    """
    out = Path(out_dir).absolute()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out_dir}: is a file, not a folder")
    if out.is_dir():
        names = sorted(p.name for p in out.iterdir())
        if names and not {"report.html", "metrics.csv"} & set(names):
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise ValueError(f"{out_dir}: the folder holds other files ({shown}) and would be replaced whole; "
                             "give a new folder, an empty one or a previous report's")
    above = out.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise ValueError(f"{out_dir}: {above} is a file, not a folder")
    try:
        tempfile.TemporaryDirectory(dir=above, prefix=".descend-probe-").cleanup()
    except OSError as e:
        raise ValueError(f"{out_dir}: cannot write in {above} ({e.strerror or e})") from None


def write_report(comp: Comparison, out_dir: str | Path, command: str | None = None) -> dict[str, Path]:
    """Write ``metrics.csv``, ``val_metric.png``, ``train_loss.png``, ``lr.png``, ``compare.png`` and
    ``report.html`` into ``out_dir`` and return name → path. The page embeds the first two, and
    ``lr.png`` too where a run's learning rate changed during training (``lr="auto"``, a schedule).

    Whole or not at all: everything is written into a temporary folder beside ``out_dir``, which then
    takes ``out_dir``'s place (a previous report there is moved aside and removed only after that), so
    an interruption leaves either the previous report intact or the new one complete. ``out_dir`` must
    pass :func:`check_out_dir` (ValueError otherwise).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    check_out_dir(out_dir)
    out = Path(out_dir)
    target = out.absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.writing-"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        write_csv(comp, tmp / "metrics.csv")
        figs = {"val_metric.png": _png(metric_figure(comp)), "train_loss.png": _png(loss_figure(comp)),
                "lr.png": _png(lr_figure(comp)), "compare.png": _png(figure(comp))}
        searched = tuning_figure(comp)  # compare --tuned only
        if searched is not None:
            figs["tuning.png"] = _png(searched)
        for name, png in figs.items():
            (tmp / name).write_bytes(png)
        # the learning-rate figure only where a rate changed during training (lr="auto", a schedule)
        shown = (("val_metric.png", "train_loss.png") + (("lr.png",) if lr_varies(comp) else ())
                 + (("tuning.png",) if searched is not None else ()))
        embedded = {k: figs[k] for k in shown}
        (tmp / "report.html").write_text(render_html(comp, embedded, command), encoding="utf-8")
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {name: out / name for name in REPORT_FILES + (("tuning.png",) if searched is not None else ())}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _swap_in(new: Path, target: Path) -> None:
    """Put folder ``new`` at ``target``; a folder already there is moved aside first and removed after."""
    if not target.exists():
        os.rename(new, target)
        return
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    os.rename(target, old / "report")
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old / "report", target)
        raise
    shutil.rmtree(old, ignore_errors=True)
