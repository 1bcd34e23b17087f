"""The options and parsing the ``descend`` commands share: data selection, optimizer names, ``--set``,
``--hidden``, ``--schedule``, and the command line for the report.

``--set OPT.KEY=VALUE`` sets one optimizer's hyperparameter, ``--set KEY=VALUE`` every optimizer's;
``OPT.KEY`` wins over ``KEY`` whatever the order. A value is ``true``/``false``, an int, a float or a
comma-separated tuple of those (``0.9,0.999``), read by :func:`descend.lab.train.parse_value`, the same
reader the lab's ``NAME:K=V`` schedule specs use; ``lr=auto`` (``--set adam.lr=auto``) asks for the
learning rate estimated during training.

``--schedule NAME[:K=V,...]`` (``compare`` and ``race``) names a schedule of :mod:`descend.schedules`
for every optimizer's lr; :func:`descend.lab.train.make_schedule` builds it.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

import click

from descend.lab.train import parse_value

__all__ = ["data_options", "model_options", "load_data", "parse_sets", "optimizer_names", "parse_hidden", "command_line", "batch_stream",
           "parse_value", "parse_assignment", "schedule_option",
           "hyperparameters_from_sets", "check_out_file", "check_out_dir", "save_figure", "write_figure",
           "FIGURE_SUFFIXES", "LearningRate"]


def _columns(text: str | None) -> list[str] | None:
    return None if text is None else [c.strip() for c in text.split(",") if c.strip()]


def data_options(f):
    f = click.option("--drop", metavar="COL,COL", default=None,
                     help="CSV columns to leave out of the features (e.g. an id column).")(f)
    f = click.option("--features", metavar="COL,COL", default=None,
                     help="The CSV columns to use as features (default: all but the target).")(f)
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
                          "(default 16,16,16).")(f)
    f = click.option("--model", type=click.Choice(["mlp", "cnn1d"]), default="mlp", show_default=True,
                     help="The model: an MLP, or a small 1-D CNN reading the features as a signal (for mnist1d).")(f)
    return f


def load_data(task, data_file, target, kind, val_fraction, subsample, features=None, drop=None):
    from descend.lab.data import DataError, load

    if task is not None and data_file is not None:
        raise click.UsageError("give either --task or --data, not both")
    try:
        return load(task or "digits", data_file, target, kind=kind, val_fraction=val_fraction, subsample=subsample,
                    features=_columns(features), drop=_columns(drop))
    except DataError as e:
        raise click.ClickException(str(e)) from None


def parse_sets(items: tuple[str, ...], names: list[str]) -> dict[str, dict[str, Any]]:
    """``("adam.lr=3e-4", "momentum=0.95")`` → per-optimizer values (see :func:`hyperparameters_from_sets`)."""
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


def parse_assignment(text: str) -> tuple[str | None, str, Any]:
    """``OPTIMIZER.KEY=VALUE`` (one optimizer) or ``KEY=VALUE`` (all) → (optimizer or None, key, value);
    ``lr=auto`` gives the string ``"auto"`` (descend's estimated learning rate)."""
    m = re.fullmatch(r"\s*(?:([A-Za-z_]\w*)\.)?([A-Za-z_]\w*)\s*=\s*(.+)", text)
    if not m:
        raise ValueError(f"{text!r} is not OPTIMIZER.KEY=VALUE or KEY=VALUE")
    opt, key, value = m.groups()
    if key == "lr" and value.strip().lower() == "auto":  # the learning rate estimated during training
        return (opt.lower() if opt else None), key, "auto"
    return (opt.lower() if opt else None), key, parse_value(value)


class LearningRate(click.ParamType):
    """``--lr``: a number, or ``auto`` for the learning rate estimated during training (``lr="auto"``)."""

    name = "LR|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)) or value == "auto":
            return value
        text = str(value).strip()
        if text.lower() == "auto":
            return "auto"
        try:
            return float(text)
        except ValueError:
            self.fail(f"{value!r} is not a number or 'auto'", param, ctx)


def hyperparameters_from_sets(items: Iterable[str], names: list[str], hint: str = "'--set'") -> dict[str, dict]:
    """``--set`` items → {optimizer: {key: value}} for every optimizer in ``names`` (CLI errors as
    click.BadParameter naming the item)."""
    common: dict[str, Any] = {}
    own: dict[str, dict[str, Any]] = {n: {} for n in names}
    for item in items:
        try:
            opt, key, value = parse_assignment(item)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint=hint) from None
        if opt is None:
            common[key] = value
        elif opt not in own:
            raise click.BadParameter(f"{item!r} names {opt!r}, which is not among the optimizers "
                                     f"({', '.join(names)})", param_hint=hint)
        else:
            own[opt][key] = value
    return {n: {**common, **own[n]} for n in names}


def schedule_option(lasting: str, example: str):
    """The ``--schedule`` option: one schedule for every optimizer, peaking at its lr, lasting ``lasting``."""
    return click.option("--schedule", default=None, metavar="NAME[:K=V,...]",
                        help="A learning-rate schedule from descend.schedules for every optimizer, peaking at its "
                             f"lr and lasting {lasting}, e.g. cosine, {example}, one_cycle.")


# ------------------------------------------------------------------------------- output paths, checked first


def check_out_file(path: str, option: str = "--out", suffixes: tuple[str, ...] = ()) -> str:
    """Fail now, as one ``Error:`` line naming ``option``, unless ``path`` can be written as a file: not a
    folder, an allowed suffix, its folder exists and takes a new file (tried with a temporary one)."""
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        raise click.BadParameter(f"{path!r} is a folder; give a file name, e.g. {os.path.join(path, 'plot.png')}",
                                 param_hint=option)
    if suffixes and not path.lower().endswith(suffixes):
        raise click.BadParameter(f"{path!r} must end in {' or '.join(suffixes)}", param_hint=option)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        what = "is a file, not a folder" if os.path.exists(folder) else "does not exist"
        raise click.BadParameter(f"{path!r}: the folder {folder} {what}", param_hint=option)
    try:
        tempfile.TemporaryFile(dir=folder, prefix=".descend-probe-").close()
    except OSError as e:
        raise click.BadParameter(f"{path!r}: cannot write in {folder} ({e.strerror or e})", param_hint=option) from None
    return path


#: picture formats --out takes for a static figure (matplotlib writes each by its suffix)
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def check_out_dir(path: str, option: str = "--out") -> str:
    """:func:`descend.lab.report.check_out_dir` as one ``Error:`` line naming ``option``."""
    from descend.lab.report import check_out_dir as check

    try:
        check(path)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=option) from None
    return path


def write_figure(path: str, draw: Callable[[], Any], **kwargs) -> None:
    """Draw a pyplot figure headless (matplotlib's Agg backend, set before ``draw()`` makes it), save it
    whole or not at all (:func:`save_figure`) and close it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw()
    try:
        save_figure(fig, path, **kwargs)
    finally:
        plt.close(fig)


def save_figure(fig, path: str, **kwargs) -> None:
    """Save a matplotlib figure whole or not at all: into a temporary file beside ``path``, then renamed."""
    folder = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".descend-", suffix=suffix)
    os.close(fd)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)  # as a plainly opened file would be, not mkstemp's 0600
    try:
        fig.savefig(tmp, format=suffix.lstrip(".").lower() or None, **kwargs)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------------------- help: the valid names and what each takes

#: switches every optimizer takes, left out of the per-optimizer lists
_COMMON_SWITCHES = ("maximize", "skip_nonfinite", "partitioned", "fast")


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        return ",".join(_show(x) for x in v)
    return str(v)


def optimizers_help(lab_defaults: bool = True) -> str:
    """A help paragraph: every optimizer name with the hyperparameters it takes and their defaults
    (the lab's table where ``lab_defaults``, else each optimizer's own, lr per problem)."""
    import inspect

    import descend
    from descend.lab.train import DEFAULT_HYPERPARAMETERS

    width = max(map(len, descend.available()))
    lines = ["\b", "Optimizers and their hyperparameters (for --set), with their defaults"
             + (" (the lab's table, else the optimizer's):" if lab_defaults else " (lr: the problem's):")]
    for name in descend.available():
        params = inspect.signature(descend.optimizers.REGISTRY[name]).parameters
        lab = DEFAULT_HYPERPARAMETERS.get(name, {}) if lab_defaults else {"lr": inspect.Parameter.empty}
        parts = []
        for k, p in params.items():
            if k == "params" or k in _COMMON_SWITCHES:
                continue
            v = lab.get(k, p.default)
            parts.append(k if v is inspect.Parameter.empty else f"{k}={_show(v)}")
        lines.append(f"  {name:<{width}}  {', '.join(parts)}")
    lines.append(f"  (every one also takes {', '.join(_COMMON_SWITCHES)}: true/false)")
    return "\n".join(lines)


def tasks_help() -> str:
    """A help paragraph: the bundled tasks by name and kind."""
    from descend.lab.data import TASKS

    return "\n".join(["\b", "Tasks (--task):"] + [f"  {name:<14}{kind}" for name, (_, kind) in TASKS.items()])


def schedules_help() -> str:
    """A help paragraph: every schedule --schedule can name, with what it takes."""
    from descend.lab.train import _NOT_FROM_SPEC, _schedule_registry, schedule_parameters

    names = [n for n in _schedule_registry() if n not in _NOT_FROM_SPEC]
    width = max(map(len, names))
    lines = ["\b", "Schedules (--schedule NAME:K=V,...; the lr and length are filled in):"]
    lines += [f"  {n:<{width}}  {schedule_parameters(n)}" for n in names]
    return "\n".join(lines)
