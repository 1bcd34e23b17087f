"""``descend compare`` and ``descend lr-find``: training comparisons on real data, and the LR range test.

User errors become one line and a non-zero exit (click exceptions); heavy modules load inside the commands.
"""

from __future__ import annotations

import shlex
import sys
import time
from typing import Any

import click

from descend.lab.options import hyperparameters_from_sets, parse_value, schedule_option

__all__ = ["compare_command", "lr_find_command"]


# ------------------------------------------------------------------------------- shared options


def _data_options(f):
    f = click.option("--subsample", type=click.IntRange(min=4), default=None,
                     help="Use only this many rows (a seeded random choice), for quick runs.")(f)
    f = click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2,
                     show_default=True, help="Share of rows held out for validation (fixed split).")(f)
    f = click.option("--kind", type=click.Choice(["classification", "regression"]), default=None,
                     help="Override detection (integer-like target with few classes → classification).")(f)
    f = click.option("--target", metavar="COLUMN", default=None, help="The target column of a CSV given with --data.")(f)
    f = click.option("--data", "data_file", metavar="FILE", default=None,
                     help="Your data: a .csv with a header row (and --target COLUMN) or an .npz with arrays X and y.")(f)
    f = click.option("--task", default=None, metavar="NAME",
                     help="A bundled scikit-learn set: digits (default), iris, wine, breast_cancer, diabetes.")(f)
    return f


def _load_data(task, data_file, target, kind, val_fraction, subsample):
    from descend.lab.data import DataError, load

    if task is not None and data_file is not None:
        raise click.UsageError("give either --task or --data, not both")
    try:
        return load(task or "digits", data_file, target, kind=kind, val_fraction=val_fraction, subsample=subsample)
    except DataError as e:
        raise click.ClickException(str(e)) from None


def _parse_sets(items: tuple[str, ...], names: list[str]) -> dict[str, dict[str, Any]]:
    """``("adam.lr=3e-4", "momentum=0.95")`` → per-optimizer values (see :mod:`descend.lab.options`)."""
    hp = hyperparameters_from_sets(items, names, hint="--set")
    return {n: v for n, v in hp.items() if v}


def _names(text: str) -> list[str]:
    import descend

    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise click.BadParameter(f"no optimizer named; valid names: {', '.join(descend.available())}",
                                 param_hint="--optimizers")
    bad = [n for n in names if n not in descend.available()]
    if bad:
        raise click.BadParameter(f"unknown optimizer {bad[0]!r}; valid names: {', '.join(descend.available())}",
                                 param_hint="--optimizers")
    if len(set(names)) != len(names):
        raise click.BadParameter(f"{text!r} names an optimizer twice", param_hint="--optimizers")
    return names


def _hidden(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        widths = (0,)
    if not widths or min(widths) < 1:
        raise click.BadParameter(f"{text!r}: expected comma-separated layer widths >= 1, e.g. 64 or 128,64",
                                 param_hint="--hidden")
    return widths


# ------------------------------------------------------------------------------- compare


@click.command("compare")
@_data_options
@click.option("--optimizers", default="gd,momentum,adagrad,rmsprop,adam", show_default=True,
              help="Comma-separated descend optimizer names (see `python -c 'import descend; print(descend.available())'`).")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--seeds", type=click.IntRange(min=1), default=5, show_default=True,
              help="Number of seeds (0..K-1); each seed: one initialisation and batch order shared by all optimizers.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--hidden", default="64", show_default=True, help="Hidden layer widths of the MLP, e.g. 128,64.")
@click.option("--lr", type=float, default=None, help="Learning rate for every optimizer (replaces the defaults).")
@click.option("--set", "sets", multiple=True, metavar="OPT.HP=VALUE",
              help="A hyperparameter of one optimizer, e.g. --set adam.lr=3e-4 --set adam.betas=0.9,0.99 "
                   "--set momentum.momentum=0.95, or of all without the prefix (--set weight_decay=1e-4); "
                   "repeatable; OPT.KEY wins over KEY, which wins over --lr.")
@schedule_option("the whole run", "warmup_cosine:warmup_steps=50")
@click.option("--goal", type=float, default=None,
              help="Validation metric for 'epochs to goal' (default: 98% of the best value any run reached).")
@click.option("--out", "out_dir", default="descend-report", show_default=True, type=click.Path(file_okay=False),
              help="Folder for report.html, metrics.csv and the figures.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def compare_command(task, data_file, target, kind, val_fraction, subsample, optimizers, epochs, seeds, batch_size,
                    hidden, lr, sets, schedule, goal, out_dir, progress):
    """Train the same MLP with several optimizers on a real data set and write a report.

    Every optimizer starts, per seed, from the same weights and sees the same mini-batches. Prints a
    results table and writes OUT/report.html (self-contained), OUT/metrics.csv (one row per optimizer,
    seed and epoch: optimizer, seed, epoch, train_loss, val_loss, val_metric, lr, seconds) and the
    figures val_metric.png, train_loss.png, compare.png.

    \b
    Examples:
      descend compare
      descend compare --task diabetes --epochs 40
      descend compare --data my.csv --target label --optimizers adam,rmsprop --set adam.lr=3e-4
      descend compare --schedule warmup_cosine:warmup_steps=50 --seeds 5
    """
    from descend.lab import report, train

    names = _names(optimizers)
    per = _parse_sets(sets, names)
    widths = _hidden(hidden)
    data = _load_data(task, data_file, target, kind, val_fraction, subsample)
    click.echo(f"{data.describe()}; {len(names)} optimizer(s) × {seeds} seed(s) × {epochs} epoch(s)", err=True)
    t0 = time.perf_counter()
    try:
        comp = train.compare(data, names, hyperparameters=per, lr=lr, seeds=seeds, epochs=epochs,
                             batch_size=batch_size, hidden=widths, schedule=schedule, goal=goal, progress=progress)
    except (ValueError, TypeError) as e:  # a bad hyperparameter or schedule, found before any training
        raise click.ClickException(str(e)) from None
    paths = report.write_report(comp, out_dir, command=_command_line())
    click.echo("")
    click.echo(report.table_text(comp))
    click.echo("")
    for sentence in report.reading(comp):
        click.echo(sentence)
    click.echo(f"\nwrote {paths['report.html']}, {paths['metrics.csv']} and figures "
               f"({time.perf_counter() - t0:.1f} s)")


def _command_line() -> str:
    return "descend " + " ".join(shlex.quote(a) for a in sys.argv[1:])


# ------------------------------------------------------------------------------- lr-find


@click.command("lr-find")
@_data_options
@click.option("--optimizer", default="adam", show_default=True, help="A descend optimizer name.")
@click.option("--set", "sets", multiple=True, metavar="HP=VALUE",
              help="Another hyperparameter of the optimizer, e.g. --set momentum=0.95 (repeatable).")
@click.option("--start-lr", type=click.FloatRange(min=0, min_open=True), default=1e-7, show_default=True)
@click.option("--end-lr", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True)
@click.option("--num-steps", type=click.IntRange(min=2), default=100, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--hidden", default="64", show_default=True, help="Hidden layer widths of the MLP.")
@click.option("--rule", type=click.Choice(["min10", "steepest"]), default="min10", show_default=True,
              help="min10: the lr at the smoothed loss's minimum ÷ 10; steepest: where it falls fastest.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_file", default=None, type=click.Path(dir_okay=False),
              help="Save the loss-vs-lr plot here (.png).")
def lr_find_command(task, data_file, target, kind, val_fraction, subsample, optimizer, sets, start_lr, end_lr,
                    num_steps, batch_size, hidden, rule, seed, out_file):
    """The learning-rate range test: print the suggested lr for OPTIMIZER on a task, plot the sweep.

    Trains the lab's MLP for up to NUM_STEPS mini-batches while the lr grows exponentially from
    START_LR to END_LR, smooths the loss and suggests an lr (see descend.lr_find).

    \b
    Example:
      descend lr-find --task digits --optimizer adam --out lr.png
    """
    import torch

    import descend
    from descend.lab import train

    if end_lr <= start_lr:
        raise click.BadParameter(f"{end_lr} must be larger than --start-lr {start_lr}", param_hint="--end-lr")
    name = _names(optimizer)[0] if "," not in optimizer else None
    if name is None:
        raise click.BadParameter("give one optimizer", param_hint="--optimizer")
    hp = {}
    for item in sets:
        k, eq, v = item.partition("=")
        if not eq or not k.strip():
            raise click.BadParameter(f"{item!r}: expected HYPERPARAMETER=VALUE, e.g. momentum=0.95", param_hint="--set")
        try:
            hp[k.strip()] = parse_value(v)
        except ValueError as e:
            raise click.BadParameter(f"{item!r}: {e}", param_hint="--set") from None
    widths = _hidden(hidden)
    data = _load_data(task, data_file, target, kind, val_fraction, subsample)
    model = train.make_model(data.n_features, data.n_outputs, widths, seed)
    hyper = train.hyperparameters_for(name, hp)
    try:
        opt = descend.create(name, model.parameters(), **hyper)
    except (ValueError, TypeError) as e:
        raise click.ClickException(str(e)) from None
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    batches = _batch_stream(len(x), batch_size, seed)
    loss_of = train._loss_fn(data.kind)

    def loss_fn():
        idx = next(batches)
        return loss_of(model(x[idx]), y[idx])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model: one thread is as fast, and robust on a busy machine
    try:
        res = descend.lr_find(model, opt, loss_fn, start_lr=start_lr, end_lr=end_lr, num_steps=num_steps, rule=rule)
    finally:
        torch.set_num_threads(threads)
    for note in res.notes:
        click.echo(note, err=True)
    if out_file:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = res.plot()
        fig.axes[0].set_title(f"{data.name}, {name}: {res}", fontsize=9)
        fig.savefig(out_file)
        plt.close(fig)
        click.echo(f"wrote {out_file}", err=True)
    if res.suggestion is None:
        raise click.ClickException(f"no suggestion for {name} on {data.name}: " + "; ".join(res.notes))
    click.echo(f"suggested lr for {name} on {data.name}: {res.suggestion:.3g} (rule: {res.rule})")


def _batch_stream(n: int, batch_size: int, seed: int):
    """Endless mini-batch indices: seeded permutations of 0..n-1, one after another."""
    import torch

    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            yield perm[i:i + batch_size]
