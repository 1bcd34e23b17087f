"""The report: metrics.csv, the figures, a self-contained report.html (no URL of any kind), the
reading of hand-made results, and (when chromium is installed) a real headless-browser render."""

import base64
import csv
import math
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from descend.lab import data as D
from descend.lab import report as R
from descend.lab import train as T

PNG = b"\x89PNG\r\n\x1a\n"


def _fake(finals: dict[str, list[float]], diverged: dict[str, int] | None = None, epochs: int = 4) -> T.Comparison:
    """A comparison with known numbers: run (opt, seed) climbs linearly from 0.1 to its final accuracy."""
    rng = np.random.default_rng(0)
    data = D.prepare(rng.normal(size=(400, 3)), np.arange(400) % 2, name="toy")  # 80 validation rows
    runs = []
    for name, vals in finals.items():
        for seed, final in enumerate(vals):
            run = T.Run(name, seed, {"lr": 0.1})
            for e in range(epochs + 1):
                m = 0.1 + (final - 0.1) * e / epochs
                run.rows.append(dict(optimizer=name, seed=seed, epoch=e, train_loss=1.0 / (1 + e),
                                     val_loss=1.2 / (1 + e), val_metric=m, lr=0.1, seconds=0.5 * e))
            if diverged and seed < diverged.get(name, 0):
                run.rows = run.rows[:2]
                run.rows[-1].update(train_loss=math.inf, val_loss=math.nan, val_metric=math.nan)
                run.diverged_epoch = 1
            runs.append(run)
    settings = dict(task="toy", kind="classification", metric="accuracy", optimizers=list(finals),
                    seeds=list(range(len(next(iter(finals.values()))))), epochs=epochs, batch_size=8, hidden=[4],
                    schedule=None, divergence_factor=1e3, train_rows=320, val_rows=80, n_features=3)
    return T.Comparison(data=data, runs=runs, settings=settings, goal=0.8)


def test_reading_names_the_winner_the_gap_and_the_diverged():
    comp = _fake({"adam": [0.95, 0.97, 0.96], "gd": [0.90, 0.92, 0.91], "lion": [0.5, 0.5, 0.5]}, {"lion": 3})
    text = " ".join(R.reading(comp))
    assert "adam ended with the best validation accuracy, 0.960" in text
    assert "gd, reached 0.910: 5.0 percentage points behind" in text and "consistent" in text
    assert "lion (lr=0.1) diverged in 3 of 3 seeds, first at epoch 1" in text
    # epochs to 0.8: adam's seeds reach 0.8 at epoch 4·0.7/0.85.. → first epoch with m ≥ 0.8
    first = [next(e for e in range(5) if 0.1 + (f - 0.1) * e / 4 >= 0.8) for f in (0.95, 0.97, 0.96)]
    assert f"Fastest to validation accuracy ≥ 0.800 in every seed: adam ({np.mean(first):.1f} epochs" in text


def test_reading_says_when_the_lead_is_within_the_spread():
    comp = _fake({"rmsprop": [0.90, 0.96, 0.93], "adagrad": [0.93, 0.92, 0.92]})
    text = " ".join(R.reading(comp))
    assert "rmsprop and adagrad tied for the best validation accuracy, 0.923 to 0.930" in text
    assert "within the seed-to-seed spread (standard deviation up to 0.030)" in text and "not clearly apart" in text
    assert "No run diverged." in text


def test_table_marks_divergence():
    comp = _fake({"gd": [0.9, 0.9], "adam": [0.9, 0.8]}, {"gd": 1})
    head, rows = R.table_rows(comp)
    assert head[0] == "optimizer" and rows[0][-1] == "diverged 1/2 (epoch 1)" and rows[1][-1] == "ok"
    assert rows[0][2] == "0.900 ± 0.000"  # the mean of the seed that did not diverge
    assert "diverged 1/2" in R.table_text(comp)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    data = D.load("digits", subsample=200)
    comp = T.compare(data, ["gd", "adam"], hyperparameters={"gd": {"lr": 1e6}}, seeds=2, epochs=2, hidden=(8,),
                     schedule="warmup_cosine:warmup_steps=3")  # long cells, as a real report has
    out = tmp_path_factory.mktemp("report")
    return comp, R.write_report(comp, out, command="descend compare --test"), out


def test_files_and_csv(written):
    comp, paths, out = written
    assert {p.name for p in out.iterdir()} == {"metrics.csv", "report.html", "val_metric.png", "train_loss.png",
                                              "lr.png", "compare.png"}
    with open(paths["metrics.csv"], newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["optimizer", "seed", "epoch", "train_loss", "val_loss", "val_metric", "lr", "seconds"]
    assert len(rows) - 1 == len(comp.rows) == 2 * 2 + 2 * 3  # gd diverged at epoch 1 in both seeds
    for line, row in zip(rows[1:], comp.rows):
        assert line[0] == row["optimizer"] and int(line[1]) == row["seed"] and int(line[2]) == row["epoch"]
        for k, v in zip(T.CSV_COLUMNS[3:], line[3:]):
            assert float(v) == row[k] or (math.isnan(float(v)) and math.isnan(row[k]))
    for name in ("val_metric.png", "train_loss.png", "lr.png", "compare.png"):
        assert paths[name].read_bytes().startswith(PNG)


def test_html_is_self_contained(written):
    _, paths, _ = written
    page = paths["report.html"].read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"(https?|ftp)://", page, re.I)  # no URL at all
    assert not re.search(r"""(src|href)\s*=\s*(?!["']?data:)""", page, re.I)  # only data: sources
    assert "@import" not in page and "url(" not in page
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(imgs) == 3  # the schedule changes adam's rate: the learning-rate figure is on the page
    embedded = [base64.b64decode(s) for s in imgs]
    assert embedded[0] == paths["val_metric.png"].read_bytes() and embedded[1] == paths["train_loss.png"].read_bytes()
    assert embedded[2] == paths["lr.png"].read_bytes() and "Learning rate: the rate each epoch" in page
    assert "diverged 2/2 (epoch 1)" in page and "descend compare --test" in page
    assert "gd (lr=1e+06) diverged in 2 of 2 seeds" in page


def test_lr_figure_only_where_a_rate_changed(tmp_path):
    """lr.png is always written; the page shows it where some run's rate changed over its epochs."""
    flat = _fake({"gd": [0.9, 0.8], "adam": [0.85, 0.9]})
    assert not R.lr_varies(flat)
    paths = R.write_report(flat, tmp_path / "flat")
    page = paths["report.html"].read_text(encoding="utf-8")
    assert paths["lr.png"].read_bytes().startswith(PNG)
    assert len(re.findall("data:image/png", page)) == 2 and "Learning rate:" not in page
    rising = _fake({"gd": [0.9, 0.8], "adam": [0.85, 0.9]})
    for run in rising.runs_of("adam")[:1]:  # one seed's rate grows: lr="auto"
        for row in run.rows:
            row["lr"] = 0.0 if row["epoch"] == 0 else 1e-3 * 2 ** row["epoch"]
    assert R.lr_varies(rising)
    paths = R.write_report(rising, tmp_path / "rising")
    assert len(re.findall("data:image/png", paths["report.html"].read_text(encoding="utf-8"))) == 3


def test_lr_figure_leaves_out_zero_on_its_log_axis():
    """lr="auto" shows 0 before its first step: that epoch is a gap on the log axis, not a plunge."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comp = _fake({"adam": [0.9, 0.9]})
    for run in comp.runs:
        for row in run.rows:
            row["lr"] = 0.0 if row["epoch"] == 0 else 1e-3 * (1 + row["epoch"])
    fig = R.lr_figure(comp)
    ax = fig.axes[0]
    x, y = ax.get_lines()[0].get_data()
    assert ax.get_yscale() == "log" and list(x) == [0, 1, 2, 3, 4]
    assert math.isnan(y[0]) and np.allclose(y[1:], [2e-3, 3e-3, 4e-3, 5e-3])
    assert ax.get_ylim()[0] > 1e-4  # the axis is set by the positive values
    plt.close(fig)


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _headless(*flags, width: int, height: int = 1600) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp()
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", f"--window-size={width},{height}", *flags]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=60, text=True)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.skipif(_chromium() is None, reason="no chromium here (see scripts/check_report_in_browser.sh)")
@pytest.mark.parametrize("width", [700, 1280])
def test_renders_in_headless_chromium_without_sideways_scrolling(written, width):
    _, paths, out = written
    shot = Path(tempfile.mkdtemp()) / "shot.png"
    _headless(f"--screenshot={shot}", "--hide-scrollbars", paths["report.html"].resolve().as_uri(), width=width)
    assert shot.is_file() and shot.read_bytes().startswith(PNG)
    import matplotlib.image

    img = matplotlib.image.imread(str(shot))
    assert img.shape[0] >= 1000 and img.shape[1] == width
    # not a blank page: dark text pixels and coloured figure pixels are both there
    rgb = img[..., :3]
    assert (rgb.mean(axis=2) < 0.3).mean() > 0.002
    assert (rgb.max(axis=2) - rgb.min(axis=2) > 0.3).mean() > 0.002
    # no horizontal scroll: a copy of the page with a script that writes the page's width into its title
    probe = Path(tempfile.mkdtemp()) / "probe.html"
    page = paths["report.html"].read_text(encoding="utf-8")
    probe.write_text(page.replace("</body>", "<script>document.title = 'W' + document.documentElement.scrollWidth"
                                            " + '/' + document.documentElement.clientWidth;</script></body>"),
                     encoding="utf-8")
    dom = _headless("--dump-dom", probe.as_uri(), width=width).stdout
    m = re.search(r"<title>W(\d+)/(\d+)</title>", dom)
    assert m, dom[:300]
    scroll, client = int(m.group(1)), int(m.group(2))
    assert client > 0.8 * width and scroll <= client, (scroll, client)
