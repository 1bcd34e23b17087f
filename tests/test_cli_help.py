"""Newcomer friction (issue 12, items 5 and 6): ``descend`` alone prints help, every ``--help`` lists
the valid names and what each takes, and a CSV's feature columns can be picked."""

from __future__ import annotations

import inspect
import re

import pytest
from click.testing import CliRunner

import descend
from descend.cli import main
from descend.lab.data import TASKS


def _help(*args):
    res = CliRunner().invoke(main, [*args, "--help"] if args else [])
    assert res.exit_code == 0, res.output
    return res.output


def test_descend_alone_prints_help_and_exits_zero():
    text = _help()
    assert text.startswith("Usage:") and "Error" not in text
    for cmd in ("compare", "race", "lr-find", "schedule"):
        assert cmd in text


@pytest.mark.parametrize("cmd", ["compare", "lr-find", "race"])
def test_help_lists_every_optimizer_with_what_it_takes(cmd):
    text = _help(cmd)
    for name in descend.available():
        line = next((ln for ln in text.splitlines() if re.match(rf"\s+{name}\s{{2,}}", ln)), None)
        assert line is not None, f"{name} missing from {cmd} --help"
        takes = [k for k in inspect.signature(descend.optimizers.REGISTRY[name]).parameters
                 if k not in ("params", "maximize", "skip_nonfinite", "partitioned", "fast")]
        for k in takes:
            assert re.search(rf"\b{k}\b", line), (name, k, line)


@pytest.mark.parametrize("cmd", ["compare", "lr-find"])
def test_help_lists_the_tasks(cmd):
    text = _help(cmd)
    for name, (_, kind) in TASKS.items():
        assert re.search(rf"^\s+{name}\s+{kind}$", text, re.M), name


def test_compare_help_lists_schedules_with_their_parameters_and_explains_epochs():
    text = _help("compare")
    assert re.search(r"^\s+step\s+init=the optimizer's lr, step_size \(needed\), gamma=0.1$", text, re.M), text
    assert re.search(r"^\s+wsd\s+peak=the optimizer's lr, warmup_steps \(needed\), stable_steps \(needed\)", text, re.M)
    assert "--epochs" in text and "Passes over the training rows" in text
    assert "python -c" not in text


def test_schedule_help_says_what_each_schedule_takes():
    text = _help("schedule")
    assert re.search(r"^\s+wsd\s+--peak, --warmup-steps, --stable-steps, --decay-steps, --start 0", text, re.M), text
    assert re.search(r"^\s+cosine\s+--init, --total-steps, --end 0$", text, re.M)


# ------------------------------------------------------------------------------- --features / --drop


@pytest.fixture
def people(tmp_path):
    f = tmp_path / "people.csv"
    rows = ["id,age,height,score,label"]
    for i in range(60):
        rows.append(f"p{i},{20 + i % 30},{150 + (i * 7) % 40},{(i * 13) % 17},{'yes' if i % 3 else 'no'}")
    f.write_text("\n".join(rows) + "\n")
    return f


def _compare(tmp_path, *args):
    return CliRunner().invoke(main, ["compare", *args, "--optimizers", "adam", "--epochs", "1", "--seeds", "1",
                                     "--hidden", "4", "--no-progress", "--out", str(tmp_path / "o")])


def test_a_text_id_column_can_be_dropped(tmp_path, people):
    res = _compare(tmp_path, "--data", str(people), "--target", "label")
    assert res.exit_code != 0 and "column 'id': 'p0' is not a number" in res.output
    res = _compare(tmp_path, "--data", str(people), "--target", "label", "--drop", "id")
    assert res.exit_code == 0 and "3 features" in res.output, res.output


def test_features_picks_columns(tmp_path, people):
    res = _compare(tmp_path, "--data", str(people), "--target", "label", "--features", "age,score")
    assert res.exit_code == 0 and "2 features" in res.output, res.output
    from descend.lab import data as D

    x, _, names = D.load_file(people, "label", features=["score", "age"])
    assert names == ["age", "score"] and x[1].tolist() == [21.0, 13.0]


@pytest.mark.parametrize("args, message", [
    (["--features", "age,nope"], "--features: no column 'nope'; columns: id, age, height, score, label"),
    (["--drop", "label"], "--drop: 'label' is the target column"),
    (["--features", "age", "--drop", "age"], "no feature columns left"),
])
def test_features_and_drop_errors(tmp_path, people, args, message):
    res = _compare(tmp_path, "--data", str(people), "--target", "label", *args)
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert res.exit_code != 0 and len(errors) == 1 and message in errors[0], res.output
