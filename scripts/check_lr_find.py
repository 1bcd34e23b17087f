"""How good is lr_find's suggestion? Measured by the tuning harness, against each rule's 8-point grid.

For each task, rule and seed: descend.lr_find (1e-7 → 10, 100 steps, batch 32) on the seed's fresh
model, then one run at its suggestion, with the protocol of descend.lab.tune (the same weights and
batches as the grid's runs); printed: the suggestion (median over seeds), the grid's best rate, the
final validation metric at each (mean over seeds) and the gap in points. It shares
scripts/tuning_table.py's cache (the grid runs are reused; lr_find's are keyed by its code).

    nice -n 10 python scripts/check_lr_find.py                       # digits, breast_cancer, diabetes; 3 seeds
    python scripts/check_lr_find.py --tasks iris,wine --seeds 2 --jobs 2
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tuning_table  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    if not any(a.startswith("--tasks") for a in args):
        args += ["--tasks", "digits,breast_cancer,diabetes"]
    if not any(a.startswith("--seeds") for a in args):
        args += ["--seeds", "3"]
    sys.argv = [sys.argv[0], *args, "--methods", "grid,lrfind", "--lr-find"]
    tuning_table.main()
