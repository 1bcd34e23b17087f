"""``descend race``: the table, the pictures, hyperparameters from the command line, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from descend import lab
from descend.cli import main
from descend.cli.options import parse_assignment, parse_value


def race(*args):
    return CliRunner().invoke(main, ["race", *args])


def rows(output):
    """The table's rows as {optimizer: [cells]} (cells split on runs of 2+ spaces)."""
    import re

    lines = output.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("---")) + 1
    out = {}
    for ln in lines[start:]:
        if ln.startswith("wrote "):
            break
        cells = re.split(r"\s{2,}", ln.strip())
        out[cells[0]] = cells[1:]
    return out


def test_race_png_table_matches_the_trajectories(tmp_path):
    out = tmp_path / "race.png"
    r = race("--function", "booth", "--optimizers", "gd,momentum", "--steps", "120", "--start", "-8,8",
             "--lr", "0.02", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = rows(r.output)
    assert list(table) == ["gd", "momentum"]
    for name in table:
        t = lab.trajectory("booth", name, 120, start=(-8.0, 8.0), lr=0.02)
        hp, final, dist, hit = table[name]
        assert hp == "lr=0.02"
        assert float(final) == pytest.approx(t.final_loss, rel=1e-3)
        assert float(dist) == pytest.approx(t.distance_to_minimum(), rel=1e-3)
        assert hit == (str(t.steps_to(1e-3)) if t.steps_to(1e-3) is not None else "not reached")
    assert f"wrote {out}" in r.output


def test_race_gif(tmp_path):
    from PIL import Image

    out = tmp_path / "race.gif"
    r = race("--function", "double_well", "--optimizers", "gd,momentum", "--steps", "40", "--start", "2",
             "--lr", "0.01", "--frames", "8", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert out.stat().st_size < 2_000_000
    with Image.open(out) as im:
        assert im.format == "GIF" and im.n_frames >= 8


def test_hyperparameters_from_the_command_line_and_their_precedence(tmp_path):
    r = race("--function", "quadratic", "--optimizers", "gd,momentum,adam", "--steps", "3", "--lr", "0.01",
             "--set", "lr=0.015", "--set", "momentum.lr=0.005", "--set", "momentum.momentum=0.5",
             "--set", "adam.betas=0.8,0.99", "--set", "ADAM.amsgrad=true", "--out", str(tmp_path / "r.png"))
    assert r.exit_code == 0, r.output
    table = rows(r.output)
    assert table["gd"][0] == "lr=0.015"
    assert table["momentum"][0] == "lr=0.005 momentum=0.5"
    assert table["adam"][0] == "lr=0.015 betas=0.8,0.99 amsgrad=True"
    # the defaults without --lr: the problem's η for each family
    r = race("--function", "quadratic", "--optimizers", "gd,adam", "--steps", "3", "--out", str(tmp_path / "r.png"))
    prob = lab.problem("quadratic")
    assert rows(r.output)["gd"][0] == f"lr={prob.lr_gd:g}" and rows(r.output)["adam"][0] == f"lr={prob.lr_adaptive:g}"


def test_a_schedule_drives_every_optimizer_s_lr(tmp_path):
    from descend.lab.train import make_schedule

    args = ("--function", "quadratic", "--optimizers", "gd,adam", "--steps", "30", "--lr", "0.05",
            "--out", str(tmp_path / "r.png"))
    plain = rows(race(*args).output)
    r = race(*args, "--schedule", "warmup_cosine:warmup_steps=10")
    assert r.exit_code == 0, r.output
    table = rows(r.output)
    for name in ("gd", "adam"):
        assert table[name][0].startswith("lr=warmup_cosine(peak=0.05, warmup_steps=10, total_steps=30")
        t = lab.trajectory("quadratic", name, 30, lr=make_schedule("warmup_cosine:warmup_steps=10", 0.05, 30))
        assert float(table[name][1]) == pytest.approx(t.final_loss, rel=1e-3)
        assert table[name][1] != plain[name][1]


def test_a_diverging_run_is_marked_and_the_others_finish(tmp_path):
    r = race("--function", "rosenbrock", "--optimizers", "gd,adam", "--steps", "50", "--set", "gd.lr=1",
             "--out", str(tmp_path / "r.png"))
    assert r.exit_code == 0, r.output
    table = rows(r.output)
    assert table["gd"][1].startswith("diverged at step")
    assert float(table["adam"][1]) < 12.5  # f at the start (−1.5, 2) is 12.5
    assert (tmp_path / "r.png").exists()


def test_parse_value_and_assignment():
    assert parse_value("3") == 3 and isinstance(parse_value("3"), int)
    assert parse_value("1e-3") == 1e-3 and parse_value("-.5") == -0.5
    assert parse_value("0.9, 0.999") == (0.9, 0.999)
    assert parse_value("True") is True and parse_value("false") is False
    assert parse_assignment("Momentum.lr = 0.002") == ("momentum", "lr", 0.002)
    assert parse_assignment("lr=2") == (None, "lr", 2)
    for bad in ["abc", "1e", "0.9,x", ""]:
        with pytest.raises(ValueError):
            parse_value(bad)
    for bad in ["lr", "=3", "a.b.c=1", "momentum.lr="]:
        with pytest.raises(ValueError):
            parse_assignment(bad)


@pytest.mark.parametrize("args, code, words", [
    (["--function", "nope"], 2, ["nope", "rosenbrock", "double_well", "himmelblau"]),
    (["--optimizers", "gd,sgdd"], 2, ["sgdd", "adam", "momentum", "adagrad"]),
    (["--optimizers", "gd,gd"], 2, ["twice"]),
    (["--set", "lr"], 2, ["--set", "KEY=VALUE"]),
    (["--set", "lr=fast"], 2, ["--set", "fast"]),
    (["--set", "adam.lr=0.1"], 2, ["adam", "not among the optimizers"]),
    (["--set", "gd.momentum=0.9"], 1, ["gd", "momentum", "takes lr"]),
    (["--set", "gd.lr=-1"], 1, ["gd", "lr=-1"]),
    (["--start", "1,2,3"], 2, ["--start", "3 coordinate", "needs 2"]),
    (["--start", "a,b"], 2, ["--start", "a,b"]),
    (["--steps", "-3"], 2, ["--steps"]),
    (["--out", "race.txt"], 2, ["--out", ".png or .gif"]),
    (["--schedule", "nope"], 2, ["--schedule", "nope", "warmup_cosine"]),
    (["--schedule", "cosine:bogus=1"], 2, ["--schedule", "bogus"]),
    (["--out", "/no/such/folder/r.png"], 2, ["--out", "does not exist"]),
])
def test_bad_input_is_one_clear_error_without_traceback(args, code, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = race("--optimizers", "gd", "--steps", "2", *args) if "--optimizers" not in args else race("--steps", "2", *args)
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit)
    error = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert len(error) == 1
    for w in words:
        assert w in error[0], (w, error[0])
    assert not (tmp_path / "race.png").exists()


def test_the_installed_entry_point(tmp_path):
    """The real ``descend`` console script (as CI and users run it): success and a user error."""
    script = Path(sys.executable).parent / "descend"  # the console script pip installed beside python
    exe = [str(script)] if script.exists() else [sys.executable, "-c", "from descend.cli import main; main()"]
    ok = subprocess.run([*exe, "race", "--function", "saddle", "--optimizers", "gd,adam", "--steps", "10",
                         "--out", "s.png"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "s.png").exists() and "saddle" in ok.stdout
    bad = subprocess.run([*exe, "race", "--optimizers", "gd,nope"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "nope" in bad.stderr
