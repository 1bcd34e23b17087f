"""The README's tuning table end to end on a tiny setting: scripts/tuning_table.py trains the grid and
the lr="auto" rows on iris for one seed, caches every trial, resumes without training again, and
prints the table from the cache."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "tuning_table.py"


def _script():
    """scripts/tuning_table.py as a module."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import tuning_table
    finally:
        sys.path.pop(0)
    return tuning_table


def _run(*args, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_tuning_table_runs_resumes_and_reports(tmp_path):
    cache = tmp_path / "cache.jsonl"
    first = _run("--tasks", "iris", "--seeds", "1", "--methods", "grid,auto", "--cache", str(cache), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    lines = cache.read_text().splitlines()
    keys = [json.loads(x)["key"] for x in lines]
    import descend

    assert sum("|grid|" in k for k in keys) == 5 * 8  # five rules × the 8-point grid
    assert sum("|auto@" in k for k in keys) == len(descend.available())  # every rule with lr="auto"
    table = first.stdout
    for label in ("adam, 8-point grid (best on validation)", 'adam, lr="auto"', 'gd, lr="auto"'):
        row = next(r for r in table.splitlines() if r.startswith(f"| {label} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert re.match(r"^\d\.\d{3}", cells[1]), row  # a metric on iris
        assert re.match(r"^[+-]\d+\.\d{2}$", cells[-5]), row  # the mean gap
        assert re.match(r"^[+-]\d+\.\d{2}$", cells[-3]), row  # the mean gap to the held-out grid
    # every grid trial carries its metric on the two validation halves, whose size-weighted mean is
    # its metric on the whole split (iris: 15 + 15 rows)
    recs = [json.loads(x) for x in lines]
    grid = [r for r in recs if "|grid|" in r["key"] and not r["diverged"]]
    assert grid and all(len(r["halves"]) == 2 for r in grid)
    for r in grid:
        assert abs(sum(r["halves"]) / 2 - r["final"]) < 1e-12, r
    held = next(r for r in table.splitlines() if r.startswith("| adam, 8-point grid (held out"))
    assert re.search(r"\d\.\d{3} @[\d.e-]+/[\d.e-]+", held), held  # the metric and the two rates chosen
    # resumable: a second run trains nothing and prints the same table
    second = _run("--tasks", "iris", "--seeds", "1", "--methods", "grid,auto", "--cache", str(cache), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert cache.read_text().splitlines() == lines
    assert second.stdout == table
    report = _run("--tasks", "iris", "--seeds", "1", "--report", "--cache", str(cache), cwd=tmp_path)
    assert report.returncode == 0 and report.stdout == table
    # rows the table reads that the cache lacks for the code as it is are named on stderr, not dropped silently:
    # here lr_find's and the published methods' (not run), then a second seed of everything
    assert re.search(r"note: 11 trials .* \(5 lrfind@\w+, 6 published\)", report.stderr), report.stderr
    asked = _run("--tasks", "iris", "--seeds", "1", "--methods", "grid,auto", "--report", "--cache", str(cache),
                 cwd=tmp_path)
    assert asked.returncode == 0 and asked.stdout == table and "note:" not in asked.stderr, asked.stderr
    more = _run("--tasks", "iris", "--seeds", "2", "--methods", "grid,auto", "--report", "--cache", str(cache),
                cwd=tmp_path)
    n_auto = len(_script().descend.available())
    assert f"note: {40 + n_auto} trials" in more.stderr, more.stderr
    # the lr="auto" variants: one run per variant and rule, and their gap table
    var = _run("--tasks", "iris", "--seeds", "1", "--methods", "variants", "--variants", "--cache", str(cache),
               cwd=tmp_path)
    assert var.returncode == 0, var.stderr
    recs = [json.loads(x) for x in cache.read_text().splitlines()]
    TT = _script()
    assert sum("|variant@" in r["key"] for r in recs) == len(TT.VARIANTS) * 5
    assert any("avg_every=1" in r["lr"] for r in recs if "|variant@" in r["key"])  # the option reached the run
    rows = [r for r in var.stdout.splitlines() if r.startswith("| ") and not r.startswith("| lr=")]
    assert [r.split(" | ")[0][2:] for r in rows] == ["default", *TT.VARIANTS]
    for r in rows:
        assert len(re.findall(r"[+-]\d+\.\d\d / [+-]\d+\.\d\d; held out", r)) == 5, r


def test_grid_rows_cached_without_halves_run_again(tmp_path):
    TT = _script()
    cache = TT.Cache(tmp_path / "c.jsonl")
    cache.put("iris|grid|adam|0.001|0", final=0.9, diverged=False, seconds=1.0, lr=1e-3)  # an older row
    cache.put("iris|grid|adam|0.01|0", final=0.9, diverged=False, seconds=1.0, lr=1e-2, halves=[0.9, 0.9])
    cache.put("iris|auto@x|adam|auto|0", final=0.9, diverged=False, seconds=1.0, lr="auto")
    assert TT.needs_run(cache, "iris|grid|adam|0.001|0")
    assert not TT.needs_run(cache, "iris|grid|adam|0.01|0")
    assert not TT.needs_run(cache, "iris|auto@x|adam|auto|0")  # no selection: its whole-split metric is held out
    assert TT.needs_run(cache, "iris|grid|adam|0.1|0")
    assert TT.half_sizes("iris") == (15, 15) and TT.half_sizes("diabetes") == (44, 44)


def test_tuning_table_refuses_an_unknown_task(tmp_path):
    out = _run("--tasks", "nope", "--report", "--cache", str(tmp_path / "c.jsonl"), cwd=tmp_path)
    assert out.returncode != 0 and "unknown task 'nope'" in out.stderr


def test_seed_ranges_and_paired_errors():
    import argparse
    import math

    import pytest

    TT = _script()
    assert TT.seed_range("3") == [0, 1, 2]
    assert TT.seed_range("10:15") == [10, 11, 12, 13, 14]  # fresh seeds only
    for bad in ("0", "x", "3:1", "-2:3", "1:1"):
        with pytest.raises(argparse.ArgumentTypeError, match="--seeds"):
            TT.seed_range(bad)
    # the standard error of a gap taken seed by seed: the spread of the differences, not of each row
    row, ref = [0.50, 0.61, 0.70], [0.40, 0.50, 0.70]
    diffs = [10.0, 11.0, 0.0]
    assert math.isclose(TT.paired_se(row, ref), TT.statistics.stdev(diffs) / math.sqrt(3))
    assert TT.paired_se([0.75, 0.5], [0.5, 0.25]) == 0.0  # the same gap on every seed: no doubt about it
    assert TT.paired_se([0.9, None], [0.8, 0.7]) is None  # a seed missing or diverged: no error shown
    assert TT.paired_se([0.9], [0.8]) is None


def test_rules_restrict_the_rows_run():
    import argparse

    import pytest

    TT = _script()
    assert TT.rule_set("Adam, momentum") == {"adam", "momentum"}
    for bad in ("nope", "adam,nope", ","):
        with pytest.raises(argparse.ArgumentTypeError, match="--rules"):
            TT.rule_set(bad)
    methods = {"grid", "auto", "lrfind", "variants", "published"}
    every = TT.plan("iris", [0], methods, True, "v")
    only = TT.plan("iris", [0], methods, True, "v", {"adam", "lion"})
    rule_of = lambda key: key.split("|")[2]  # noqa: E731
    assert {rule_of(k) for k, _ in every} > {"adam", "lion", "gd"}
    kept = [k for k, _ in only if "|published|" not in k]
    assert kept and {rule_of(k) for k in kept} == {"adam", "lion"}
    assert set(kept) == {k for k, _ in every if "|published|" not in k and rule_of(k) in ("adam", "lion")}
    assert {k for k, _ in only if "|published|" in k} == {k for k, _ in every if "|published|" in k}
    assert not any(k.startswith("iris|grid|lion") for k in kept)  # lion has no grid rows: not a core rule


def test_worst_gap_shows_its_paired_error(tmp_path):
    TT = _script()
    cache = TT.Cache(tmp_path / "c.jsonl")
    for s, (g, a) in enumerate([(0.90, 0.80), (0.90, 0.86), (0.93, 0.90)]):
        for lr in TT.U.grid(float(TT.T.hyperparameters_for("adam")["lr"])):
            cache.put(f"iris|grid|adam|{lr:.6g}|{s}", final=g if lr == 0.01 else 0.5, diverged=False, seconds=0.1,
                      lr=lr, halves=[g, g] if lr == 0.01 else [0.5, 0.5])
        cache.put(f"iris|auto@{TT.auto_version('adam')}|adam|auto|{s}", final=a, diverged=False, seconds=0.1, lr="auto")
    out = _run("--tasks", "iris", "--seeds", "3", "--report", "--cache", str(cache.path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    row = next(r for r in out.stdout.splitlines() if r.startswith('| adam, lr="auto" |'))
    cells = [c.strip() for c in row.strip("|").split("|")]
    se = TT.statistics.stdev([-10.0, -4.0, -3.0]) / 3 ** 0.5
    assert cells[-4] == f"-5.67 ± {se:.2f}", row  # worst gap (the only task) and its error
    assert cells[-5] == f"-5.67 ± {se:.2f}", row  # one task: the mean gap is that task's gap


def test_mean_gap_shows_the_paired_error_of_the_mean_over_tasks(tmp_path):
    TT = _script()
    cache = TT.Cache(tmp_path / "c.jsonl")
    finals = {"iris": [(0.90, 0.80), (0.90, 0.86), (0.93, 0.90)],  # (grid at its best rate, lr="auto") per seed
              "wine": [(0.95, 0.99), (0.97, 0.97), (0.96, 0.92)]}
    for task, by_seed in finals.items():
        for s, (g, a) in enumerate(by_seed):
            for lr in TT.U.grid(float(TT.T.hyperparameters_for("adam")["lr"])):
                cache.put(f"{task}|grid|adam|{lr:.6g}|{s}", final=g if lr == 0.01 else 0.5, diverged=False,
                          seconds=0.1, lr=lr, halves=[g, g] if lr == 0.01 else [0.5, 0.5])
            cache.put(f"{task}|auto@{TT.auto_version('adam')}|adam|auto|{s}", final=a, diverged=False, seconds=0.1,
                      lr="auto")
    out = _run("--tasks", "iris,wine", "--seeds", "3", "--report", "--cache", str(cache.path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    row = next(r for r in out.stdout.splitlines() if r.startswith('| adam, lr="auto" |'))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # per seed, the mean of the two tasks' gaps: (-10 + 4)/2, (-4 + 0)/2, (-3 - 4)/2 points
    per_seed = [-3.0, -2.0, -3.5]
    se = TT.statistics.stdev(per_seed) / 3 ** 0.5
    assert cells[-5] == f"{TT.statistics.fmean(per_seed):+.2f} ± {se:.2f}", row
    # not the errors of the two tasks' gaps put together, which ignore that a seed is hard for both
    apart = (TT.paired_se([.8, .86, .9], [.9, .9, .93]) ** 2 + TT.paired_se([.99, .97, .92], [.95, .97, .96]) ** 2) ** .5 / 2
    assert f"{apart:.2f}" != f"{se:.2f}"
    # the grid's own row carries no error, and a seed missing on one task drops it
    grid = next(r for r in out.stdout.splitlines() if r.startswith("| adam, 8-point grid (best"))
    assert [c.strip() for c in grid.strip("|").split("|")][-5] == "+0.00"
    assert TT.mean_gap_se([([0.9, 0.8], [0.8, 0.8]), ([0.9, None], [0.8, 0.7])]) is None
    assert TT.mean_gap_se([([0.9, 0.8], [0.8, 0.8]), None]) is None


def test_best_epoch_view_trains_and_reports_both_measures(tmp_path):
    out = _run("--best-epoch", "--tasks", "iris", "--seeds", "1", "--cache", str(tmp_path / "c.jsonl"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = [r for r in out.stdout.splitlines() if r.startswith("| iris |")]
    assert [r.split(" | ")[1] for r in rows] == ["gd", "momentum", "adagrad", "rmsprop", "adam"]
    for r in rows:
        c = [x.strip() for x in r.strip("|").split("|")]
        final_grid, final_auto, best_grid, best_auto = (float(c[i].split()[0]) for i in (2, 3, 5, 6))
        assert best_grid >= final_grid and best_auto >= final_auto  # a best epoch is never below the last
        assert abs(float(c[4]) - 100 * (final_auto - final_grid)) < 0.016  # the gap, from the cells (each rounded to 4 digits)
        assert abs(float(c[7]) - 100 * (best_auto - best_grid)) < 0.016
    assert not (tmp_path / "c.jsonl").exists()  # not cached: per-epoch metrics are not kept


def test_the_committed_cache_holds_the_readme_table_for_the_code_as_it_is():
    # the README's tuning table is printed from docs/tuning_cache.jsonl (`--report`), whose lr="auto",
    # variant and lr_find rows are keyed by a hash of the code behind them: a change to that code
    # leaves the table's rows unfound (the table then silently loses them) until they are run again
    # or, where the change cannot alter a result, rekeyed. Every seed the grid covers must be covered
    # by every other row of the table, and each variant by the same seeds, at least the goal's 5, on every task.
    TT = _script()
    cache = TT.Cache(ROOT / "docs" / "tuning_cache.jsonl")
    grid_seeds = sorted({int(k.rsplit("|", 1)[1]) for k in cache.data if "|grid|" in k})
    assert grid_seeds == list(range(len(grid_seeds))) and len(grid_seeds) >= 5
    missing = TT.missing_trials(cache, list(TT.TASKS), grid_seeds, {"grid", "auto", "lrfind", "published"})
    assert not missing, f"{len(missing)} rows of the README's table are not in the cache, e.g. {missing[:3]}"
    have = {}
    for task in TT.TASKS:
        for key, _ in TT.plan(task, grid_seeds, {"variants"}, True, TT.code_hash(TT.LR_FIND)):
            head, seed = key.rsplit("|", 1)
            have.setdefault(head, set()).update([int(seed)] if key in cache else [])
    for head, seeds in have.items():  # seeds 0 … n−1 with n ≥ 5, the same n on every task
        task, rest = head.split("|", 1)
        assert seeds == set(range(len(seeds))) and len(seeds) >= 5, head
        assert all(len(have[f"{t}|{rest}"]) == len(seeds) for t in TT.TASKS), head


def test_lr_find_rules_score_each_suggestion_on_the_cached_grid(tmp_path):
    # a grid whose metric is a known line in log10(lr): each rule's proxy gap must be that line at its
    # suggestion (times the velocity factor for Momentum) minus the grid's best, in points
    import math

    TT = _script()
    cache = TT.Cache(tmp_path / "c.jsonl")
    line = {"gd": lambda lr: 0.9 + 0.05 * math.log10(lr), "momentum": lambda lr: 0.8 - 0.02 * math.log10(lr)}
    for rule, f in line.items():
        for lr in TT.U.grid(float(TT.T.hyperparameters_for(rule)["lr"])):
            cache.put(f"iris|grid|{rule}|{lr:.6g}|0", final=f(lr), diverged=False, seconds=0.0, lr=lr)
    out = _run("--tasks", "iris", "--seeds", "1", "--lr-find-rules", "--cache", str(cache.path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {r.split(" | ")[0][2:]: r.split(" | ") for r in out.stdout.splitlines() if r.startswith("| ") and "---" not in r}
    assert list(rows)[1:] == list(TT.LR_FIND_RULES)
    problem = TT.U.problem_from_data(TT.D.load("iris"), "mlp", (64,), 32)
    for rule, f in line.items():
        grid = TT.U.grid(float(TT.T.hyperparameters_for(rule)["lr"]))
        res, opt = TT.lr_find_sweep(problem, rule, 0)
        lr = min(max(res.suggestion, grid[0]), grid[-1])  # (the suggestion includes the velocity factor)
        want = 100 * (f(lr) - max(f(x) for x in grid))
        got = float(rows["min ÷ 10 (the default)"][3 + TT.RULES.index(rule)])
        assert got == pytest.approx(want, abs=0.06), (rule, got, want)
