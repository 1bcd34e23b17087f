"""``descend compare``: train the same model with several optimizers on real data and write a report."""

from __future__ import annotations

import time

import click

from descend.cli.options import (LearningRate, check_out_dir, command_line, data_options, load_data, model_options,
                                 optimizer_names, optimizers_help, parse_hidden, parse_sets, schedule_option,
                                 schedules_help, tasks_help)

__all__ = ["compare_command"]



@click.command("compare", epilog="\n\n".join([optimizers_help(), tasks_help(), schedules_help()]))
@data_options
@model_options
@click.option("--optimizers", default="gd,momentum,adagrad,rmsprop,adam", show_default=True,
              help="Comma-separated optimizer names (listed below with their hyperparameters).")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True,
              help="Passes over the training rows per run (epoch 0, the untrained model, is measured too).")
@click.option("--seeds", type=click.IntRange(min=1), default=5, show_default=True,
              help="Number of seeds (0..K-1); each seed: one initialisation and batch order shared by all optimizers.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Rows per mini-batch (one optimizer step each).")
@click.option("--lr", type=LearningRate(), default=None,
              help="Learning rate for every optimizer (replaces the defaults); auto: each estimates its own during "
                   "training (lr=\"auto\"; or per optimizer, --set adam.lr=auto).")
@click.option("--set", "sets", multiple=True, metavar="OPT.HP=VALUE",
              help="A hyperparameter of one optimizer, e.g. --set adam.lr=3e-4 --set adam.betas=0.9,0.99 "
                   "--set momentum.momentum=0.95, or of all without the prefix (--set weight_decay=1e-4); "
                   "repeatable; OPT.KEY wins over KEY, which wins over --lr.")
@schedule_option("the whole run", "warmup_cosine:warmup_steps=50")
@click.option("--goal", type=float, default=None,
              help="Validation metric for 'epochs to goal': an accuracy in (0, 1] or an R² <= 1 "
                   "(default: 98% of the best 'best val' in the table).")
@click.option("--out", "out_dir", default="descend-report", show_default=True, type=click.Path(file_okay=False),
              help="Folder for report.html, metrics.csv and the figures.")
@click.option("--tuned", is_flag=True, default=False,
              help="Compare each optimizer at its tuned lr (an 8-point grid around its default, on seed 0's "
                   "validation split: `descend tune`) beside the same rule with lr=auto from one run; the table "
                   "adds what each rate cost to find. With --schedule the search tunes its peak and lr=auto takes its shape.")
@click.option("--select", type=click.Choice(["final", "best"]), default=None,
              help="With --tuned: pick each rate by its runs' metric after the last epoch (final, the default) or "
                   "after their best epoch (best: the rate to train at when stopping early on the validation rows; "
                   "lr=auto is then compared by its best epoch too).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --tuned: run the search's trials in this many local processes.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def compare_command(task, data_file, target, kind, val_fraction, subsample, features, drop, model, optimizers, epochs, seeds,
                    batch_size, hidden, lr, sets, schedule, goal, out_dir, tuned, select, jobs, progress):
    """Train the same MLP with several optimizers on a real data set and write a report.

    Every optimizer starts, per seed, from the same weights and sees the same mini-batches. Prints a
    results table and writes OUT/report.html (self-contained), OUT/metrics.csv (one row per optimizer,
    seed and epoch: optimizer, seed, epoch, train_loss, val_loss, val_metric, lr, seconds) and the
    figures val_metric.png, train_loss.png, lr.png (the learning rate in use per epoch), compare.png.

    \b
    Examples:
      descend compare
      descend compare --task diabetes --epochs 40
      descend compare --data my.csv --target label --optimizers adam,rmsprop --set adam.lr=3e-4
      descend compare --schedule warmup_cosine:warmup_steps=50 --seeds 5
      descend compare --tuned --optimizers adam,momentum
      descend compare --tuned --task diabetes --epochs 40 --select best
    """
    from descend.lab import report, train

    if select is not None and not tuned:
        raise click.BadParameter("--select chooses how --tuned picks each rate; give --tuned with it",
                                 param_hint="--select")
    names = optimizer_names(optimizers)
    per = parse_sets(sets, names)
    if tuned and (lr == "auto" or any(v.get("lr") == "auto" for v in per.values())):
        raise click.BadParameter("--tuned searches each optimizer's rate and runs lr=auto beside it (the rows "
                                 "'NAME (lr=auto)'); give --lr or --set OPT.lr a number (the grid's centre), or drop it",
                                 param_hint="--lr" if lr == "auto" else "--set")
    widths = parse_hidden(hidden) or train.DEFAULT_HIDDEN[model]
    check_out_dir(out_dir)  # before any training: a bad --out must cost nothing
    data = load_data(task, data_file, target, kind, val_fraction, subsample, features, drop)
    try:
        train.check_memory(data, widths, batch_size, model)
    except ValueError as e:
        raise click.BadParameter(str(e).replace("hidden widths", "--hidden widths"), param_hint="--hidden") from None
    click.echo(f"{data.describe()}; {len(names)} optimizer(s) × {seeds} seed(s) × {epochs} epoch(s)", err=True)
    t0 = time.perf_counter()
    interrupted = None
    try:
        if tuned:
            from descend.lab import tune

            centre = {n: ({"lr": lr} if lr is not None else {}) | per.get(n, {}) for n in names}
            comp = tune.compare_tuned(data, names, seeds=seeds, epochs=epochs, batch_size=batch_size, model=model,
                                      hidden=widths, hyperparameters={n: v for n, v in centre.items() if v},
                                      jobs=jobs, goal=goal, progress=progress, schedule=schedule,
                                      select=select or "final")
        else:
            comp = train.compare(data, names, hyperparameters=per, lr=lr, seeds=seeds, epochs=epochs,
                                 batch_size=batch_size, hidden=widths, schedule=schedule, goal=goal,
                                 progress=progress, model=model)
    except train.Interrupted as e:  # Ctrl-C: keep the finished runs
        if e.comparison is None:
            raise Stopped("interrupted before any run finished; nothing written") from None
        comp, interrupted = e.comparison, e
    except (ValueError, TypeError) as e:  # a bad hyperparameter or schedule, found before any training
        raise click.ClickException(str(e)) from None
    paths = report.write_report(comp, out_dir, command=command_line())
    click.echo("")
    click.echo(report.table_text(comp))
    click.echo("")
    for sentence in report.reading(comp):
        click.echo(sentence)
    if interrupted is not None:
        raise Stopped(f"interrupted: wrote the {interrupted.done} finished runs of {interrupted.planned} "
                      f"to {out_dir} (marked partial)")
    click.echo(f"\nwrote {paths['report.html']}, {paths['metrics.csv']} and figures "
               f"({time.perf_counter() - t0:.1f} s)")


class Stopped(click.ClickException):
    """Ctrl-C: one ``Error:`` line and exit status 130 (128 + SIGINT), as a shell reports an interrupted command."""

    exit_code = 130
