"""``descend schedule NAME --param value ...``: print and plot a schedule from the shell.

Kept apart from :mod:`descend.schedules` so the core imports no CLI library.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from descend.cli.options import FIGURE_SUFFIXES, check_out_file
from descend.schedules import REGISTRY, _landmarks, _length, plot

# the schedules the shell can build (join needs other schedules as arguments)
_CLI_NAMES = [k for k, c in REGISTRY.items() if dataclasses.is_dataclass(c) and k != "join"]


def _cli_value(field: dataclasses.Field, raw: str | None) -> Any:
    """Convert one command-line value by the dataclass field's annotation."""
    kind = str(field.type)
    try:
        if kind == "bool":
            if raw is None:
                return True
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if raw is None:
            raise click.UsageError(f"--{field.name.replace('_', '-')} needs a value")
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind.startswith("tuple"):
            return tuple(int(x) for x in raw.split(",") if x.strip())
        return raw
    except ValueError:
        expected = {"int": "an integer", "float": "a number", "bool": "true or false"}.get(
            kind, "comma-separated integers")
        raise click.BadParameter(f"expected {expected}, got {raw!r}",
                                 param_hint=f"--{field.name.replace('_', '-')}") from None


def _cli_params(name: str, args: list[str]) -> dict[str, Any]:
    """``--key value`` / ``--key=value`` / a bare ``--flag`` pairs → the schedule's keyword arguments."""
    fields = {f.name: f for f in dataclasses.fields(REGISTRY[name])}
    shown = ", ".join("--" + f.replace("_", "-") for f in fields)
    params: dict[str, Any] = {}
    i = 0
    while i < len(args):
        tok = args[i]
        if not tok.startswith("--"):
            raise click.UsageError(f"unexpected argument {tok!r}; {name} takes {shown}")
        key, eq, raw = tok[2:].partition("=")
        key = key.replace("-", "_")
        if key not in fields:
            raise click.UsageError(f"{name} has no parameter --{key.replace('_', '-')}; it takes {shown}")
        if not eq:
            nxt = args[i + 1] if i + 1 < len(args) else None
            takes_value = str(fields[key].type) != "bool" or (nxt is not None and nxt.lower() in (
                "1", "0", "true", "false", "yes", "no", "on", "off"))
            if takes_value and nxt is not None and not (nxt.startswith("--") and not _is_number(nxt)):
                raw, i = nxt, i + 1
            else:
                raw = None
        params[key] = _cli_value(fields[key], raw)
        i += 1
    missing = [f.name for f in fields.values()
               if f.name not in params and f.default is dataclasses.MISSING]
    if missing:
        raise click.UsageError(f"{name} needs " + ", ".join("--" + m.replace("_", "-") for m in missing))
    return params


def _parameters_help() -> str:
    """A help paragraph: every schedule NAME with its parameters (needed ones bare, others with defaults)."""
    width = max(map(len, _CLI_NAMES))
    lines = ["\b", "Schedules and their parameters (--name value; those without a default are needed):"]
    for name in _CLI_NAMES:
        parts = []
        for f in dataclasses.fields(REGISTRY[name]):
            flag = "--" + f.name.replace("_", "-")
            if f.default is dataclasses.MISSING:
                parts.append(flag)
            else:
                d = f.default
                shown = f"{d:g}" if isinstance(d, float) else str(d).lower() if isinstance(d, bool) else str(d)
                parts.append(f"{flag} {shown}")
        lines.append(f"  {name:<{width}}  {', '.join(parts)}")
    return "\n".join(lines)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


@click.command("schedule", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                             "help_option_names": ["-h", "--help"]}, epilog=_parameters_help())
@click.argument("name", metavar="NAME")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Steps to show (default: the schedule's own length where it has one).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the plot here (.png).")
@click.option("--samples", type=click.IntRange(min=2), default=9, show_default=True,
              help="How many evenly spaced values to print.")
@click.option("--logy", is_flag=True, help="Logarithmic value axis.")
@click.pass_context
def schedule_command(ctx: click.Context, name: str, steps: int | None, out: str | None, samples: int,
                     logy: bool) -> None:
    """Print sample values of a learning-rate schedule and plot it.

    NAME is one of the schedules listed below; its parameters follow as --param value (dashes or
    underscores; milestones as 30,60,90). join and reduce_on_plateau need other schedules or a
    metric, so they are built in Python (descend.schedules).

    Example: descend schedule wsd --peak 1e-3 --warmup-steps 100 --stable-steps 600
    --decay-steps 300 --decay sqrt --out wsd.png
    """
    if out is not None:
        check_out_file(out, suffixes=FIGURE_SUFFIXES)
    key = name.lower().replace("-", "_")
    if key not in _CLI_NAMES:
        raise click.BadParameter(f"unknown schedule {name!r}; valid names: {', '.join(_CLI_NAMES)}",
                                 param_hint="NAME")
    params = _cli_params(key, list(ctx.args))
    try:
        sched = REGISTRY[key](**params)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    if steps is None:
        steps = _length(sched)
        if steps is None:
            raise click.UsageError(f"{key} has no natural length; give --steps N")
    click.echo(repr(sched))
    marks = {round(i * (steps - 1) / (samples - 1)) for i in range(samples)}
    marks = sorted(marks | {t for t in _landmarks(sched) if 0 <= t < steps})
    width = len(str(steps - 1))
    for t in marks:
        click.echo(f"  step {t:>{width}}  {sched(t):.10g}")
    if out is not None:
        try:
            plot(sched, steps, out=out, logy=logy)
        except (OSError, ValueError) as e:
            raise click.ClickException(f"could not write {out}: {e}") from None
        click.echo(f"wrote {out}")
