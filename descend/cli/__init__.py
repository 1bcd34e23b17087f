"""The ``descend`` command line: one module per command (compare, lr-find, race, schedule, tune) beside the
options they share (:mod:`descend.cli.options`). The core never imports this package."""

from __future__ import annotations

import sys

import click

from descend import __version__


class OneLineErrors(click.Group):
    """A group whose user errors print as one ``Error: ...`` line (no usage block, no traceback)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as e:
            click.echo(f"Error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("Error: aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="descend")
def main() -> None:
    """descend: gradient-descent optimizers for PyTorch, and a lab to see what they do."""


# commands (one line each; keep imports light: heavy modules are imported inside the commands)
from descend.cli.schedule import schedule_command  # noqa: E402
main.add_command(schedule_command)
from descend.cli.race import race_command  # noqa: E402
main.add_command(race_command)
from descend.cli.compare import compare_command  # noqa: E402
main.add_command(compare_command)
from descend.cli.lr_find import lr_find_command  # noqa: E402
main.add_command(lr_find_command)
from descend.cli.tune import tune_command  # noqa: E402
main.add_command(tune_command)
