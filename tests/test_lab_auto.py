"""``lr="auto"`` in the lab's commands: ``descend compare --lr auto`` / ``--set OPT.lr=auto``, ``descend race
--lr auto``, with and without ``--schedule`` (its shape scales the estimate), the reading's note on an
estimate still rising when training ends, and the errors (one line, nothing trained)."""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

from descend.cli import main
from descend.cli.options import parse_assignment
from descend.lab import data as D
from descend.lab import report as R
from descend.lab import train as T
from descend.lab import tune as U

TINY = ["--subsample", "240", "--epochs", "3", "--seeds", "1", "--hidden", "8", "--no-progress"]


def _run(args):
    res = CliRunner().invoke(main, args)
    return res, res.output


def _rows(path):
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["epoch"] != "0"]


def test_lr_auto_is_a_value_of_lr_only():
    assert parse_assignment("adam.lr=auto") == ("adam", "lr", "auto")
    assert parse_assignment("lr=AUTO") == (None, "lr", "auto")
    with pytest.raises(ValueError, match="not a number"):
        parse_assignment("momentum=auto")


def test_compare_lr_auto_for_every_optimizer_and_for_one(tmp_path):
    out = tmp_path / "a"
    res, text = _run(["compare", "--optimizers", "gd,adam", "--lr", "auto", "--out", str(out), *TINY])
    assert res.exit_code == 0, text
    assert text.count("lr=auto") >= 2  # the table's hyperparameters column, both rows
    for name in ("gd", "adam"):
        lrs = [float(r["lr"]) for r in _rows(out / "metrics.csv") if r["optimizer"] == name]
        assert len(lrs) == 3 and all(lr > 0 for lr in lrs) and len(set(lrs)) > 1  # the estimate in use moves
    out = tmp_path / "b"
    res, text = _run(["compare", "--optimizers", "gd,adam", "--set", "adam.lr=auto", "--out", str(out), *TINY])
    assert res.exit_code == 0, text
    rows = _rows(out / "metrics.csv")
    assert {float(r["lr"]) for r in rows if r["optimizer"] == "gd"} == {0.1}  # the lab's default, fixed
    assert len({float(r["lr"]) for r in rows if r["optimizer"] == "adam"}) > 1


def test_compare_lr_auto_takes_the_schedule_s_shape(tmp_path):
    out = tmp_path / "rep"
    res, text = _run(["compare", "--optimizers", "adam", "--lr", "auto", "--schedule", "cosine", "--out", str(out),
                      *TINY[:2], "--epochs", "4", "--seeds", "1", "--hidden", "8", "--no-progress"])
    assert res.exit_code == 0, text
    lrs = [float(r["lr"]) for r in _rows(out / "metrics.csv")]
    assert len(lrs) == 4 and lrs[-1] < 0.05 * max(lrs)  # the cosine ends near 0, times the estimate


@pytest.mark.parametrize("args, words", [
    (["--lr", "fast"], "'fast' is not a number or 'auto'"),
    (["--set", "momentum=auto"], "is not a number"),
    (["--lr", "auto", "--schedule", "nope"], "unknown schedule"),
    (["--lr", "auto", "--tuned"], "--tuned searches each optimizer's rate and runs lr=auto beside it"),
    (["--set", "adam.lr=auto", "--tuned"], "--tuned searches each optimizer's rate and runs lr=auto beside it"),
])
def test_compare_lr_auto_errors_before_training(args, words, monkeypatch):
    monkeypatch.setattr(T, "train_run", lambda *a, **k: pytest.fail("trained before the error"))
    monkeypatch.setattr(U, "run_trial", lambda *a, **k: pytest.fail("trained before the error"))
    res, text = _run(["compare", "--optimizers", "adam", *args, *TINY])
    assert res.exit_code != 0 and text.count("Error:") == 1 and words in text and "Traceback" not in text


def test_tune_refuses_lr_auto_with_a_pointer_to_compare_tuned(monkeypatch):
    monkeypatch.setattr(U, "run_trial", lambda *a, **k: pytest.fail("trained before the error"))
    res, text = _run(["tune", "--optimizers", "adam", "--set", "lr=auto", *TINY])
    assert res.exit_code != 0 and text.count("Error:") == 1 and "compare --tuned" in text
    assert "Traceback" not in text


def test_race_lr_auto_with_and_without_a_schedule(tmp_path):
    for extra in ([], ["--schedule", "cosine"]):
        out = tmp_path / f"race{len(extra)}.png"
        res, text = _run(["race", "--optimizers", "adam,gd", "--lr", "auto", "--steps", "60", "--out", str(out), *extra])
        assert res.exit_code == 0, text
        assert out.exists() and text.count("lr=auto") == 2


def _auto_comparison(epochs):
    return T.compare(D.load("iris"), ["adam"], hyperparameters={"adam": {"lr": "auto"}}, seeds=2, epochs=epochs)


def test_the_reading_says_when_the_estimate_was_still_rising_at_the_end():
    # iris is 4 steps an epoch: in 12 epochs the estimate is still on its way up (growth needs steps)
    comp = _auto_comparison(12)
    rising = R.still_rising(comp)
    assert set(rising) == {"adam"} and rising["adam"] >= R.RISING
    text = " ".join(R.reading(comp))
    assert "adam's learning-rate estimate (lr=auto) was still rising when training ended" in text
    assert f"×{rising['adam']:.1f}" in text
    # the same runs with a flat rate in use over the last quarter: nothing to say
    for run in comp.runs:
        for row in run.rows[1:]:
            row["lr"] = 0.01
    assert R.still_rising(comp) == {} and "still rising" not in " ".join(R.reading(comp))
    # a fixed rate is never read this way, whatever its rows show
    fixed = T.compare(D.load("iris"), ["adam"], seeds=1, epochs=12)
    for row in fixed.runs[0].rows[1:]:
        row["lr"] = float(row["epoch"])
    assert R.still_rising(fixed) == {}


def test_race_labels_name_lr_auto_with_or_without_options():
    """The legend says η=auto for lr="auto" and for descend.auto(...) (a schedule's shape)."""
    from types import SimpleNamespace

    import descend
    from descend import schedules as S
    from descend.lab import plots

    for lr in ("auto", descend.auto(scale=S.cosine(1.0, 60))):
        assert plots._label(SimpleNamespace(label="adam", hyperparameters={"lr": lr}, diverged=False)) == "adam (η=auto)"
    assert plots._label(SimpleNamespace(label="gd", hyperparameters={"lr": 0.1}, diverged=True)) == "gd (η=0.1) — diverged"
