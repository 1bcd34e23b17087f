"""Benchmark: every optimizer's step against the machine's memory-bandwidth limit.

    python -m descend.bench                 # everything (about 10 minutes on 2 cores)
    python -m descend.bench --quick         # smaller sizes, fewer repeats
    python -m descend.bench --optimizers adam,lion --layouts big
    python -m descend.bench --device cuda   # on a GPU: descend's Triton kernels, same table

On ``--device cuda`` everything (the limit, the layouts, torch's steps) lives on the current GPU and each
sample is timed with CUDA events after a synchronize (the events bracket the GPU's timeline, so the
launch costs a many-tensor step pays on the CPU count too); the rest of the method is the same.

The limit is an in-place ``a.add_(b)`` over 50M float32 values (reads 8 and writes 4 bytes per
element). A rule's bandwidth counts the bytes it must move at least: θ and g read, θ written, each
state tensor read and written — 4·(3 + 2·k) bytes per float32 parameter with k state tensors (Adam: 28).
This machine is shared and its bandwidth drifts by ±30% within minutes, so every measurement is taken
in rounds: one add_ over the 50M limit arrays, add_ over the layout's own tensors
(``torch._foreach_add_``), optimizer steps, the limit's add_ again. A step shorter than the limit's
add_ is taken k times in a row (k = the ratio of the two times), so both samples are equally long.
"% limit" is the median over rounds of (rule GB/s ÷ limit GB/s, the limit's time being the mean of
the add_ just before and just after the steps); "% layout" the same against the layout's own add_, which
includes the per-tensor cost any step pays on a many-tensor model. On the model layout the rounds of
all rows (descend's and torch's) are interleaved, so a slow stretch of the machine falls on every row
alike; the big layout's rows (each ~1 GB) run one after another.

Layouts: ``big`` one 50M-parameter tensor; ``model`` 200 tensors, 256 to ~500k elements, ~10M in all,
made one after another with gradients from a backward pass (see ``_make``).
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


DEVICE = torch.device("cpu")  # set by main(): where the limit, the layouts and the steps live


def _make(sizes, dtype=torch.float32):
    """Parameters made one after another, as a model's ``__init__`` makes them, and gradients made by a
    backward pass (of ½·10⁻³·Σθ², so g = 10⁻³·θ), as a training step makes them: where tensors sit in
    memory changes the bandwidth a many-tensor step gets by several percent."""
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(n, generator=g, dtype=dtype).to(DEVICE).requires_grad_() for n in sizes]
    (0.5e-3 * sum((p * p).sum() for p in params)).backward()
    return params


def _once(fn) -> float:
    if DEVICE.type == "cuda":  # the GPU's own clock, from an idle queue to the end of fn's work
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Limit:
    """The in-place add_ over 50M float32 values: the practical bandwidth limit."""

    def __init__(self, n: int):
        self.a = torch.randn(n, device=DEVICE)
        self.b = torch.randn(n, device=DEVICE)
        self.n = n

    def add(self) -> None:
        self.a.add_(self.b)

    def gbps(self, repeat: int = 5) -> float:
        self.add()
        return 12 * self.n / statistics.median(_once(self.add) for _ in range(repeat)) / 1e9

    def copy_gbps(self, repeat: int = 5) -> float:
        """a.copy_(b): 8 bytes per element, shown beside the limit."""
        copy = lambda: self.a.copy_(self.b)  # noqa: E731
        copy()
        return 8 * self.n / statistics.median(_once(copy) for _ in range(repeat)) / 1e9


def state_tensors(opt) -> int:
    """How many state tensors a parameter keeps (after one step)."""
    st = next(iter(opt.state.values()), {})
    return sum(isinstance(v, torch.Tensor) and v.dim() > 0 for v in st.values())


class Case:
    """One row's measurement: a fresh copy of the layout, an optimizer over it, and its rounds.

    A round is: the limit's add_, add_ over the layout's own tensors (``torch._foreach_add_``), the
    step, the limit's add_ again. A step shorter than the limit's add_ is taken k times in a row (each
    streams the whole layout, so each starts as cold as the first), making both samples equally long:
    bursts of a neighbour's traffic then weigh on both alike. Bytes default to the minimum the
    optimizer's own rule moves."""

    def __init__(self, make_opt, sizes, limit: Limit, nbytes: int | None = None):
        self.params = _make(sizes)
        self.opt = make_opt(self.params)
        self.opt.step()
        self.opt.step()
        self.nbytes = nbytes or 4 * (3 + 2 * state_tensors(self.opt)) * sum(sizes)
        self.layout_bytes, self.limit = 12 * sum(sizes), limit
        self.xs = [p.detach().clone() for p in self.params]
        self.ys = [p.grad for p in self.params]
        self.k = max(1, round(_once(limit.add) / _once(self.opt.step)))
        self.steps, self.ratios, self.layout_ratios = [], [], []

    def _layout_add(self):
        for _ in range(self.k):
            if len(self.xs) == 1:
                self.xs[0].add_(self.ys[0])
            else:
                torch._foreach_add_(self.xs, self.ys)  # torch's fastest many-tensor add_

    def _steps(self):
        for _ in range(self.k):
            self.opt.step()

    def round(self) -> None:
        lim = self.limit
        t_lim = _once(lim.add)
        t_lay = _once(self._layout_add) / self.k
        t = _once(self._steps) / self.k
        t_lim = (t_lim + _once(lim.add)) / 2  # the limit just before and just after the steps
        self.steps.append(t)
        self.ratios.append((self.nbytes / t) / (12 * lim.n / t_lim))
        self.layout_ratios.append((self.nbytes / t) / (self.layout_bytes / t_lay))

    def result(self) -> dict:
        t = statistics.median(self.steps)
        return {"ms": 1e3 * t, "gbps": self.nbytes / t / 1e9, "pct": 100 * statistics.median(self.ratios),
                "layout_pct": 100 * statistics.median(self.layout_ratios), "bytes": self.nbytes}

    def free(self) -> None:
        del self.params, self.opt, self.xs, self.ys


def measure(make_opt, sizes, limit: Limit, repeat: int, nbytes: int | None = None) -> dict:
    """``repeat`` rounds of one :class:`Case`, taken one after another."""
    case = Case(make_opt, sizes, limit, nbytes)
    for _ in range(repeat):
        case.round()
    case.free()
    return case.result()


def first_step_costs(names) -> dict[str, tuple]:
    """(cold, warm) extra seconds of the first step in a fresh process: empty kernel cache, then cached;
    and under "plan check", the seconds the compiled plan check takes to build (and its status)."""
    code = (
        "import time, torch, descend\n"
        f"p = torch.randn(1000, device={str(DEVICE)!r}, requires_grad=True); p.grad = torch.randn_like(p)\n"
        "o = descend.create({name!r}, [p], **{hp!r})\n"
        "sync = torch.cuda.synchronize if p.is_cuda else (lambda: None)\n"
        "t0 = time.perf_counter(); o.step(); sync(); t1 = time.perf_counter(); o.step(); sync(); t2 = time.perf_counter()\n"
        "print((t1 - t0) - (t2 - t1))\n"
    )
    out = {}
    check = ("import time, descend\nt0 = time.perf_counter(); descend.kernels.plan_check(wait=True)\n"
             "print(time.perf_counter() - t0, descend.kernels.plan_check_status())\n")
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "DESCEND_CACHE_DIR": cache, "TRITON_CACHE_DIR": os.path.join(cache, "triton")}
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
    ap.add_argument("--quick", action="store_true", help="10M / 2M parameters and 3 repeats")
    ap.add_argument("--no-torch", action="store_true", help="skip torch.optim's for-loop/foreach/fused timings")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where to run: cpu (the C kernels) or cuda (the Triton kernels; the current GPU)")
    args = ap.parse_args(argv)
    global DEVICE
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print(f"Error: --device cuda: torch {torch.__version__} sees no CUDA device "
                  "(torch.cuda.is_available() is False)", file=sys.stderr)
            sys.exit(2)
        DEVICE = torch.device("cuda", torch.cuda.current_device())
    else:
        DEVICE = torch.device("cpu")
    names = [n.strip().lower() for n in args.optimizers.split(",") if n.strip()]
    for n in names:
        if n not in descend.available():
            ap.error(f"unknown optimizer {n!r}; valid: {', '.join(descend.available())}")
    repeat = 3 if args.quick else args.repeat
    limit = Limit(10_000_000 if args.quick else 50_000_000)
    if DEVICE.type == "cuda":
        reason = descend.kernels.triton_backend.available("cuda")
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name(DEVICE)}, "
              f"Triton kernels: {'yes' if reason is None else 'no (' + reason + ')'}")
    else:
        descend.kernels.plan_check(wait=True)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fast kernels: "
              f"{descend.kernels.available()}, plan check: {descend.kernels.plan_check_status()}")
    print(f"limit: in-place add_ over {limit.n / 1e6:.0f}M float32 = {limit.gbps():.1f} GB/s now "
          f"(re-measured in every round of every row; copy_ {limit.copy_gbps():.1f} GB/s)\n")
    header = (f"{'optimizer':<10} {'layout':<6} {'ms/step':>8} {'GB/s':>6} {'% limit':>8} {'% layout':>8}  "
              f"{'torch for-loop':>15} {'foreach':>9} {'fused':>9}  (ms/step, % limit)")
    # an untimed warm-up round: the first measurement of a process otherwise runs a few percent slow
    # (kernels and the plan check loading, the machine's clocks settling)
    measure(lambda ps: descend.create("gd", ps, lr=1e-3), layout("model", True), limit, 3)
    print(header)
    print("-" * len(header))
    for kind in args.layouts.split(","):
        sizes = layout(kind, args.quick)
        # rows: (name, [make_opt for descend, then torch's for-loop / foreach / fused or None])
        rows = []
        for name in names:
            makers = [lambda ps, name=name: descend.create(name, ps, **REQUIRED.get(name, {}))]
            spec = TORCH_COUNTERPART.get(name)
            for mode in ("foreach", "foreach", "fused"):
                on = len(makers) != 1  # for-loop: foreach=False; then foreach=True; then fused=True
                if args.no_torch or spec is None or (mode == "fused" and not spec[2]):
                    makers.append(None)
                    continue
                kw = {**spec[1], mode: on}
                if spec[0] == "SGD":
                    kw.setdefault("lr", 1e-3)
                makers.append(lambda ps, cls=getattr(torch.optim, spec[0]), kw=kw: cls(ps, **kw))
            rows.append((name, makers))
        if kind == "model":
            # every row's rounds interleaved: a slow minute of the machine then falls on all rows alike
            # instead of on whichever row happened to run in it
            cases = {}
            for name, makers in rows:
                first = Case(makers[0], sizes, limit)
                cases[name] = [first] + [m and _torch_row(Case, m, sizes, limit, first.nbytes) for m in makers[1:]]
            for _ in range(repeat):
                for row in cases.values():
                    for c in row:
                        if c is not None:
                            c.round()
            results = {name: [c and c.result() for c in row] for name, row in cases.items()}
            for row in cases.values():
                for c in row:
                    if c is not None:
                        c.free()
        else:
            results = {}
            for name, makers in rows:
                r = measure(makers[0], sizes, limit, repeat)
                results[name] = [r] + [m and _torch_row(measure, m, sizes, limit, repeat, r["bytes"])
                                       for m in makers[1:]]
        for name, (r, *torch_rows) in results.items():
            cols = [f"{'—':>9}" if t is None else f"{_ms(t['ms'])} {t['pct']:3.0f}%" for t in torch_rows]
            print(f"{name:<10} {kind:<6} {_ms(r['ms'], 8)} {r['gbps']:6.1f} {r['pct']:7.0f}% "
                  f"{r['layout_pct']:7.0f}%  {cols[0]:>15} {cols[1]:>9} {cols[2]:>9}", flush=True)
    print("\nfirst step in a fresh process, beyond the steady-state step (s): cold = empty kernel cache "
          "(includes compiling), warm = cached")
    costs = first_step_costs(names)
    seconds, status = costs.pop("plan check")
    for name, (cold, warm) in costs.items():
        print(f"  {name:<10} cold {cold:6.2f}   warm {warm:6.3f}")
    if DEVICE.type == "cpu":
        print(f"the plan check (many-tensor steps) compiles once per machine in {seconds:.1f} s, in a background "
              f"thread: no step waits for it ({status})")


def _ms(ms: float, width: int = 6) -> str:
    """Milliseconds with three significant decimals for the short steps of a GPU."""
    return f"{ms:{width}.{3 if ms < 10 else 1}f}" if width == 6 else f"{ms:{width}.{3 if ms < 1 else 2}f}"


def _torch_row(run, *args):
    """A torch.optim row, or None where this torch cannot run it (a fused step a device lacks)."""
    try:
        return run(*args)
    except (RuntimeError, ValueError, NotImplementedError) as e:
        print(f"  (torch row skipped: {type(e).__name__}: {str(e).splitlines()[0][:100]})", file=sys.stderr)
        return None


if __name__ == "__main__":
    main()
