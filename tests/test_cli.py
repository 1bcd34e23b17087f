"""Every command's user errors are one ``Error:`` line with a non-zero exit (no usage block, no traceback)."""

import pytest
from click.testing import CliRunner

from descend.cli import main


@pytest.mark.parametrize("args", [
    ["compare", "--set", "nope.lr=1"],
    ["compare", "--optimizers", "gd,nope"],
    ["race", "--function", "nope", "--optimizers", "gd", "--out", "x.png"],
    ["schedule", "nope"],
    ["schedule", "cosine", "--init", "-1"],
    ["lr-find", "--optimizer", "nope", "--out", "x.png"],
    ["no-such-command"],
])
def test_user_errors_are_one_line(args):
    res = CliRunner().invoke(main, args)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code != 0
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert "Traceback" not in res.output


def test_help_exits_zero():
    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0 and "compare" in res.output and "race" in res.output
