"""The fast path never crashes and never disagrees with the reference (issue 9).

Cases that once crashed the process run in a child process (``tests/_safety_cases.py``, and the
cache cases below), so a segfault fails a test instead of killing the suite. Each planned-step case
runs with the compiled plan check and with the Python one.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import descend
from descend.kernels import cache, contract, cpu

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def _env(**extra) -> dict:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, **extra}


def _child(code: str, timeout: int = 240, **env) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with this checkout first on the path."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def _died(res: subprocess.CompletedProcess) -> str:
    return f"exit status {res.returncode}\nstdout:\n{res.stdout[-2000:]}\nstderr:\n{res.stderr[-2000:]}"


# --------------------------------------------------------------------------- crashes and guards

# case -> what both paths must do (the reference's outcome: torch's RuntimeError where the new sizes or
# dtypes do not fit the gradient or the state, else the same values)
EXPECTED = {
    # a parameter changed after a step (issue 9: SIGSEGV, malloc(): invalid size, silent NaN/old state)
    "resize": "RuntimeError",  # p.data = torch.zeros(10_000_000) on a 10-element parameter
    "resize_1000": "RuntimeError",
    "shrink": "RuntimeError",  # state of the old size
    "longer_view": "RuntimeError",  # same data pointer, longer: the Python check compared pointers only
    "to_double": "RuntimeError",  # model.double(), Adam
    "to_double_lion": "RuntimeError",  # model.double(), Lion
    "double_then_float": "ok",  # .double() then .float(): finite weights, equal to the reference
    "param_dtype": "RuntimeError",  # same pointer and size, complex64 over float64
    # one guard each on a state tensor (steps=1: the contract's eligibility; steps=3: the plan check)
    "state_numel": "RuntimeError",
    "state_dtype": "RuntimeError",
    "state_contiguity": "RuntimeError",
    "state_device": "RuntimeError",
    "state_neg_bit": "ok",
    "state_conj_bit": "RuntimeError",
}
STEPPED = [f"{case}:{steps}" for case in EXPECTED for steps in (1, 3) if not (case == "longer_view" and steps == 1)]
DTENSOR = ["dtensor:adam", "dtensor:momentum", "dtensor:lion", "dtensor:adagrad"]


@functools.lru_cache(maxsize=None)
def _cases(check: str, names: tuple[str, ...], cache_dir: str) -> tuple[dict, str]:
    """Run the cases in one child process; {case: outcome line} for those it reached."""
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import _safety_cases; _safety_cases.main(sys.argv[1:])"
    res = subprocess.run([sys.executable, "-c", code, check, *names], env=_env(DESCEND_CACHE_DIR=cache_dir),
                         capture_output=True, text=True, timeout=600)
    lines = dict(line.split(": ", 1) for line in res.stdout.splitlines() if ": " in line)
    return lines, _died(res)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("descend-cache"))


@pytest.mark.parametrize("check", ["compiled", "python"])
@pytest.mark.parametrize("case", STEPPED)
def test_a_changed_parameter_or_state_behaves_as_the_reference(case, check, shared_cache):
    lines, died = _cases(check, tuple(STEPPED), shared_cache)
    assert case in lines, f"the child process did not reach {case}: {died}"
    assert lines[case] == "same " + EXPECTED[case.split(":")[0]], lines[case]


@pytest.mark.parametrize("case", DTENSOR)
def test_dtensor_steps_run_the_kernel_on_the_local_shard(case, shared_cache):
    """FSDP2's parameters are DTensors (data_ptr() 0, numel() global): the step crashed with SIGSEGV."""
    lines, died = _cases("compiled", tuple(DTENSOR), shared_cache)
    assert case in lines, f"the child process did not reach {case}: {died}"
    assert lines[case] == "same ok", lines[case]


class _Sub(torch.Tensor):
    """A tensor subclass the contract does not know."""


def test_an_unknown_tensor_subclass_takes_the_reference():
    p = torch.nn.Parameter(torch.ones(4).as_subclass(_Sub))
    q = torch.nn.Parameter(torch.ones(4))
    for t in (p, q):
        t.grad = torch.full((4,), 0.5)
    assert contract.local(p) is None and contract.local(q) is q
    assert contract.eligible(q, torch.ones(4).as_subclass(_Sub), [], "cpu", cpu._OK) is None  # its gradient
    assert contract.eligible(q, q.grad, [torch.zeros(4).as_subclass(_Sub)], "cpu", cpu._OK) is None  # state
    opt = descend.Adam([p, q], lr=0.1)
    g = opt.param_groups[0]
    work = [(t, {"exp_avg": torch.zeros(4), "exp_avg_sq": torch.zeros(4)}, (1, ())) for t in (p, q)]
    scal = {(1, ()): [b.scalars(b.view(g), {"step": 1}, frozenset()) for b in opt.blocks]}
    rest = cpu.run_group(opt.blocks, [b.view(g) for b in opt.blocks], work, scal, False)
    assert [t for t, _, _ in rest] == [p]  # q ran the kernel, p is left to the reference
    out = []
    for fast in (True, False):
        r = torch.nn.Parameter(torch.ones(4).as_subclass(_Sub))
        opt = descend.Adam([r], lr=0.1, fast=fast)
        for _ in range(3):
            r.grad = torch.full((4,), 0.5)
            opt.step()
        out.append(r.detach().as_subclass(torch.Tensor))
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)


def test_every_plan_condition_is_checked_in_python_and_in_cpp():
    """One list of conditions, both checks: each names the conditions it implements in the same words."""
    cpp = (ROOT / "descend/kernels/csrc/plan_check.cpp").read_text()
    assert "PLAN_CONDITIONS" in cpp and len(contract.PLAN_CONDITIONS) == 7
    for word in ("Python", "kStrided", "CPU", "toScalarType", "numel", "is_contiguous", "is_conj", "is_neg"):
        assert word in cpp


# --------------------------------------------------------------------------- one semantics


def _run(make, grads, fast, dtype, **kw):
    p = torch.nn.Parameter(torch.zeros(len(grads[0]), dtype=dtype))
    opt = make([p], fast=fast, **kw)
    for g in grads:
        p.grad = torch.tensor(g, dtype=dtype)
        opt.step()
    return p.detach()


def _both(make, grads, dtype, **kw):
    return _run(make, grads, True, dtype, **kw), _run(make, grads, False, dtype, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lion_propagates_nan_on_both_paths(dtype):
    """Gradient inf then 1: m = inf, then lerp(inf, 1) = NaN. The C SIGN passed NaN and torch.sign gave
    0, which also froze the coordinate forever; now NaN reaches θ on both paths."""
    inf = float("inf")
    fast, ref = _both(descend.Lion, [[inf, 1.0], [1.0, 1.0], [1.0, 1.0]], dtype, lr=1e-3)
    assert torch.isnan(fast[0]) and torch.isnan(ref[0])
    torch.testing.assert_close(fast, ref, equal_nan=True)
    torch.testing.assert_close(ref[1], torch.tensor(-0.003, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_centered_rmsprop_at_alpha_zero(dtype):
    """α = 0: m = lerp(m, g, 1) must be exactly g (torch.lerp's formula), so v − m² is exactly 0 on
    both paths (212 of 1000 float32 elements differed by > 1%, up to 2.6e5)."""
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(1000, generator=g, dtype=dtype).tolist() for _ in range(2)]
    fast, ref = _both(descend.RMSProp, grads, dtype, lr=0.01, alpha=0.0, centered=True)
    first, _ = _both(descend.RMSProp, grads[:1], dtype, lr=0.01, alpha=0.0, centered=True)
    # to rounding, relative to the magnitudes added (1 ulp of torch's float32 sqrt, which is not
    # always correctly rounded, grows relative to a step that nearly cancels the previous one)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(fast, ref, rtol=tol, atol=tol * float(first.abs().max()))


def test_no_fused_multiply_add_changes_overflow():
    """GD(lr=1e30), gradients 1e30 then −1e30: θ = −inf, then −inf + inf = NaN on both paths (a
    contracted p + (−η)·g gave −inf)."""
    fast, ref = _both(descend.GD, [[1e30], [-1e30]], torch.float32, lr=1e30)
    assert torch.isnan(ref).all() and torch.isnan(fast).all()


# --------------------------------------------------------------------------- the kernel cache


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A cache holding a step kernel and the plan check, built by a child process."""
    root = tmp_path_factory.mktemp("built")
    res = _child("""
        import torch, descend
        p = torch.nn.Parameter(torch.ones(8)); p.grad = torch.ones(8)
        descend.Adam([p], lr=0.1).step()
        assert descend.kernels.plan_check(wait=True) is not None, descend.kernels.plan_check_status()
    """, DESCEND_CACHE_DIR=str(root))
    assert res.returncode == 0, _died(res)
    return root


_USE = """
    import warnings, torch, descend
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        out = []
        for fast in (True, False):
            p = torch.nn.Parameter(torch.linspace(-1, 1, 8))
            opt = descend.Adam([p], lr=0.1, fast=fast)
            for k in range(4):
                p.grad = torch.full((8,), 0.5 - 0.2 * k)
                opt.step()
            out.append(p.detach())
        torch.testing.assert_close(out[0], out[1])
        print("status:", descend.kernels.plan_check(wait=True) is not None, descend.kernels.plan_check_status()[:60])
    print("warnings:", len([w for w in caught if "descend" in str(w.message)]))
"""


def _corrupt(path: Path, how: str, other: Path) -> None:
    data = path.read_bytes()
    if how == "directory":
        path.unlink()
        path.mkdir()
        (path / "x").write_text("")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif how == "another library":  # the other library of the cache, under this one's name
        path.write_bytes(other.read_bytes())
    elif how == "garbage with its hash":  # verifies, then fails to load: rebuilt once
        path.write_bytes(b"\x7fELF" + os.urandom(100))
        path.with_name(path.name + ".sha256").write_text(cache._digest(path))
    elif how == "no hash":  # as left by an older descend
        path.with_name(path.name + ".sha256").unlink()


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "another library", "garbage with its hash",
                                 "no hash", "directory"])
def test_a_damaged_cache_never_hurts(built, tmp_path, how):
    """A truncated step_*.so died with SIGBUS (a truncated plan_check_*.so too, in the background
    thread); an empty file, a directory, garbage or another library raised on every step()."""
    shutil.copytree(built, tmp_path / "c")
    libs = sorted((tmp_path / "c" / "kernels").glob("*.so"))
    assert {p.name.split("_")[0] for p in libs} == {"step", "plan"}
    for lib, other in zip(libs, libs[1:] + libs[:1]):
        _corrupt(lib, how, other)
    res = _child(_USE, DESCEND_CACHE_DIR=str(tmp_path / "c"))
    assert res.returncode == 0, _died(res)
    if how == "directory":  # cannot be rebuilt in place: the reference runs, with one warning
        assert "status: False python (building or loading the plan check failed" in res.stdout, res.stdout
        assert "warnings: 1" in res.stdout, res.stdout
    else:  # rebuilt once, then verified and loaded
        assert "status: True compiled" in res.stdout and "warnings: 0" in res.stdout, res.stdout
        for lib in libs:
            assert cache.verified(lib)


def test_the_cache_key_covers_the_cpu_on_every_architecture(tmp_path, monkeypatch):
    """-march=native kernels: two aarch64 machines that differ only in their `Features` line must not
    share a kernel (the key read only x86's `flags` line)."""
    base = "processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n"
    keys = []
    for features in ("fp asimd evtstrm aes crc32", "fp asimd evtstrm aes crc32 sve sve2"):
        info = tmp_path / f"cpuinfo{len(keys)}"
        info.write_text(base + f"Features\t: {features}\n")
        monkeypatch.setattr(cache, "_CPUINFO", str(info))
        cache._cpu.cache_clear()
        keys.append(cache.fingerprint(["cc"]))
    cache._cpu.cache_clear()
    assert keys[0] != keys[1]


def test_the_cache_key_covers_the_compiler(tmp_path):
    keys = []
    for version in ("gcc (X) 12.2.0", "gcc (X) 13.1.0"):
        cc = tmp_path / f"cc-{len(keys)}"
        cc.write_text(f"#!/bin/sh\necho '{version}'\n")
        cc.chmod(0o755)
        keys.append(cache.fingerprint([str(cc)]).replace(str(cc), "cc"))
    assert keys[0] != keys[1]


def test_interrupted_and_killed_builds_leave_nothing(tmp_path, monkeypatch):
    folder = tmp_path / "kernels"
    folder.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = [folder / f".build-{cache._host}-{int(dead.stdout)}-abc", folder / "tmpk3j2_x"]
    live = folder / f".build-{cache._host}-{os.getpid()}-live"
    for d in stale + [live]:
        d.mkdir()
    old = time.time() - 2 * cache._STALE_S
    os.utime(stale[1], (old, old))  # an old-style folder from a build killed long ago
    monkeypatch.setattr(cache, "_swept", set())

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(subprocess, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.build(["cc"], "int x;", folder / "x.so", [], ".c")
    assert sorted(p.name for p in folder.iterdir()) == [live.name]


def test_cc_with_flags_is_split_as_make_does(tmp_path, monkeypatch):
    gcc = shutil.which("gcc") or shutil.which("cc")
    monkeypatch.setenv("CC", f"{gcc} -std=c99")
    monkeypatch.setenv("DESCEND_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpu, "_kernels", {})
    assert cache.c_compiler() == [gcc, "-std=c99"]
    p = torch.nn.Parameter(torch.ones(5, dtype=torch.float64))
    p.grad = torch.ones(5, dtype=torch.float64)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "compiling a fast kernel failed"
        descend.GD([p], lr=0.5).step()
    assert len(list((tmp_path / "kernels").glob("step_*.so"))) == 1
    torch.testing.assert_close(p.detach(), torch.full((5,), 0.5, dtype=torch.float64))
