"""``descend race``: race optimizers on a test problem, print a table, draw the race (PNG or GIF).

Only click and the light problem list are imported here; torch work and matplotlib load inside the
command, so ``descend --help`` stays quick.
"""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any

import click

import descend
from descend.cli.options import (LearningRate, check_out_file, hyperparameters_from_sets, optimizers_help, save_figure,
                                 schedule_option, schedules_help)
from descend.lab.problems import problems

__all__ = ["race_command"]

def _parse_start(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers (e.g. -1.5,2)",
                                 param_hint="'--start'") from None


def _fmt(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.4g}"


def _fmt_hp(hp: dict[str, Any]) -> str:
    def one(v):
        return ",".join(f"{x:g}" for x in v) if isinstance(v, tuple) else (f"{v:g}" if isinstance(v, float) else str(v))
    return " ".join(f"{k}={one(v)}" for k, v in hp.items()) or "(defaults)"


@click.command("race", context_settings={"help_option_names": ["-h", "--help"]},
               epilog="\n\n".join([optimizers_help(lab_defaults=False), schedules_help()]))
@click.option("--function", "function", type=click.Choice(problems(), case_sensitive=False),
              default="rosenbrock", show_default=True, help="The test problem.")
@click.option("--optimizers", default="gd,momentum,adagrad,adam", show_default=True,
              help=f"Comma-separated optimizer names, from: {', '.join(descend.available())}.")
@click.option("--steps", type=click.IntRange(min=0), default=300, show_default=True, help="Steps per optimizer.")
@click.option("--start", default=None, metavar="X,Y",
              help="Start point, comma-separated (e.g. -1.5,2; one number for double_well). "
                   "Default: the problem's usual start.")
@click.option("--lr", type=LearningRate(), default=None,
              help="Learning rate η for every optimizer, or auto (estimated during the run: lr=\"auto\"). Default: a "
                   "per-problem η for the plain-gradient family (gd, momentum, nesterov, sgd) and one for the adaptive family.")
@click.option("--set", "assignments", multiple=True, metavar="[OPT.]KEY=VALUE",
              help="A hyperparameter for one optimizer (momentum.lr=0.002, adam.betas=0.9,0.99, "
                   "adagrad.eps_in_sqrt=false) or, without OPT., for all. Repeatable; "
                   "OPT.KEY beats KEY beats --lr.")
@schedule_option("the run's --steps", "warmup_cosine:warmup_steps=20")
@click.option("--tol", type=click.FloatRange(min=0.0, min_open=True), default=1e-3, show_default=True,
              help="The table's last column counts steps until f(θ) − f* ≤ TOL.")
@click.option("--frames", type=click.IntRange(min=1), default=60, show_default=True,
              help="GIF only: the most frames (the steps are sampled evenly onto them).")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), default="race.png", show_default=True,
              help="The picture: .png (paths and f − f* over steps) or .gif (the race, animated).")
def race_command(function: str, optimizers: str, steps: int, start: str | None, lr: float | None,
                 assignments: tuple[str, ...], schedule: str | None, tol: float, frames: int, out: str) -> None:
    """Race optimizers on a test problem with a known minimum.

    Prints, per optimizer: the hyperparameters used, the final loss f(θ), the distance to the
    nearest global minimum and the steps until f(θ) − f* ≤ TOL; a run whose loss turns NaN/inf is
    marked diverged. Writes the race to --out.

    \b
    Examples:
      descend race --function rosenbrock --optimizers gd,momentum,adagrad,adam \\
          --steps 300 --start -1.5,2 --lr 1e-3 --set adam.lr=0.1 --out race.png
      descend race --function double_well --start 2 --schedule warmup_cosine:warmup_steps=20
    """
    names = [n.strip().lower() for n in optimizers.split(",") if n.strip()]
    valid = descend.available()
    bad = [n for n in names if n not in valid]
    if not names or bad:
        raise click.BadParameter(f"unknown optimizer(s) {', '.join(bad) or '(none given)'}; "
                                 f"valid names: {', '.join(valid)}", param_hint="'--optimizers'")
    if len(set(names)) != len(names):
        raise click.BadParameter(f"{optimizers!r} names an optimizer twice", param_hint="'--optimizers'")
    check_out_file(out, "'--out'", (".png", ".gif"))  # before any work: a bad --out must cost nothing
    suffix = out.lower().rsplit(".", 1)[-1]

    per_opt = hyperparameters_from_sets(assignments, names)

    from descend.lab.problems import problem
    from descend.lab.trajectory import trajectory

    prob = problem(function)
    x0 = _parse_start(start)
    if x0 is not None and len(x0) != prob.dim:
        raise click.BadParameter(f"{start!r} has {len(x0)} coordinate(s); {prob.name} needs {prob.dim}",
                                 param_hint="'--start'")

    runs = []
    for n in names:
        hp = {**prob.default_hyperparameters(n), **({"lr": lr} if lr is not None else {}), **per_opt[n]}
        if schedule is not None:
            from descend.lab.train import scheduled_lr

            try:  # the same NAME:K=V parsing as compare's --schedule, peaking at this optimizer's lr (lr=auto: its shape)
                hp["lr"] = scheduled_lr(schedule, hp["lr"], steps)
            except ValueError as e:
                raise click.BadParameter(str(e), param_hint="'--schedule'") from None
        try:
            runs.append(trajectory(prob, n, steps, start=x0, **hp))
        except TypeError as e:  # an unknown keyword: say which ones this optimizer takes
            takes = [k for k in inspect.signature(descend.optimizers.REGISTRY[n]).parameters if k != "params"]
            raise click.ClickException(f"{n}: {e}; {n} takes {', '.join(takes)}") from None
        except ValueError as e:
            raise click.ClickException(f"{n}: {e}") from None

    shown = ", ".join(f"{v:g}" for v in (x0 or prob.start))
    mins = "; ".join("(" + ", ".join(f"{v:.4g}" for v in m) + ")" for m in prob.minima)
    click.echo(f"{prob.name}: f = {prob.formula}; start ({shown}); {steps} steps; f* = {prob.min_value:.6g} at {mins}")
    rows = [("optimizer", "hyperparameters", "final f", "distance to min", f"steps to f*+{tol:g}")]
    for t in runs:
        final = f"diverged at step {len(t.losses) - 1}" if t.diverged else _fmt(t.final_loss)
        dist = "—" if t.diverged else _fmt(t.distance_to_minimum())
        hit = t.steps_to(tol)
        rows.append((t.label, _fmt_hp(t.hyperparameters), final, dist, "not reached" if hit is None else str(hit)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        click.echo("  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))).rstrip())
        if i == 0:
            click.echo("  ".join("-" * w for w in widths))

    from descend.lab.plots import race_figure, race_gif

    try:
        if suffix == "gif":
            tmp = os.path.join(os.path.dirname(os.path.abspath(out)), f".{os.path.basename(out)}.writing.gif")
            try:  # whole or not at all, like the PNG
                with click.progressbar(length=1, label="rendering the GIF", file=sys.stderr) as bar:
                    def step(done: int, total: int) -> None:
                        bar.length = total
                        bar.update(done - bar.pos)
                    race_gif(prob, runs, tmp, frames=frames, progress=step)
                os.replace(tmp, out)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            save_figure(race_figure(prob, runs), out, dpi=110)
    except OSError as e:
        raise click.ClickException(f"cannot write {out}: {e.strerror or e}") from None
    click.echo(f"wrote {out}")
