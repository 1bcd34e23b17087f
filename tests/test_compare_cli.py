"""`descend compare` and `descend lr-find` end to end on a tiny setting, and their user errors
(one line, non-zero exit, no traceback)."""

import csv

import numpy as np
import pytest
from click.testing import CliRunner

from descend.cli import main

TINY = ["--subsample", "240", "--epochs", "2", "--seeds", "2", "--hidden", "8", "--no-progress"]


def _run(args):
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    return res, res.output


def test_compare_end_to_end(tmp_path):
    out = tmp_path / "rep"
    res, text = _run(["compare", "--optimizers", "gd,adam", "--out", str(out), *TINY])
    assert res.exit_code == 0, text
    assert {p.name for p in out.iterdir()} >= {"report.html", "metrics.csv", "val_metric.png", "train_loss.png"}
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["optimizer", "seed", "epoch", "train_loss", "val_loss", "val_metric", "lr", "seconds"]
    assert len(rows) == 2 * 2 * 3
    assert {(r["optimizer"], r["seed"]) for r in rows} == {("gd", "0"), ("gd", "1"), ("adam", "0"), ("adam", "1")}
    assert {float(r["lr"]) for r in rows if r["optimizer"] == "gd"} == {0.1}  # the lab's default table
    for header in ("optimizer", "final val accuracy", "best val accuracy", "time/run", "status"):
        assert header in text
    assert "wrote" in text and "ended with the best validation accuracy" in text


def test_compare_hyperparameters_from_the_command_line(tmp_path):
    out = tmp_path / "rep"
    res, text = _run(["compare", "--optimizers", "gd,momentum", "--lr", "0.01", "--set", "momentum.momentum=0.5",
                      "--set", "gd.lr=0.2", "--set", "lr=0.05", "--out", str(out), *TINY])
    assert res.exit_code == 0, text
    rows = {l.split()[0]: l.split() for l in text.splitlines() if len(l.split()) > 1 and l.split()[1].startswith("lr=")}
    assert rows["gd"][1] == "lr=0.2"  # --set wins over --lr
    assert rows["momentum"][1:3] == ["lr=0.05", "momentum=0.5"]
    with open(out / "metrics.csv", newline="") as fh:
        lrs = {(r["optimizer"], float(r["lr"])) for r in csv.DictReader(fh)}
    assert lrs == {("gd", 0.2), ("momentum", 0.05)}


def test_compare_with_a_schedule(tmp_path):
    pytest.importorskip("descend.schedules")
    out = tmp_path / "rep"
    res, text = _run(["compare", "--optimizers", "adam", "--schedule", "cosine", "--out", str(out), *TINY])
    assert res.exit_code == 0, text
    with open(out / "metrics.csv", newline="") as fh:
        lrs = [float(r["lr"]) for r in csv.DictReader(fh) if r["seed"] == "0"]
    assert lrs[0] == 1e-3 and lrs[1] < 1e-3 and lrs[2] < lrs[1] and lrs[2] < 1e-4  # down to ~0 at the end


def test_a_diverging_optimizer_is_marked_and_the_others_finish(tmp_path):
    res, text = _run(["compare", "--optimizers", "gd,adam", "--set", "gd.lr=1e6", "--out", str(tmp_path), *TINY])
    assert res.exit_code == 0, text
    line = next(l for l in text.splitlines() if l.startswith("gd "))
    assert "diverged 2/2" in line
    assert next(l for l in text.splitlines() if l.startswith("adam ")).rstrip().endswith("ok")


def test_regression_task_and_npz(tmp_path):
    res, text = _run(["compare", "--task", "diabetes", "--optimizers", "adam", "--out", str(tmp_path / "a"), *TINY])
    assert res.exit_code == 0 and "final val R²" in text, text
    f = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4))
    np.savez(f, X=x, y=(x[:, 0] > 0).astype(int))
    res, text = _run(["compare", "--data", str(f), "--optimizers", "adam", "--out", str(tmp_path / "b"),
                      "--epochs", "1", "--seeds", "1", "--no-progress"])
    assert res.exit_code == 0 and "2 classes" in text and "final val accuracy" in text, text


@pytest.mark.parametrize("args, message", [
    (["--task", "mnist"], "valid tasks: digits, iris, wine, breast_cancer, diabetes"),
    (["--optimizers", "gd,adamm"], "unknown optimizer 'adamm'; valid names: gd, momentum"),
    (["--data", "{csv}", "--target", "label"], "row 4, column 'b': 'oops' is not a number"),
    (["--data", "{csv}", "--target", "y"], "no target column 'y'; columns: a, b, label"),
    (["--data", "{missing}", "--target", "label"], "row 3, column 'a': missing value"),
    (["--set", "adam.lrr=1"], "adam has no hyperparameter 'lrr'; it takes lr, betas"),
    (["--set", "adam.lr=-1"], "invalid lr=-1"),
    (["--set", "nope.lr=1"], "names 'nope', which is not among the optimizers"),
    (["--set", "adam.lr"], "is not OPTIMIZER.KEY=VALUE or KEY=VALUE"),
    (["--set", "lrr=0.1"], "gd has no hyperparameter 'lrr'"),
    (["--schedule", "cosine_typo"], "valid schedules:"),
    (["--task", "digits", "--data", "{csv}"], "either --task or --data"),
])
def test_user_errors_are_one_line_without_traceback(tmp_path, args, message):
    if "--schedule" in args:
        pytest.importorskip("descend.schedules")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n1,2,0\n3,4,1\n5,oops,0\n")
    missing = tmp_path / "missing.csv"
    missing.write_text("a,b,label\n1,2,0\n,4,1\n")
    args = [a.format(csv=bad, missing=missing) for a in args]
    res = CliRunner().invoke(main, ["compare", *args, "--out", str(tmp_path / "o"), *TINY])
    assert res.exit_code != 0
    assert message in res.output, res.output
    assert "Traceback" not in res.output and not isinstance(res.exception, (ValueError, TypeError, KeyError))
    errors = [l for l in res.output.splitlines() if l.startswith("Error:")]
    assert len(errors) == 1
    assert not (tmp_path / "o" / "report.html").exists()


def test_lr_find_command(tmp_path):
    png = tmp_path / "lr.png"
    res, text = _run(["lr-find", "--task", "digits", "--optimizer", "adam", "--subsample", "300", "--num-steps", "60",
                      "--out", str(png)])
    assert res.exit_code == 0, text
    line = next(l for l in text.splitlines() if l.startswith("suggested lr"))
    lr = float(line.split(": ")[1].split()[0])
    assert 1e-7 <= lr <= 10 and "rule: lr at the minimum of the smoothed loss ÷ 10" in line
    assert png.read_bytes().startswith(b"\x89PNG")
    res = CliRunner().invoke(main, ["lr-find", "--optimizer", "adamm"])
    assert res.exit_code != 0 and "valid names" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("cmd", ["compare", "lr-find"])
def test_help(cmd):
    res = CliRunner().invoke(main, [cmd, "--help"])
    assert res.exit_code == 0 and "--task" in res.output and "--data" in res.output and "--out" in res.output
