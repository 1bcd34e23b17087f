"""``descend tune``: search each optimizer's learning rate on the validation split and report the cost."""

from __future__ import annotations

import csv
import importlib.util
import math
import time

import click

from descend.cli.options import (FIGURE_SUFFIXES, check_out_file, data_options, load_data, model_options,
                                 optimizer_names, optimizers_help, parse_hidden, parse_sets, write_figure,
                                 schedule_option, tasks_help)

__all__ = ["tune_command", "parse_lrs", "tuning_table"]


def parse_lrs(text: str | None, points: int) -> list[float] | None:
    """``--lrs``: ``1e-4,1e-3,1e-2`` (the rates) or ``1e-5:1e-1`` (``points`` log-spaced from LO to HI)."""
    if text is None:
        return None
    from descend.lab.tune import log_grid

    try:
        if ":" in text:
            lo, _, hi = text.partition(":")
            return log_grid(float(lo), float(hi), points)
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise click.BadParameter(f"{text!r}: {e}; expected LO:HI or comma-separated rates, e.g. 1e-5:1e-1",
                                 param_hint="--lrs") from None
    if not vals or any(not (0 < v < math.inf) for v in vals):
        raise click.BadParameter(f"{text!r}: expected finite rates > 0, e.g. 1e-4,1e-3,1e-2", param_hint="--lrs")
    return vals


def _g(v: float | None) -> str:
    return "—" if v is None else f"{v:.2g}"


def tuning_table(res) -> str:
    """The search's summary as aligned text: best rate, its metric, what the search cost."""
    m = res.metric_name
    held = any(t.heldout is not None for t in res.tunings)
    at = f"val {m} at best" + (" (best epoch)" if res.settings.get("select") == "best" else "")
    head = ["optimizer", "rates tried", "best lr", at, *(["held out"] if held else []), "runs", "epochs",
            "train time", "diverged"]
    rows = []
    for t in res.tunings:
        score = "all diverged" if t.best_lr is None else f"{t.best_mean:.3f} ± {t.best_std:.3f}"
        div = sum(1 for v in t.diverged.values() if v)
        extra = ["—" if t.heldout is None else f"{t.heldout:.3f}"] if held else []
        rows.append([t.label, f"{len(t.lrs)}: {_g(min(t.lrs))} … {_g(max(t.lrs))}", _g(t.best_lr), score, *extra,
                     str(t.runs), str(t.epochs), f"{t.seconds:.1f} s", f"{div}/{len(t.lrs)} rates"])
    w = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip()  # noqa: E731
    out = [line(head), line(["-" * x for x in w]), *map(line, rows), ""]
    for t in res.tunings:
        cells = []
        for lr in t.lrs:
            s = t.scores.get(lr, math.nan)
            v = "div" if s == -math.inf else f"{res.as_metric(s):.3f}"
            mark = "*" if lr == t.best_lr else ""
            budget = "" if t.search == "grid" else f"@{t.budget[lr]}"
            cells.append(f"{_g(lr)}{budget}: {v}{mark}")
        out.append(f"{t.label}: " + "  ".join(cells))
    if held:
        out += ["", f"held out: the {m} with the rate chosen on one half of the validation rows and measured on the "
                    "other, both ways round (the best rate's own score is judged on the rows that chose it)"]
    return "\n".join(out)


@click.command("tune", epilog="\n\n".join([optimizers_help(), tasks_help()]))
@data_options
@model_options
@click.option("--optimizers", default="gd,momentum,adagrad,rmsprop,adam", show_default=True,
              help="Comma-separated descend optimizer names.")
@click.option("--search", type=click.Choice(["grid", "halving"]), default="grid", show_default=True,
              help="grid: every rate for the full run; halving: successive halving (the best 1/RATE go on with RATE× the epochs).")
@click.option("--points", type=click.IntRange(min=2), default=8, show_default=True,
              help="Rates per optimizer: half a decade apart around its default lr (default/100 … default×10^1.5), or over --lrs LO:HI.")
@click.option("--lrs", default=None, metavar="LO:HI|A,B,...", help="The rates to try, the same for every optimizer.")
@click.option("--rate", type=click.IntRange(min=2), default=2, show_default=True, help="Successive halving's η.")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Seeds per rate (0..K-1); a rate's score is the mean final validation metric over them.")
@click.option("--select", type=click.Choice(["final", "best"]), default="final", show_default=True,
              help="A run's score: final: its metric after the last epoch; best: after its best epoch (the rate to "
                   "pick if you stop early on the validation rows; optimistic, as that epoch is chosen on them).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--set", "sets", multiple=True, metavar="OPT.HP=VALUE",
              help="Another hyperparameter, e.g. --set momentum.momentum=0.95; OPT.lr / lr sets the grid's centre.")
@schedule_option("the whole run", "warmup_cosine:warmup_steps=50")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run the trials in this many local processes (one torch thread each).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run the trials on Ray: a local instance (or RAY_ADDRESS) with no value, or the cluster at ADDRESS "
                   "(e.g. auto, ray://host:10001). Needs pip install 'descend[ray]'.")
@click.option("--out", "out_file", default=None, type=click.Path(dir_okay=False),
              help="Write one row per trial (optimizer, lr, seed, epochs, val_metric, diverged, seconds) to this CSV.")
@click.option("--plot", "plot_file", default=None, type=click.Path(dir_okay=False),
              help="Draw the validation metric against the learning rate, one line per optimizer, the chosen rate "
                   "starred, to this figure (.png, .pdf, .svg, .jpg).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def tune_command(task, data_file, target, kind, val_fraction, subsample, features, drop, model, hidden, optimizers, search, points, lrs,
                 rate, epochs, seeds, select, batch_size, sets, schedule, jobs, ray_address, out_file, plot_file, progress):
    """Search each optimizer's learning rate on the validation split; print the best and what it cost.

    \b
    Examples:
      descend tune
      descend tune --task mnist1d --model cnn1d --optimizers adam,momentum --jobs 2
      descend tune --task diabetes --search halving --epochs 40 --seeds 3
      descend tune --task diabetes --epochs 40 --select best
      descend tune --data my.csv --target label --lrs 1e-5:1e-1 --points 9 --ray
      descend tune --task wine --seeds 3 --plot tune.png
    """
    from descend.lab import tune as U

    names = optimizer_names(optimizers)
    per = parse_sets(sets, names)
    widths = parse_hidden(hidden)
    tried = parse_lrs(lrs, points)
    if out_file:
        check_out_file(out_file, suffixes=(".csv",))
    if plot_file:
        check_out_file(plot_file, option="--plot", suffixes=FIGURE_SUFFIXES)  # before any training
    if ray_address is not None and importlib.util.find_spec("ray") is None:
        raise click.UsageError("--ray needs Ray: pip install 'descend[ray]'")
    if ray_address is not None and jobs != 1:
        raise click.UsageError("give --jobs or --ray, not both (Ray schedules the trials on its own CPUs)")
    data = load_data(task, data_file, target, kind, val_fraction, subsample, features, drop)
    click.echo(f"{data.describe()}; model {model}; {len(names)} optimizer(s), {search} search, "
               f"{seeds} seed(s) × {epochs} epoch(s)", err=True)
    t0 = time.perf_counter()
    try:
        problem = U.problem_from_data(data, model, widths, batch_size)
        res = U.tune(problem, names, search=search, lrs=tried, points=points, seeds=seeds, epochs=epochs,
                     hyperparameters=per, schedule=schedule, rate=rate, jobs=jobs,
                     ray=ray_address, progress=progress, select=select)
    except (ValueError, TypeError) as e:  # bad hyperparameters, schedule or backend: found before any training
        raise click.ClickException(str(e)) from None
    wall = time.perf_counter() - t0
    click.echo("")
    click.echo(tuning_table(res))
    runs = sum(t.runs for t in res.tunings)
    ep = sum(t.epochs for t in res.tunings)
    click.echo(f"\n{runs} runs, {ep} epochs, {sum(t.seconds for t in res.tunings):.1f} s of training "
               f"({res.backend}; {wall:.1f} s wall). * best on validation; 'div': a seed diverged.")
    if out_file:
        rows = res.rows()
        with open(out_file, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        click.echo(f"wrote {out_file}", err=True)
    if plot_file:
        write_figure(plot_file, res.plot)
        click.echo(f"wrote {plot_file}", err=True)
