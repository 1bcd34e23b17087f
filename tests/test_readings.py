"""Honest readings (issue 12, item 3): ties called ties, the goal on the table's own quantity with the
reached counts stated, clear errors or warnings for tiny splits, constant targets and schedules that do
not fit the run, a plateau schedule fed the validation loss, and lr-find's --set checked like compare's."""

from __future__ import annotations

import csv
import math
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from descend.cli import main
from descend.lab import data as D
from descend.lab import report as R
from descend.lab import train as T

TINY = ["--subsample", "200", "--epochs", "2", "--seeds", "2", "--hidden", "8", "--no-progress"]


def _comp(curves: dict[str, list[list[float]]], n_val: int = 100, kind: str = "classification") -> T.Comparison:
    """A comparison with given validation curves: curves[opt][seed] = metric per epoch (epoch 0 first)."""
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", D.LabWarning)
        data = D.prepare(rng.normal(size=(5 * n_val, 3)), np.arange(5 * n_val) % 2, name="toy")
    runs = []
    for name, seeds in curves.items():
        for seed, curve in enumerate(seeds):
            run = T.Run(name, seed, {"lr": 0.1})
            for e, m in enumerate(curve):
                run.rows.append(dict(optimizer=name, seed=seed, epoch=e, train_loss=1.0 / (1 + e),
                                     val_loss=1.0 / (1 + e), val_metric=m, lr=0.1, seconds=0.1 * e))
            runs.append(run)
    epochs = len(next(iter(curves.values()))[0]) - 1
    settings = dict(task="toy", kind=kind, metric="accuracy", optimizers=list(curves),
                    seeds=list(range(len(next(iter(curves.values()))))), epochs=epochs, batch_size=8, hidden=[4],
                    schedule=None, divergence_factor=1e3, train_rows=4 * n_val, val_rows=n_val, n_features=3)
    return T.Comparison(data=data, runs=runs, settings=settings, goal=T.default_goal(runs))


def _cli(*args):
    return CliRunner().invoke(main, list(args))


def _one_error(res, *fragments):
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert res.exit_code != 0 and len(errors) == 1 and "Traceback" not in res.output, res.output
    for f in fragments:
        assert f in errors[0], res.output


# ------------------------------------------------------------------------------- ties


def test_four_optimizers_at_the_same_accuracy_are_a_tie():
    same = [[0.5, 0.991]] * 5
    comp = _comp({"gd": same, "momentum": same, "rmsprop": same, "adam": same}, n_val=114)
    text = " ".join(R.reading(comp))
    assert "gd, momentum, rmsprop and adam tied for the best validation accuracy, 0.991" in text, text
    assert "ended with the best" not in text and "runner-up" not in text and "consistent" not in text


def test_a_gap_below_one_validation_row_is_a_tie_even_with_no_spread():
    # every seed identical (std 0) and 0.5 points apart, but one validation row of 100 is 1 point
    comp = _comp({"adam": [[0.5, 0.915]] * 3, "gd": [[0.5, 0.91]] * 3}, n_val=100)
    text = " ".join(R.reading(comp))
    assert "adam and gd tied" in text and "one validation row is 1.0 percentage points" in text, text


def test_a_clear_lead_is_still_named():
    comp = _comp({"adam": [[0.5, 0.95], [0.5, 0.96]], "gd": [[0.5, 0.80], [0.5, 0.81]]}, n_val=100)
    text = " ".join(R.reading(comp))
    assert "adam ended with the best validation accuracy, 0.955" in text and "lead is consistent" in text


# ------------------------------------------------------------------------------- the goal


def test_the_goal_sits_on_the_tables_best_column_and_counts_are_stated():
    # adam: one lucky seed reaches 0.99, the others 0.80 → its mean best is 0.863; gd: 0.95 in every seed
    comp = _comp({"adam": [[0.1, 0.99, 0.99], [0.1, 0.8, 0.8], [0.1, 0.8, 0.8]],
                  "gd": [[0.1, 0.5, 0.95], [0.1, 0.5, 0.95], [0.1, 0.5, 0.95]]})
    head, rows = R.table_rows(comp)
    best_column = [float(r[3]) for r in rows]
    assert comp.goal == pytest.approx(0.98 * max(best_column), abs=1e-3)  # 0.98 × 0.95, not 0.98 × 0.99
    text = " ".join(R.reading(comp))
    assert "Fastest to validation accuracy ≥ 0.931 in every seed: gd (2.0 epochs on average, 3/3 seeds)" in text
    assert "Reached 0.931 in some seeds only: adam (1/3 seeds, 1.0 epochs on average in those)" in text
    assert rows[0][4] == "1.0 (1/3 seeds)" and rows[1][4] == "2.0 (3/3 seeds)"


def test_never_reached_states_the_count():
    comp = _comp({"adam": [[0.1, 0.9]] * 2, "gd": [[0.1, 0.2]] * 2})
    assert R.table_rows(comp)[1][1][4] == "never (0/2 seeds)"


@pytest.mark.parametrize("goal, message", [("nan", "invalid goal=nan; expected a validation accuracy in (0, 1]"),
                                           ("5", "invalid goal=5.0"), ("0", "invalid goal=0.0")])
def test_goal_is_validated_for_the_metric(goal, message, tmp_path):
    _one_error(_cli("compare", "--task", "iris", "--goal", goal, "--out", str(tmp_path / "o"), *TINY[2:]), message)


def test_goal_for_r2():
    data = D.load("diabetes", subsample=100)
    with pytest.raises(ValueError, match=r"invalid goal=1.5; expected a finite R² <= 1"):
        T.compare(data, ["gd"], goal=1.5, seeds=1, epochs=1)


# ------------------------------------------------------------------------------- splits and targets


def test_an_empty_training_split_is_an_error_naming_val_fraction(tmp_path):
    res = _cli("compare", "--task", "diabetes", "--val-fraction", "0.999", "--out", str(tmp_path / "o"), *TINY[2:])
    _one_error(res, "--val-fraction", "leaves 0 training")


def test_a_near_empty_training_split_warns_without_numpy_noise(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no numpy "mean of empty slice" either
        res = _cli("compare", "--task", "iris", "--val-fraction", "0.99", "--optimizers", "adam", "--out",
                   str(tmp_path / "o"), *TINY[2:])
    assert res.exit_code == 0, res.output
    assert "Warning: iris: only 3 training rows" in res.output and "diverged 2/2" not in res.output


def test_a_tiny_validation_split_warns_and_the_report_says_so(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 3))
    np.savez(tmp_path / "small.npz", X=x, y=x @ [1.0, -1.0, 0.5] + rng.normal(size=20))  # linnerud's 20 rows
    res = _cli("compare", "--data", str(tmp_path / "small.npz"), "--optimizers", "adam", "--epochs", "1", "--seeds",
               "1", "--no-progress", "--out", str(tmp_path / "o"))
    assert res.exit_code == 0, res.output
    assert "Warning: small.npz: only 4 validation rows" in res.output
    assert "Note: small.npz: only 4 validation rows" in (tmp_path / "o" / "report.html").read_text(encoding="utf-8")


def test_a_constant_regression_target_is_an_error(tmp_path):
    x = np.random.default_rng(0).normal(size=(60, 3))
    np.savez(tmp_path / "c.npz", X=x, y=np.full(60, 3.5))
    res = _cli("compare", "--data", str(tmp_path / "c.npz"), "--kind", "regression", "--out", str(tmp_path / "o"),
               *TINY[2:])
    _one_error(res, "the target is constant", "R² is undefined")


def test_reading_without_finite_metrics_does_not_contradict_itself():
    comp = _comp({"gd": [[math.nan, math.nan]], "adam": [[math.nan, math.nan]]})
    text = " ".join(R.reading(comp))
    assert "Every run diverged" not in text and "No run that finished has a finite validation accuracy" in text


# ------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("spec, message", [
    ("join", "join chains other schedules; build it in Python"),
    ("step", "schedule step needs step_size (e.g. step:step_size=...); it takes init=the optimizer's lr, "
             "step_size (needed), gamma=0.1"),
    ("wsd:warmup_steps=0,stable_steps=400", "lasts 401 steps but the run has 10"),
])
def test_schedule_errors_say_what_the_schedule_needs(spec, message, tmp_path):
    res = _cli("compare", "--schedule", spec, "--out", str(tmp_path / "o"), *TINY)
    _one_error(res, message)
    assert "__init__" not in res.output and "(init: float" not in res.output


def test_a_schedule_shorter_than_the_run_warns():
    with pytest.warns(D.LabWarning, match=r"ends at step 10 of the run's 80"):
        T.make_schedule("cosine:total_steps=10", 0.1, 80)


def test_a_plateau_schedule_is_fed_the_validation_loss(tmp_path):
    # threshold 10 (relative): no epoch ever counts as an improvement, so with patience 0 the rate halves
    # after every epoch — but only if something feeds it
    out = tmp_path / "o"
    res = _cli("compare", "--optimizers", "adam", "--schedule",
               "reduce_on_plateau:patience=0,factor=0.5,threshold=10", "--out", str(out),
               *TINY[:2], "--epochs", "4", "--seeds", "1", "--hidden", "8", "--no-progress")
    assert res.exit_code == 0, res.output
    with open(out / "metrics.csv", newline="") as fh:
        lrs = [float(r["lr"]) for r in csv.DictReader(fh)]
    assert lrs == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4, 1.25e-4])
    assert "fed the validation loss after each epoch" in res.output


def test_the_table_shows_an_active_schedule(tmp_path):
    res = _cli("compare", "--optimizers", "adam", "--schedule", "cosine", "--out", str(tmp_path / "o"), *TINY)
    row = next(ln for ln in res.output.splitlines() if ln.startswith("adam "))
    assert "schedule=cosine" in row, res.output


# ------------------------------------------------------------------------------- lr-find --set


def test_lr_find_refuses_set_lr(tmp_path):
    _one_error(_cli("lr-find", "--set", "lr=0.1", "--subsample", "100"), "--set", "sweeps the learning rate")


def test_lr_find_unknown_hyperparameter_reads_as_in_compare(tmp_path):
    res = _cli("lr-find", "--optimizer", "adam", "--set", "momentum=0.9", "--subsample", "100")
    _one_error(res, "adam has no hyperparameter 'momentum'; it takes lr, betas")
    assert "__init__" not in res.output
