"""The tuning harness (descend.lab.tune, `descend tune`) end to end on tiny settings: the grid, successive
halving's bookkeeping, the same results from every backend (this process, processes, Ray), the
user-model paths (tensors and a Dataset), MNIST-1D offline and the 1-D CNN."""

import base64
import csv
import math
import re
import socket

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from descend.cli import main
from descend.lab import data as D
from descend.lab import train as T
from descend.lab import tune as U


@pytest.fixture(scope="module")
def tiny():
    return D.load("digits", subsample=200)


def _trace(res):
    """Everything a search saw, comparable across backends (floats compared exactly)."""
    return [(r.trial.label, r.trial.hp["lr"], r.trial.seed, r.trial.epochs, r.metrics, r.diverged_epoch)
            for t in res.tunings for r in t.trials]


# ------------------------------------------------------------------------------- the grid


def test_grid_is_eight_half_decades_around_the_default():
    g = U.grid(1e-3)
    assert len(g) == 8 and g[3] == 1e-3
    ratios = [b / a for a, b in zip(g, g[1:])]
    assert all(r == pytest.approx(10 ** 0.5, rel=1e-9) for r in ratios)
    assert g[0] == pytest.approx(1e-3 / 10 ** 1.5) and g[-1] == pytest.approx(0.1)
    assert U.grid(0.1, points=3, step=10) == [0.01, 0.1, 1.0]
    lg = U.log_grid(1e-4, 1e-1, 4)
    assert lg == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])
    for bad, name in [(lambda: U.grid(0.0), "center"), (lambda: U.grid(1e-3, points=0), "points"),
                      (lambda: U.grid(1e-3, step=1.0), "step"), (lambda: U.log_grid(1e-2, 1e-3), "high")]:
        with pytest.raises(ValueError, match=name):
            bad()


def test_tune_grid_uses_each_optimizers_default_as_centre(tiny):
    res = U.tune(tiny, ["gd", "adam"], epochs=1, hidden=(4,))
    assert res["gd"].lrs == U.grid(T.DEFAULT_HYPERPARAMETERS["gd"]["lr"])
    assert res["adam"].lrs == U.grid(T.DEFAULT_HYPERPARAMETERS["adam"]["lr"])
    t = res["adam"]
    assert t.runs == 8 and t.epochs == 8 and t.rungs == [(8, 1)]
    assert t.best_lr == max(t.lrs, key=lambda v: t.scores[v])
    assert t.best_mean == t.scores[t.best_lr] and t.seconds > 0


# ------------------------------------------------------------------------------- successive halving


def test_halving_budgets():
    assert U.halving_budgets(8, 20, 2) == [(8, 3), (4, 5), (2, 10), (1, 20)]
    assert U.halving_budgets(9, 27, 3) == [(9, 3), (3, 9), (1, 27)]
    b = U.halving_budgets(8, 3, 2)  # fewer epochs than rungs need: budgets still grow, capped at the run
    assert [n for n, _ in b] == [8, 4, 2, 1] and b[-1] == (1, 3) and all(x[1] <= y[1] for x, y in zip(b, b[1:]))
    with pytest.raises(ValueError, match="rate"):
        U.halving_budgets(8, 20, 1)


def test_halving_bookkeeping_and_continuation_is_exact(tiny):
    lrs = [1e-4, 1e-3, 1e-2, 1e-1]
    res = U.tune(tiny, ["adam"], search="halving", lrs=lrs, epochs=4, seeds=2, hidden=(8,))
    t = res["adam"]
    assert t.rungs == [(4, 1), (2, 2), (1, 4)]
    # every rung trains its survivors on every seed: 4·2 + 2·2 + 1·2 segments, 4·2·1 + 2·2·1 + 1·2·2 epochs
    assert len(t.trials) == 8 + 4 + 2 and t.runs == 8
    assert t.epochs == sum(r.epochs_run for r in t.trials) == 8 + 4 + 4
    # the survivors of each rung are the best-scoring ones of the rung before
    rung1 = sorted(lrs, key=lambda v: -np.mean([r.metrics[1] for r in t.trials if r.trial.hp["lr"] == v][:2]))[:2]
    assert {lr for lr in lrs if t.budget[lr] >= 2} == set(rung1)
    assert t.budget[t.best_lr] == 4
    # a survivor continued from its checkpoints ends exactly where one uninterrupted run ends
    one = U.tune(tiny, ["adam"], lrs=[t.best_lr], epochs=4, seeds=2, hidden=(8,))
    assert one["adam"].finals[t.best_lr] == t.finals[t.best_lr]
    assert one["adam"].trials[0].metrics == [r for r in t.trials if r.trial.hp["lr"] == t.best_lr][-2].metrics


# ------------------------------------------------------------------------------- the protocol


def test_a_trial_is_the_labs_train_run(tiny):
    res = U.tune(tiny, ["momentum"], lrs=[0.03], epochs=3, seeds=[1], hidden=(8,))
    torch.set_num_threads(1)
    run = T.train_run(tiny, "momentum", T.hyperparameters_for("momentum", {"lr": 0.03}), seed=1, epochs=3, hidden=(8,))
    assert res["momentum"].trials[0].metrics == [row["val_metric"] for row in run.rows]


def test_divergence_is_caught_and_never_best(tiny):
    res = U.tune(tiny, ["gd"], lrs=[0.1, 1e4], epochs=2, hidden=(8,))
    t = res["gd"]
    assert t.diverged[1e4] == 1 and t.scores[1e4] == -math.inf and t.best_lr == 0.1


class _Rows(torch.utils.data.Dataset):
    """A plain map-style Dataset (not a TensorDataset): items are collated by the harness."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def _user_problem(as_dataset: bool, metric="loss"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(96, generator=g)
    tr, va = (x[:64], y[:64]), (x[64:], y[64:])
    if as_dataset:
        tr, va = _Rows(*tr), _Rows(*va)
    return U.Problem(model=lambda: nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)),
                     loss=lambda out, t: nn.functional.mse_loss(out.squeeze(-1), t), train=tr, val=va,
                     metric=metric, batch_size=16, name="user")


def test_user_model_on_tensors_and_on_a_dataset_agree():
    a = U.tune(_user_problem(False), ["adam", "gd"], lrs=[1e-2, 1e-1], epochs=3, seeds=2)
    b = U.tune(_user_problem(True), ["adam", "gd"], lrs=[1e-2, 1e-1], epochs=3, seeds=2)
    assert _trace(a) == _trace(b)
    assert a.metric_name == "validation loss" and not a.higher_is_better
    t = a["adam"]
    assert t.best_lr == min(t.lrs, key=lambda v: np.mean(t.finals[v]))  # lower loss is better
    r2 = U.tune(_user_problem(False, "r2"), {"sgd": lambda p, lr: torch.optim.SGD(p, lr=lr)}, lrs=[0.05], epochs=3)
    assert r2["sgd"].best_mean > 0.5  # a torch optimizer from a factory, scored by R²


def test_bad_problems_and_arguments_fail_before_training(tiny):
    with pytest.raises(ValueError, match="metric"):
        _user_problem(False, metric="f1")
    with pytest.raises(TypeError, match="Dataset"):
        U.Problem(model=nn.Linear, loss=nn.functional.mse_loss, train=[1, 2, 3], val=None)
    for kw, name in [({"search": "random"}, "search"), ({"select": "last"}, "select"), ({"epochs": 0}, "epochs"), ({"jobs": 0}, "jobs"),
                     ({"lrs": [-1.0]}, "lrs"), ({"search": "halving", "rate": 1}, "rate")]:
        with pytest.raises(ValueError, match=name):
            U.tune(tiny, ["adam"], hidden=(4,), **kw)
    with pytest.raises(ValueError, match="picklable"):
        U.tune(tiny, {"sgd": lambda p, lr: torch.optim.SGD(p, lr=lr)}, lrs=[0.1], epochs=1, jobs=2, hidden=(4,))


@pytest.mark.parametrize("search", ["grid", "halving"])
def test_select_best_scores_each_run_by_its_best_epoch(tiny, search):
    kw = dict(search=search, lrs=[0.3, 1.0, 2.0], epochs=6, seeds=2, hidden=(8,))  # 2.0 peaks early
    final, best = U.tune(tiny, ["gd"], **kw)["gd"], U.tune(tiny, ["gd"], select="best", **kw)["gd"]
    if search == "grid":  # the same runs, scored otherwise (halving may keep other rates going)
        assert [r.metrics for r in best.trials] == [r.metrics for r in final.trials]
    by = {}
    for r in best.trials:  # the score at the largest budget each rate reached
        if r.trial.epochs == best.budget[r.trial.hp["lr"]]:
            by.setdefault(r.trial.hp["lr"], []).append(
                -math.inf if r.diverged_epoch is not None else max(r.metrics[1:]))
    for lr, vals in by.items():
        assert best.scores[lr] == (-math.inf if -math.inf in vals else pytest.approx(np.mean(vals)))
        assert best.finals[lr] == [r.metrics[-1] for r in best.trials  # finals stay the last epoch's
                                   if r.trial.hp["lr"] == lr and r.trial.epochs == best.budget[lr]]
    full = [lr for lr in best.lrs if best.budget[lr] == 6 and best.scores[lr] > -math.inf]
    assert best.best_lr == max(full, key=lambda v: best.scores[v])
    assert best.best_mean == pytest.approx(best.scores[best.best_lr]) and best.best_mean >= np.mean(best.finals[best.best_lr])
    assert any(best.scores[lr] > np.mean(best.finals[lr]) for lr in best.lrs)  # a run peaked before its last epoch
    assert best.heldout is None  # the halves are measured after the last epoch only


def test_select_best_for_a_loss_takes_the_lowest_epoch():
    res = U.tune(_user_problem(False), ["gd"], lrs=[0.3], epochs=5, select="best")
    (r,) = res["gd"].trials
    assert res["gd"].best_mean == pytest.approx(min(r.metrics[1:]))  # lower loss is better
    assert res.settings["select"] == "best"


# ------------------------------------------------------------------------------- backends


def test_sequential_processes_and_ray_give_identical_results(tiny):
    kw = dict(search="halving", lrs=[1e-3, 1e-2, 1e-1], epochs=3, seeds=2, hidden=(8,))
    seq = U.tune(tiny, ["adam", "momentum"], **kw)
    par = U.tune(tiny, ["adam", "momentum"], jobs=2, **kw)
    assert par.backend == "2 processes" and _trace(par) == _trace(seq)
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = U.tune(tiny, ["adam", "momentum"], ray=True, **kw)
    finally:
        ray.shutdown()
    assert on_ray.backend == "ray" and _trace(on_ray) == _trace(seq)


# ------------------------------------------------------------------------------- MNIST-1D and the CNN


def test_mnist1d_is_generated_offline(tmp_path, monkeypatch):
    pytest.importorskip("mnist1d")
    monkeypatch.setenv("DESCEND_CACHE_DIR", str(tmp_path))

    def no_network(*a, **k):
        raise AssertionError("MNIST-1D must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    np.random.seed(123)
    x, y, kind, _ = D.load_task("mnist1d")
    assert np.random.randint(1 << 30) == np.random.RandomState(123).randint(1 << 30)  # global RNG put back
    assert x.shape == (5000, 40) and kind == "classification" and sorted(np.unique(y)) == list(range(10))
    x2, y2, _, _ = D.load_task("mnist1d")  # from the cache file now
    assert np.array_equal(x, x2) and np.array_equal(y, y2) and list(tmp_path.glob("mnist1d-*.npz"))


def test_cnn1d_trains_a_step():
    model = T.make_model(40, 10, None, 0, "cnn1d")
    x, y = torch.randn(32, 40), torch.randint(0, 10, (32,))
    assert model(x).shape == (32, 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = nn.functional.cross_entropy(model(x), y).item()
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert nn.functional.cross_entropy(model(x), y).item() < before
    with pytest.raises(ValueError, match="model"):
        T.make_model(40, 10, model="rnn")
    assert isinstance(T.make_model(4, 2, (), 0), nn.Sequential)  # an MLP without hidden layers: linear


# ------------------------------------------------------------------------------- the command


def _cli(args):
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    return res, res.output


def test_tune_command_end_to_end(tmp_path):
    out = tmp_path / "trials.csv"
    res, text = _cli(["tune", "--subsample", "200", "--hidden", "4", "--epochs", "2", "--optimizers", "gd,adam",
                      "--lrs", "1e-3:1e-1", "--points", "3", "--no-progress", "--out", str(out)])
    assert res.exit_code == 0, text
    for word in ("optimizer", "best lr", "val accuracy at best", "held out", "runs", "epochs", "train time", "6 runs"):
        assert word in text
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and {r["optimizer"] for r in rows} == {"gd", "adam"}
    assert sorted({float(r["lr"]) for r in rows}) == pytest.approx([1e-3, 1e-2, 1e-1])


def test_tune_command_plot(tmp_path):
    """--plot: the metric against the rate, one line per optimizer, the chosen rate starred, × where a
    seed diverged (gd at 1e6); the figure is the result's own plot."""
    import matplotlib

    matplotlib.use("Agg")
    fig_path = tmp_path / "tune.png"
    res, text = _cli(["tune", "--subsample", "200", "--hidden", "4", "--epochs", "2", "--optimizers", "gd,adam",
                      "--lrs", "1e-2,1e-1,1e6", "--seeds", "2", "--no-progress", "--plot", str(fig_path)])
    assert res.exit_code == 0, text
    assert fig_path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_tune_result_plot_marks_the_choice_and_the_divergence():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = D.load("iris", subsample=120)
    problem = U.problem_from_data(data, "mlp", (4,), 32)
    res = U.tune(problem, ["gd", "adam"], lrs=[1e-2, 1e-1, 1e6], seeds=2, epochs=2, progress=False)
    fig = res.plot()
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    gd, adam = res["gd"], res["adam"]
    diverged = [t for t in res.tunings if t.scores[1e6] == -math.inf]
    assert gd in diverged
    x, y = lines["gd"].get_data()
    assert list(x) == [lr for lr in gd.lrs if math.isfinite(gd.scores[lr])] and list(y) == [gd.scores[lr] for lr in x]
    stars = [ln for ln in ax.get_lines() if ln.get_marker() == "*"]
    assert sorted(float(s.get_xdata()[0]) for s in stars) == sorted([gd.best_lr, adam.best_lr])
    crosses = [ln for ln in ax.get_lines() if ln.get_marker() == "x"]
    assert len(crosses) == len(diverged) and all(list(c.get_xdata()) == [1e6] for c in crosses)
    assert all(c.get_ydata()[0] == ax.get_ylim()[0] for c in crosses)  # on the lower edge
    assert ax.get_xscale() == "log" and "validation accuracy (last epoch)" == ax.get_ylabel()
    plt.close(fig)


def test_tune_command_select_best(tmp_path):
    res, text = _cli(["tune", "--subsample", "200", "--hidden", "4", "--epochs", "3", "--optimizers", "gd",
                      "--lrs", "1e-2,1", "--select", "best", "--no-progress"])
    assert res.exit_code == 0, text
    assert "val accuracy at best (best epoch)" in text and "held out" not in text


@pytest.mark.parametrize("args, words", [
    (["--select", "last"], "--select"),
    (["--ray", "--jobs", "2"], "not both"),
    (["--lrs", "1:0.1"], "--lrs"),
    (["--optimizers", "adam,nope"], "unknown optimizer"),
    (["--set", "adam.lr=-1", "--optimizers", "adam"], "lr"),
    (["--task", "nope"], "unknown task"),
    (["--model", "rnn"], "--model"),
    (["--out", "."], "--out"),
    (["--out", "trials.txt"], ".csv"),
    (["--plot", "tune.txt"], "--plot: 'tune.txt' must end in .png"),
    (["--plot", "no/such/folder/tune.png"], "does not exist"),
])
def test_tune_command_errors_are_one_line(args, words):
    res, text = _cli(["tune", "--subsample", "200", "--no-progress", *args])
    assert res.exit_code != 0
    lines = [ln for ln in text.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in text
    assert "runs," not in text  # nothing trained


def test_tune_command_without_ray_installed(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    res, text = _cli(["tune", "--ray", "--no-progress"])
    assert res.exit_code != 0 and "Error: --ray needs Ray: pip install 'descend[ray]'" in text


# ------------------------------------------------------------------------------- compare --tuned


def test_compare_tuned_table_and_report(tmp_path):
    out = tmp_path / "rep"
    res, text = _cli(["compare", "--tuned", "--subsample", "200", "--epochs", "2", "--seeds", "2", "--hidden", "4",
                      "--optimizers", "gd,adam", "--no-progress", "--out", str(out)])
    assert res.exit_code == 0, text
    auto = U._has_auto()
    labels = ["gd (tuned)", "adam (tuned)"] + (["gd (lr=auto)", "adam (lr=auto)"] if auto else [])
    for word in ["tuning cost", "8 runs, 16 epochs", *labels]:
        assert word in text
    if auto:
        assert "1 run (no search)" in text and 'lr="auto" in one run ended at' in text
    page = (out / "report.html").read_text()
    assert "tuning cost" in page and "the grid search over 8 rates" in page
    held = re.findall(r"scored (\d\.\d{3}) on the validation rows that chose it; chosen on one half of them and "
                      r"measured on the other, (\d\.\d{3})", text)
    assert len(held) == 2 and all(float(h) <= float(b) for b, h in held)  # per rule; held out never above
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["optimizer"] for r in rows} == set(labels) and len(rows) == len(labels) * 2 * 3
    tuned_lr = {float(r["lr"]) for r in rows if r["optimizer"] == "adam (tuned)"}
    assert len(tuned_lr) == 1 and tuned_lr.pop() in U.grid(T.DEFAULT_HYPERPARAMETERS["adam"]["lr"])
    # the search's picture: written, and on the page after the curves
    assert (out / "tuning.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert base64.b64decode(imgs[-1]) == (out / "tuning.png").read_bytes() and "Search: each rule's" in page


def test_tuning_figure_draws_each_search_and_where_lr_auto_ended():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from descend.lab import report as R

    data = D.load("iris", subsample=120)
    comp = U.compare_tuned(data, ["gd", "adam"], seeds=2, epochs=4, hidden=(4,), points=3)
    fig = R.tuning_figure(comp)
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    tuning = comp.settings["tuning"]
    for rule in ("gd", "adam"):
        t = tuning[f"{rule} (tuned)"]
        x, y = lines[f"{rule}: the search"].get_data()
        assert list(x) == [lr for lr, v in t["curve"] if v is not None] and len(x) == 3
        if U._has_auto():
            runs = comp.runs_of(f"{rule} (lr=auto)")
            ends = [float(r["lr"]) for run in runs for r in run.rows[1:][-1:]]  # 4 epochs: the last quarter is one
            (dx,), (dy,) = lines[f"{rule}: lr=auto, one run"].get_data()
            assert dx == pytest.approx(float(np.median(ends)))
            assert dy == pytest.approx(np.mean([run.rows[-1]["val_metric"] for run in runs]))
    stars = [ln for ln in ax.get_lines() if ln.get_marker() == "*"]
    assert sorted(float(s.get_xdata()[0]) for s in stars) == sorted(tuning[f"{r} (tuned)"]["lr"] for r in ("gd", "adam"))
    plt.close(fig)
    plain = T.compare(data, ["gd"], seeds=1, epochs=1, hidden=(4,))
    assert R.tuning_figure(plain) is None  # no search: no figure


def test_compare_tuned_select_best_picks_and_compares_by_the_best_epoch(tmp_path, monkeypatch):
    real, seen = U.tune, []

    def spy(*a, **k):
        seen.append(k.get("select"))
        res = real(*a, **k)
        seen.append(res)
        return res

    monkeypatch.setattr(U, "tune", spy)
    out = tmp_path / "rep"
    res, text = _cli(["compare", "--tuned", "--select", "best", "--subsample", "200", "--epochs", "3", "--seeds", "1",
                      "--hidden", "4", "--optimizers", "adam", "--no-progress", "--out", str(out)])
    assert res.exit_code == 0, text
    assert seen[0] == "best"
    tuning = seen[1].tunings[0]
    # the rate it trains at is the one whose runs scored best at their best epoch (tune's scores then)
    assert seen[1].settings["select"] == "best" and tuning.best_lr == max(tuning.scores, key=tuning.scores.get)
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {float(r["lr"]) for r in rows if r["optimizer"] == "adam (tuned)" and r["epoch"] != "0"} == {tuning.best_lr}
    assert f"picked lr={tuning.best_lr:.2g} by each run's best epoch" in text
    if U._has_auto():
        best = {r["optimizer"]: max(float(x["val_metric"]) for x in rows if x["optimizer"] == r["optimizer"]
                                    and x["epoch"] != "0") for r in rows}
        assert (f'lr="auto" in one run reached at its best epoch {best["adam (lr=auto)"]:.3f} against '
                f'{best["adam (tuned)"]:.3f}') in text


def test_compare_select_needs_tuned_and_a_known_value(monkeypatch):
    monkeypatch.setattr(U, "tune", lambda *a, **k: pytest.fail("trained before the error"))
    monkeypatch.setattr(T, "compare", lambda *a, **k: pytest.fail("trained before the error"))
    res, text = _cli(["compare", "--select", "best", "--subsample", "200", "--no-progress"])
    assert res.exit_code != 0 and text.count("Error:") == 1 and "--select" in text and "--tuned" in text
    assert "Traceback" not in text
    with pytest.raises(ValueError, match="select='nope'"):
        U.compare_tuned(D.load("iris"), ["adam"], select="nope")


@pytest.mark.parametrize("spec, words", [("reduce_on_plateau", "reduce_on_plateau"), ("nope", "unknown schedule")])
def test_compare_tuned_errors_before_training(spec, words, monkeypatch):
    monkeypatch.setattr(U, "tune", lambda *a, **k: pytest.fail("trained before the error"))
    res, text = _cli(["compare", "--tuned", "--schedule", spec, "--subsample", "200", "--no-progress"])
    assert res.exit_code != 0 and text.count("Error:") == 1 and words in text and "Traceback" not in text


def test_compare_tuned_with_a_schedule(tmp_path):
    """The search tunes the cosine's peak, the tuned rows train with it, and lr="auto" takes its shape."""
    out = tmp_path / "rep"
    res, text = _cli(["compare", "--tuned", "--schedule", "cosine", "--subsample", "200", "--epochs", "3", "--seeds", "1",
                      "--hidden", "4", "--optimizers", "adam", "--no-progress", "--out", str(out)])
    assert res.exit_code == 0, text
    with open(out / "metrics.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["epoch"] != "0"]
    labels = ["adam (tuned)"] + (["adam (lr=auto)"] if U._has_auto() else [])
    for label in labels:
        lrs = [float(r["lr"]) for r in rows if r["optimizer"] == label]
        assert len(lrs) == 3 and lrs[-1] < 0.05 * max(lrs), (label, lrs)  # the cosine ends near 0
    tuned = [float(r["lr"]) for r in rows if r["optimizer"] == "adam (tuned)"]
    assert tuned[0] < max(U.grid(T.DEFAULT_HYPERPARAMETERS["adam"]["lr"]))  # a tuned peak, on its way down
    assert "cosine" in (out / "report.html").read_text()


# ------------------------------------------------------------------------------- held-out selection


@pytest.mark.parametrize("task", ["iris", "diabetes"])
def test_half_metrics_split_the_validation_rows_and_average_to_the_metric(task):
    prob = U.problem_from_data(D.load(task), "mlp", (8,), 32)
    a, b = prob.halves()
    n = prob._val.n
    assert sorted(torch.cat([a, b]).tolist()) == list(range(n))  # disjoint, and every row once
    assert abs(len(a) - len(b)) <= 1
    if prob.metric == "accuracy":  # stratified: each class split evenly
        y = torch.as_tensor(prob._val.y)
        for c in y.unique():
            assert abs(int((y[a] == c).sum()) - int((y[b] == c).sum())) <= 1
    res = U.run_trial(prob, U.Trial("adam", "adam", (("lr", 1e-2),), 0, 2, 2))
    assert res.halves is not None and len(res.halves) == 2
    pooled = (len(a) * res.halves[0] + len(b) * res.halves[1]) / n
    assert pooled == pytest.approx(res.final, abs=1e-6)
    assert res.halves[0] != res.halves[1]  # two different sets of rows


def test_half_metrics_none_where_they_do_not_add_up(tiny):
    import dataclasses

    prob = dataclasses.replace(U.problem_from_data(tiny, "mlp", (8,), 32), metric="loss")
    assert prob.halves() is None
    res = U.run_trial(prob, U.Trial("adam", "adam", (("lr", 1e-2),), 0, 1, 1))
    assert res.halves is None


def test_heldout_best_chooses_on_one_half_and_reports_the_other():
    # half 0 prefers rate "a", half 1 prefers "b"; "c" is best on both but diverged on one seed
    results = {"a": [(0.8, [0.9, 0.7]), (0.8, [0.9, 0.7])],
               "b": [(0.75, [0.6, 0.9]), (0.75, [0.6, 0.9])],
               "c": [(0.99, [0.99, 0.99]), (-math.inf, None)]}
    metric, chosen = U.heldout_best(results, (10, 30))
    assert chosen == ("b", "a")  # reported on half 0: chosen on half 1 (b); on half 1: chosen on half 0 (a)
    assert metric == pytest.approx((10 * 0.6 + 30 * 0.7) / 40)
    # the full-split choice ("a", 0.8) reported on the rows that chose it is higher: selection bias
    assert metric < 0.8
    assert U.heldout_best({"a": [(0.8, None)]}, (10, 30)) is None
    assert U.heldout_best({"c": [(-math.inf, None)]}, (10, 30)) is None


def test_grid_search_reports_its_heldout_metric(tiny):
    res = U.tune(tiny, ["adam"], lrs=[1e-3, 1e-2, 1e-1], seeds=2, epochs=2, hidden=(8,))
    t = res["adam"]
    prob = U.problem_from_data(tiny, "mlp", (8,), 32)
    a, b = prob.halves()
    want = U.heldout_best({lr: [(r.final, r.halves) for r in t.trials if r.trial.hp["lr"] == lr] for lr in t.lrs},
                          (len(a), len(b)))
    assert t.heldout == pytest.approx(want[0]) and 0 < t.heldout <= 1
    assert t.heldout <= t.best_mean + 1e-12  # choosing on other rows cannot beat the best on the same rows
    halving = U.tune(tiny, ["adam"], lrs=[1e-3, 1e-2, 1e-1, 1.0], search="halving", seeds=1, epochs=2, hidden=(8,))
    assert halving["adam"].heldout is None  # the rates cut early have no full-run halves
