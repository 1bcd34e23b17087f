"""Benchmark: every optimizer's step against the machine's memory-bandwidth limit.

    python -m descend.bench                 # everything (about 10 minutes on 2 cores)
    python -m descend.bench --quick         # smaller sizes, fewer repeats
    python -m descend.bench --optimizers adam,lion --layouts big

The limit is an in-place ``a.add_(b)`` over 50M float32 values (reads 8 and writes 4 bytes per
element). A rule's bandwidth counts the bytes it must move at least: θ and g read, θ written, each
state tensor read and written — 4·(3 + 2·k) bytes per float32 parameter with k state tensors (Adam: 28).
This machine is shared and its bandwidth drifts by ±30% within minutes, so every measurement is taken
in rounds: one add_ over the 50M limit arrays, add_ over the layout's own tensors
(``torch._foreach_add_``), optimizer steps, the limit's add_ again. A step shorter than the limit's
add_ is taken k times in a row (k = the ratio of the two times), so both samples are equally long.
"% limit" is the median over rounds of (rule GB/s ÷ limit GB/s, the limit's time being the mean of
the add_ just before and just after the steps); "% layout" the same against the layout's own add_, which
includes the per-tensor cost any step pays on a many-tensor model.

Layouts: ``big`` one 50M-parameter tensor; ``model`` 200 tensors, 256 to ~500k elements, ~10M in all;
the gradients come from a backward pass (see ``_make``).
For rules torch.optim also has, its for-loop, foreach and fused (where it exists) steps are timed the
same way. ms/step is the median of ``--repeat`` rounds after two warm-up steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import descend

# registry name -> (torch.optim class name, kwargs, has fused); None where torch has no counterpart
TORCH_COUNTERPART = {
    "gd": ("SGD", {}, True),
    "momentum": ("SGD", {"momentum": 0.9}, True),
    "nesterov": ("SGD", {"momentum": 0.9, "nesterov": True}, True),
    "sgd": ("SGD", {}, True),
    "adagrad": ("Adagrad", {}, True),
    "rmsprop": ("RMSprop", {}, False),
    "adadelta": ("Adadelta", {}, False),
    "adam": ("Adam", {}, True),
    "adamw": ("AdamW", {}, True),
    "nadam": ("NAdam", {}, False),
    "radam": ("RAdam", {}, False),
    "adamax": ("Adamax", {}, False),
    "lion": None,
}
REQUIRED = {"gd": {"lr": 1e-3}, "momentum": {"lr": 1e-3}, "nesterov": {"lr": 1e-3}}


def layout(kind: str, quick: bool) -> list[int]:
    if kind == "big":
        return [10_000_000 if quick else 50_000_000]
    total = 2_000_000 if quick else 10_000_000
    raw = [256 * (500_000 / 256) ** (i / 199) for i in range(200)]  # geometric 256 … 500k
    scale = total / sum(raw)
    return [max(256, int(r * scale)) for r in raw]


def _make(sizes, dtype=torch.float32):
    """Parameters made one after another, as a model's ``__init__`` makes them, and gradients made by a
    backward pass (of ½·10⁻³·Σθ², so g = 10⁻³·θ), as a training step makes them: where tensors sit in
    memory changes the bandwidth a many-tensor step gets by several percent."""
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(n, generator=g, dtype=dtype).requires_grad_() for n in sizes]
    (0.5e-3 * sum((p * p).sum() for p in params)).backward()
    return params


def _once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Limit:
    """The in-place add_ over 50M float32 values: the practical bandwidth limit."""

    def __init__(self, n: int):
        self.a = torch.randn(n)
        self.b = torch.randn(n)
        self.n = n

    def add(self) -> None:
        self.a.add_(self.b)

    def gbps(self, repeat: int = 5) -> float:
        self.add()
        return 12 * self.n / statistics.median(_once(self.add) for _ in range(repeat)) / 1e9


def state_tensors(opt) -> int:
    """How many state tensors a parameter keeps (after one step)."""
    st = next(iter(opt.state.values()), {})
    return sum(isinstance(v, torch.Tensor) and v.dim() > 0 for v in st.values())


def measure(make_opt, sizes, limit: Limit, repeat: int, nbytes: int | None = None, allocations: int = 1):
    """Time ``make_opt(params).step()`` in rounds interleaved with the limit's add_ and with add_ over
    the layout's own tensors; each ratio is taken within a round and the medians are reported, so a
    drift of the machine's bandwidth during the run cancels out. Bytes default to the minimum the
    optimizer's own rule moves.

    Where a many-tensor layout's tensors happen to sit in memory moves its bandwidth by several
    percent from one allocation to the next, so ``allocations`` fresh copies of the layout (new
    parameters, gradients and optimizer) are measured ``repeat`` rounds each, and the medians are
    taken over all rounds."""
    steps, ratios, layout_ratios = [], [], []
    for _ in range(allocations):
        params = _make(sizes)
        opt = make_opt(params)
        opt.step()
        opt.step()
        if nbytes is None:
            nbytes = 4 * (3 + 2 * state_tensors(opt)) * sum(sizes)
        xs = [p.detach().clone() for p in params]
        ys = [p.grad for p in params]

        def layout_add():
            if len(xs) == 1:
                xs[0].add_(ys[0])
            else:
                torch._foreach_add_(xs, ys)  # torch's fastest many-tensor add_

        # a short step is timed k times in a row (each streams the whole layout, so each starts as
        # cold as the first), making a sample as long as the limit's add_: bursts of a neighbour's
        # traffic then weigh on both alike
        k = max(1, round(_once(limit.add) / _once(opt.step)))

        def steps_k():
            for _ in range(k):
                opt.step()

        def layout_k():
            for _ in range(k):
                layout_add()

        for _ in range(repeat):
            t_lim = _once(limit.add)
            t_lay = _once(layout_k) / k
            t = _once(steps_k) / k
            t_lim = (t_lim + _once(limit.add)) / 2  # the limit just before and just after the steps
            steps.append(t)
            ratios.append((nbytes / t) / (12 * limit.n / t_lim))
            layout_ratios.append((nbytes / t) / (12 * sum(sizes) / t_lay))
        del params, opt, xs, ys
    t = statistics.median(steps)
    return {"ms": 1e3 * t, "gbps": nbytes / t / 1e9, "pct": 100 * statistics.median(ratios),
            "layout_pct": 100 * statistics.median(layout_ratios), "bytes": nbytes}


def first_step_costs(names) -> dict[str, tuple]:
    """(cold, warm) extra seconds of the first step in a fresh process: empty kernel cache, then cached;
    and under "plan check", the seconds the compiled plan check takes to build (and its status)."""
    code = (
        "import time, torch, descend\n"
        "p = torch.randn(1000, requires_grad=True); p.grad = torch.randn(1000)\n"
        "o = descend.create({name!r}, [p], **{hp!r})\n"
        "t0 = time.perf_counter(); o.step(); t1 = time.perf_counter(); o.step(); t2 = time.perf_counter()\n"
        "print((t1 - t0) - (t2 - t1))\n"
    )
    out = {}
    check = ("import time, descend\nt0 = time.perf_counter(); descend.fast.plan_check(wait=True)\n"
             "print(time.perf_counter() - t0, descend.fast.plan_check_status())\n")
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "DESCEND_CACHE_DIR": cache}
        seconds, status = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True,
                                         check=True).stdout.split(maxsplit=1)
        out["plan check"] = (float(seconds), status.strip())
        for name in names:
            src = code.format(name=name, hp=REQUIRED.get(name, {}))
            runs = [float(subprocess.run([sys.executable, "-c", src], env=env, capture_output=True,
                                         text=True, check=True).stdout) for _ in range(2)]
            out[name] = (runs[0], runs[1])
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m descend.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--optimizers", default=",".join(descend.available()))
    ap.add_argument("--layouts", default="big,model")
    ap.add_argument("--repeat", type=int, default=15, help="rounds per measurement (default 15)")
    ap.add_argument("--allocations", type=int, default=3,
                    help="fresh copies of the model layout measured per row (default 3)")
    ap.add_argument("--quick", action="store_true", help="10M / 2M parameters and 3 repeats")
    ap.add_argument("--no-torch", action="store_true", help="skip torch.optim's for-loop/foreach/fused timings")
    args = ap.parse_args(argv)
    names = [n.strip().lower() for n in args.optimizers.split(",") if n.strip()]
    for n in names:
        if n not in descend.available():
            ap.error(f"unknown optimizer {n!r}; valid: {', '.join(descend.available())}")
    repeat = 3 if args.quick else args.repeat
    limit = Limit(10_000_000 if args.quick else 50_000_000)
    descend.fast.plan_check(wait=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fast kernels: {descend.fast.available()}, "
          f"plan check: {descend.fast.plan_check_status()}")
    print(f"limit: in-place add_ over {limit.n / 1e6:.0f}M float32 = {limit.gbps():.1f} GB/s now "
          "(re-measured in every round of every row)\n")
    header = (f"{'optimizer':<10} {'layout':<6} {'ms/step':>8} {'GB/s':>6} {'% limit':>8} {'% layout':>8}  "
              f"{'torch for-loop':>15} {'foreach':>9} {'fused':>9}  (ms/step, % limit)")
    # an untimed warm-up round: the first measurement of a process otherwise runs a few percent slow
    # (kernels and the plan check loading, the machine's clocks settling)
    measure(lambda ps: descend.create("gd", ps, lr=1e-3), layout("model", True), limit, 3)
    print(header)
    print("-" * len(header))
    for kind in args.layouts.split(","):
        sizes = layout(kind, args.quick)
        for name in names:
            hp = REQUIRED.get(name, {})
            allocations = 1 if kind == "big" else args.allocations
            r = measure(lambda ps: descend.create(name, ps, **hp), sizes, limit, repeat, allocations=allocations)
            cols = []
            spec = TORCH_COUNTERPART.get(name)
            for mode in ("foreach=False", "foreach=True", "fused=True"):
                if args.no_torch or spec is None or (mode == "fused=True" and not spec[2]):
                    cols.append(f"{'—':>9}")
                    continue
                cls = getattr(torch.optim, spec[0])
                kw = {**spec[1], mode.split("=")[0]: True if mode.endswith("True") else False}
                if spec[0] in ("SGD",):
                    kw.setdefault("lr", 1e-3)
                t = measure(lambda ps: cls(ps, **kw), sizes, limit, repeat, r["bytes"], allocations)  # same rule, bytes
                cols.append(f"{t['ms']:6.1f} {t['pct']:3.0f}%".rjust(9 if mode != 'foreach=False' else 15))
            print(f"{name:<10} {kind:<6} {r['ms']:8.2f} {r['gbps']:6.1f} {r['pct']:7.0f}% "
                  f"{r['layout_pct']:7.0f}%  "
                  f"{cols[0]:>15} {cols[1]:>9} {cols[2]:>9}", flush=True)
    print("\nfirst step in a fresh process, beyond the steady-state step (s): cold = empty kernel cache "
          "(includes compiling), warm = cached")
    costs = first_step_costs(names)
    seconds, status = costs.pop("plan check")
    for name, (cold, warm) in costs.items():
        print(f"  {name:<10} cold {cold:6.2f}   warm {warm:6.3f}")
    print(f"the plan check (many-tensor steps) compiles once per machine in {seconds:.1f} s, in a background "
          f"thread: no step waits for it ({status})")


if __name__ == "__main__":
    main()
