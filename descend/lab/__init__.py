"""The lab: test problems, trajectories, pictures, training comparisons and the report.

The lab uses the core (``descend``); the core never imports the lab.
"""

# problems and trajectory are light (torch only) and imported now: that also makes ``lab.problems`` and
# ``lab.trajectory`` the functions, not the submodules of the same names. The pictures need matplotlib
# (about a second to import), so they load on first use.
from descend.lab.data import Data, DataError
from descend.lab.data import load as load_data
from descend.lab.problems import Problem, problem, problems, quadratic
from descend.lab.report import write_report
from descend.lab.train import Comparison, compare
from descend.lab.trajectory import Trajectory, trajectory

__all__ = ["Problem", "problem", "problems", "quadratic", "Trajectory", "trajectory", "Data", "DataError",
           "load_data", "write_report", "Comparison", "compare", "contour_paths", "loss_curves",
           "race_figure", "race_gif"]

_PLOTS = ("contour_paths", "loss_curves", "race_figure", "race_gif")


def __getattr__(name: str):
    if name in _PLOTS:
        from descend.lab import plots

        return getattr(plots, name)
    if name == "tune":  # the tuning harness (descend.lab.tune), imported on first use
        import importlib

        return importlib.import_module("descend.lab.tune")
    raise AttributeError(f"module 'descend.lab' has no attribute {name!r}")
