"""The ``descend`` command line: one module per command (compare, lr-find, race, schedule, tune) beside the
options they share (:mod:`descend.cli.options`). The core never imports this package."""

from __future__ import annotations

import contextlib
import sys
import warnings

import click

from descend import __version__


#: what a user can change when memory runs out
_MEMORY_ADVICE = "use smaller --hidden widths, a smaller --batch-size, or fewer rows (--subsample)"


def _out_of_memory(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and any(
        s in text for s in ("can't allocate memory", "cannot allocate memory", "out of memory", "not enough memory")))


@contextlib.contextmanager
def _lab_warnings_as_lines():
    """The lab's warnings (a tiny validation split, a schedule shorter than the run) as one
    ``Warning: ...`` line each on stderr, each message once; other warnings as Python shows them."""
    from descend.lab.data import LabWarning

    seen: set[str] = set()
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, LabWarning):
            return default(message, category, filename, lineno, file, line)
        if str(message) not in seen:
            seen.add(str(message))
            click.echo(f"Warning: {message}", err=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always", LabWarning)
        warnings.showwarning = show
        yield


class OneLineErrors(click.Group):
    """A group whose user errors print as one ``Error: ...`` line (no usage block, no traceback):
    click's usage errors, running out of memory (naming the options that size the work) and Ctrl-C
    (exit status 130). ``descend`` alone prints the help."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not (sys.argv[1:] if args is None else list(args)):
            args = ["--help"]
        try:
            with _lab_warnings_as_lines():
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as e:
            click.echo(f"Error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("Error: interrupted", err=True)
            sys.exit(130)
        except (MemoryError, RuntimeError) as e:
            if not _out_of_memory(e):
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            first = first.split("DefaultCPUAllocator: ")[-1]
            click.echo(f"Error: out of memory ({first}); {_MEMORY_ADVICE}", err=True)
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
