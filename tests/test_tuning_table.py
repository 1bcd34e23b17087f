"""The README's tuning table end to end on a tiny setting: scripts/tuning_table.py trains the grid and
the lr="auto" rows on iris for one seed, caches every trial, resumes without training again, and
prints the table from the cache."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path


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
