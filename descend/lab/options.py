"""Hyperparameters from the command line, shared by ``descend race``, ``compare`` and ``lr-find``.

``--schedule NAME[:K=V,...]`` (``compare`` and ``race``) names a schedule of :mod:`descend.schedules`
for every optimizer's lr; :func:`descend.lab.train.make_schedule` builds it.

``--set OPT.KEY=VALUE`` sets one optimizer's hyperparameter, ``--set KEY=VALUE`` every optimizer's;
``OPT.KEY`` wins over ``KEY`` whatever the order. A value is ``true``/``false``, an int, a float or a
comma-separated tuple of those (``0.9,0.999``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import click

__all__ = ["parse_value", "parse_assignment", "hyperparameters_from_sets", "schedule_option"]

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse_value(text: str) -> Any:
    """A hyperparameter value from the command line: ``true``/``false``, an int, a float, or a
    comma-separated tuple of those. Raises ValueError otherwise."""
    s = text.strip()
    if s.lower() in ("true", "false"):
        return s.lower() == "true"
    if "," in s:
        return tuple(parse_value(part) for part in s.split(","))
    if re.fullmatch(r"[+-]?\d+", s):
        return int(s)
    if _NUMBER.match(s) or s.lower() in ("inf", "-inf", "nan"):
        return float(s)
    raise ValueError(f"{text!r} is not a number, true/false, or a comma-separated list of those")


def parse_assignment(text: str) -> tuple[str | None, str, Any]:
    """``OPTIMIZER.KEY=VALUE`` (one optimizer) or ``KEY=VALUE`` (all) → (optimizer or None, key, value)."""
    m = re.fullmatch(r"\s*(?:([A-Za-z_]\w*)\.)?([A-Za-z_]\w*)\s*=\s*(.+)", text)
    if not m:
        raise ValueError(f"{text!r} is not OPTIMIZER.KEY=VALUE or KEY=VALUE")
    opt, key, value = m.groups()
    return (opt.lower() if opt else None), key, parse_value(value)


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
