"""Nothing is lost and nothing raises a traceback (issue 12, items 1 and 2): every output path is checked
before any training, the report folder is replaced whole or not at all, Ctrl-C keeps the finished runs,
and user or resource errors are one ``Error:`` line."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from descend.cli import main
from descend.lab import report as R
from descend.lab import train as T

TINY = ["--subsample", "200", "--epochs", "2", "--seeds", "2", "--hidden", "8", "--no-progress"]


def one_error(res, *fragments):
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error:")]
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output and len(errors) == 1, res.output
    for f in fragments:
        assert f in errors[0], res.output
    return errors[0]


@pytest.fixture
def no_training(monkeypatch):
    """Any training or lr sweep fails the test: the error must come before it."""
    def boom(*a, **k):
        raise AssertionError("training started before the output path was checked")
    monkeypatch.setattr(T, "train_run", boom)
    import descend
    monkeypatch.setattr(descend, "lr_find", boom)
    monkeypatch.setattr(sys.modules["descend.lab.trajectory"], "trajectory", boom)


def _invoke(*args):
    return CliRunner().invoke(main, list(args))


# ------------------------------------------------------------------------------- output paths, up front


@pytest.mark.parametrize("where", ["proc", "under_a_file", "a_file"])
def test_compare_out_is_checked_before_training(tmp_path, no_training, where):
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    out = {"proc": "/proc/nope/report", "under_a_file": str(a_file / "report"), "a_file": str(a_file)}[where]
    one_error(_invoke("compare", "--out", out, *TINY), "--out")
    assert a_file.read_text() == "x"


def test_compare_refuses_a_folder_holding_other_files(tmp_path, no_training):
    (tmp_path / "notes.txt").write_text("mine")
    one_error(_invoke("compare", "--out", str(tmp_path), *TINY), "--out", "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("out", ["{tmp}/lrdir/", "{tmp}/adir", "/nonexistent/dir/lr.png", "/proc/lr.png", "{tmp}/lr.txt"])
def test_lr_find_out_is_checked_before_the_sweep(tmp_path, no_training, out):
    (tmp_path / "adir").mkdir()
    one_error(_invoke("lr-find", "--subsample", "100", "--out", out.format(tmp=tmp_path)), "--out")


@pytest.mark.parametrize("cmd", [["race", "--function", "booth", "--optimizers", "gd", "--steps", "5"],
                                 ["schedule", "cosine", "--init", "0.1", "--total-steps", "10"]])
@pytest.mark.parametrize("out", ["/proc/x.png", "{tmp}/x.png/", "{tmp}/missing/x.png"])
def test_race_and_schedule_out_are_checked_first(tmp_path, no_training, cmd, out):
    one_error(_invoke(*cmd, "--out", out.format(tmp=tmp_path)), "--out")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- the report, whole or not at all


@pytest.fixture(scope="module")
def comp():
    from descend.lab import data as D

    return T.compare(D.load("iris", subsample=60), ["gd"], seeds=1, epochs=1, hidden=(4,))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_an_interrupted_write_keeps_the_previous_report_intact(tmp_path, comp, monkeypatch):
    out = tmp_path / "rep"
    R.write_report(comp, out, command="first")
    before = _snapshot(out)

    def fail(*a, **k):  # dies after metrics.csv is written, while the figures are drawn
        raise KeyboardInterrupt
    monkeypatch.setattr(R, "metric_figure", fail)
    import copy

    other = copy.deepcopy(comp)  # a different run: its metrics.csv differs from the first
    other.runs[0].rows[-1]["val_loss"] += 1.0
    with pytest.raises(KeyboardInterrupt):
        R.write_report(other, out, command="second")
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]  # no temporary folder left behind


def test_a_finished_write_replaces_the_report_whole(tmp_path, comp):
    out = tmp_path / "rep"
    R.write_report(comp, out, command="first")
    (out / "stale.png").write_bytes(b"old figure")
    paths = R.write_report(comp, out, command="second")
    assert not (out / "stale.png").exists()
    assert "second" in (out / "report.html").read_text(encoding="utf-8")
    assert set(paths) == {p.name for p in out.iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]


# ------------------------------------------------------------------------------- Ctrl-C keeps the finished runs


def test_ctrl_c_during_compare_writes_the_finished_runs_marked_partial(tmp_path, monkeypatch):
    real, calls = T.train_run, []

    def interrupted_on_the_fourth(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(T, "train_run", interrupted_on_the_fourth)
    out = tmp_path / "rep"
    res = _invoke("compare", "--optimizers", "gd,adam", "--out", str(out), *TINY)
    assert res.exit_code == 130, res.output
    assert "Traceback" not in res.output
    err = one_error(res, "interrupted", "3 finished runs of 4")
    assert str(out) in err
    with open(out / "metrics.csv", newline="") as fh:
        done = {(r["optimizer"], r["seed"]) for r in csv.DictReader(fh)}
    assert done == {("gd", "0"), ("adam", "0"), ("gd", "1")}
    assert "partial" in res.output and "Interrupted after 3 of 4 runs" in res.output
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "partial" in page and "Interrupted after 3 of 4 runs" in page
    gd_row = next(ln for ln in res.output.splitlines() if ln.startswith("gd "))
    adam_row = next(ln for ln in res.output.splitlines() if ln.startswith("adam "))
    assert "2/2 seeds" in gd_row or "ok" in gd_row
    assert "partial: 1/2 seeds" in adam_row


def test_ctrl_c_before_any_run_finished_writes_nothing(tmp_path, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(T, "train_run", interrupted)
    res = _invoke("compare", "--optimizers", "gd", "--out", str(tmp_path / "rep"), *TINY)
    assert res.exit_code == 130
    one_error(res, "interrupted before any run finished")
    assert not (tmp_path / "rep").exists()


def test_sigint_to_a_running_compare(tmp_path):
    """A real Ctrl-C (SIGINT) to the process, once the first runs are done. The child starts with
    SIGINT at its default: under a shell that runs pytest in the background (``cmd &``, no job
    control) SIGINT is inherited ignored, Python then installs no KeyboardInterrupt handler, and the
    compare ran to its end and exited 0 (twice in fresh-clone CI runs started that way)."""
    out = tmp_path / "rep"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.Popen([sys.executable, "-m", "descend.cli", "compare", "--optimizers", "gd,adam", "--subsample",
                          "200", "--hidden", "8", "--seeds", "2", "--epochs", "300", "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = b""
    deadline = time.monotonic() + 120
    while b"adam seed 0" not in seen and time.monotonic() < deadline:  # tqdm's postfix: gd seed 0 is done
        chunk = os.read(p.stderr.fileno(), 4096)
        if not chunk:
            break
        seen += chunk
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    stderr = (seen + stderr).decode()
    assert p.returncode == 130, stderr
    assert "Traceback" not in stderr and "Error: interrupted" in stderr, stderr
    with open(out / "metrics.csv", newline="") as fh:
        assert ("gd", "0") in {(r["optimizer"], r["seed"]) for r in csv.DictReader(fh)}
    assert "partial" in stdout.decode()


# ------------------------------------------------------------------------------- no tracebacks


def test_npz_with_text_labels_works_like_csv_text_labels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 3))
    f = tmp_path / "t.npz"
    np.savez(f, X=x, y=np.array(["a", "b", "c"])[np.arange(90) % 3])
    res = _invoke("compare", "--data", str(f), "--optimizers", "adam", "--epochs", "1", "--seeds", "1",
                  "--no-progress", "--out", str(tmp_path / "rep"))
    assert res.exit_code == 0 and "3 classes" in res.output, res.output
    res = _invoke("lr-find", "--data", str(f), "--num-steps", "20")
    assert "Traceback" not in res.output and "could not convert" not in res.output, res.output


@pytest.mark.parametrize("cmd, out", [(["compare", *TINY[:-3]], "o"), (["lr-find", "--subsample", "100"], "o.png")])
def test_a_model_too_large_for_memory_names_hidden(cmd, out, no_training, tmp_path):
    one_error(_invoke(*cmd, "--hidden", "100000000", "--out", str(tmp_path / out)), "--hidden", "memory")


@pytest.mark.parametrize("cmd, out", [(["compare", *TINY[:-3]], "o"), (["lr-find", "--subsample", "200"], "o.png")])
def test_a_cnn_too_large_for_memory_names_hidden(cmd, out, no_training, tmp_path):
    # one conv layer of 10⁶ channels on digits' 64 pixels: ~40 GB of activations, which the MLP estimate
    # (a 64 → 10⁶ → 10 MLP, ~2.5 GB) let through to training
    res = _invoke(*cmd, "--model", "cnn1d", "--hidden", "1000000", "--out", str(tmp_path / out))
    one_error(res, "--hidden", "memory", "1-D CNN")


def test_the_cnn_memory_estimate_counts_each_layers_channels_times_length():
    from descend.lab.train import model_bytes

    # (40 samples → 20 → 10 → 5) × channels (16, 16, 16): params (1·5+1)·16 + (16·5+1)·16·2 + (16·5+1)·10
    params = 6 * 16 + 81 * 16 * 2 + 81 * 10
    units = 40 + 16 * 20 + 16 * 10 + 16 * 5 + 10
    assert model_bytes(40, 10, (16, 16, 16), 4000, 32, "cnn1d") == 4 * (4 * params + 4000 * units * 2)
    assert model_bytes(40, 10, (16, 16, 16), 4000, 32, "cnn1d") > model_bytes(40, 10, (16, 16, 16), 4000, 32)


def test_a_memory_error_anywhere_is_one_line_naming_what_to_change(monkeypatch, tmp_path):
    def oom(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 25600000000 bytes.")
    monkeypatch.setattr(T, "train_run", oom)
    err = one_error(_invoke("compare", "--out", str(tmp_path / "o"), *TINY), "out of memory")
    assert "--hidden" in err and "--batch-size" in err


def test_pictures_are_written_with_ordinary_permissions(tmp_path):
    out = tmp_path / "s.png"
    res = _invoke("schedule", "cosine", "--init", "0.1", "--total-steps", "10", "--out", str(out))
    assert res.exit_code == 0, res.output
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["s.png"]  # no temporary file left
