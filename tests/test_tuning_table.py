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
        assert re.match(r"^[+-]\d+\.\d{2}$", cells[-3]), row  # the mean gap
    # resumable: a second run trains nothing and prints the same table
    second = _run("--tasks", "iris", "--seeds", "1", "--methods", "grid,auto", "--cache", str(cache), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert cache.read_text().splitlines() == lines
    assert second.stdout == table
    report = _run("--tasks", "iris", "--seeds", "1", "--report", "--cache", str(cache), cwd=tmp_path)
    assert report.returncode == 0 and report.stdout == table


def test_tuning_table_refuses_an_unknown_task(tmp_path):
    out = _run("--tasks", "nope", "--report", "--cache", str(tmp_path / "c.jsonl"), cwd=tmp_path)
    assert out.returncode != 0 and "unknown task 'nope'" in out.stderr
