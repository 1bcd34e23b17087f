"""The options and parsing the ``descend`` commands share: data selection, optimizer names, ``--set``,
``--hidden``, schedules (:func:`descend.lab.options.schedule_option`), and the command line for the report."""

from __future__ import annotations

import shlex
import sys
from typing import Any

import click

from descend.lab.options import hyperparameters_from_sets, parse_value, schedule_option  # noqa: F401  (re-exported)

__all__ = ["data_options", "model_options", "load_data", "parse_sets", "optimizer_names", "parse_hidden", "command_line", "batch_stream",
           "parse_value", "schedule_option", "hyperparameters_from_sets"]

def data_options(f):
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
                     help="A bundled set: digits (default), iris, wine, breast_cancer, diabetes (scikit-learn), mnist1d (the mnist1d package).")(f)
    return f


def model_options(f):
    """``--model mlp|cnn1d`` and ``--hidden`` (the MLP's hidden widths, or the CNN's channels)."""
    f = click.option("--hidden", default=None, metavar="W1,W2,...",
                     help="Hidden layer widths of the MLP (default 64), or the 1-D CNN's channels per conv layer "
                          "(default 32,32,32).")(f)
    f = click.option("--model", type=click.Choice(["mlp", "cnn1d"]), default="mlp", show_default=True,
                     help="The model: an MLP, or a small 1-D CNN reading the features as a signal (for mnist1d).")(f)
    return f


def load_data(task, data_file, target, kind, val_fraction, subsample):
    from descend.lab.data import DataError, load

    if task is not None and data_file is not None:
        raise click.UsageError("give either --task or --data, not both")
    try:
        return load(task or "digits", data_file, target, kind=kind, val_fraction=val_fraction, subsample=subsample)
    except DataError as e:
        raise click.ClickException(str(e)) from None


def parse_sets(items: tuple[str, ...], names: list[str]) -> dict[str, dict[str, Any]]:
    """``("adam.lr=3e-4", "momentum=0.95")`` → per-optimizer values (see :mod:`descend.lab.options`)."""
    hp = hyperparameters_from_sets(items, names, hint="--set")
    return {n: v for n, v in hp.items() if v}


def optimizer_names(text: str) -> list[str]:
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


def parse_hidden(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None  # the model's default
    try:
        widths = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        widths = (0,)
    if not widths or min(widths) < 1:
        raise click.BadParameter(f"{text!r}: expected comma-separated layer widths >= 1, e.g. 64 or 128,64",
                                 param_hint="--hidden")
    return widths


def command_line() -> str:
    return "descend " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def batch_stream(n: int, batch_size: int, seed: int):
    """Endless mini-batch indices: seeded permutations of 0..n-1, one after another."""
    import torch

    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            yield perm[i:i + batch_size]
