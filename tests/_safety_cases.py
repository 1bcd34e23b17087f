"""Cases that once crashed the process (or corrupted memory), run in a child process by test_safety.py.

    python tests/_safety_cases.py CHECK CASE...

CHECK is ``compiled`` (planned steps use csrc/plan_check.cpp) or ``python`` (they use the Python check).
Each case runs the same scenario with the fast path and with the reference (``fast=False``) and prints
one line ``CASE: OUTCOME`` — ``same ok``, ``same RuntimeError`` — when both paths agree (values to
rounding, non-finite classes exactly), ``differ ...`` when they do not. A crash ends the process:
the cases not printed yet are the ones it took down.
"""

from __future__ import annotations

import sys
import tempfile

import torch

import descend
from descend.kernels import cpu

F32 = dict(dtype=torch.float32)


def outcome(case, fast: bool, arg):
    try:
        return "ok", [t.detach().clone() for t in case(fast, arg)]
    except RuntimeError as e:
        return "RuntimeError", str(e).splitlines()[0][:80]


def same(a, b) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] != "ok":
        return True
    for x, y in zip(a[1], b[1]):
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if not torch.equal(torch.isnan(x), torch.isnan(y)) or not torch.equal(torch.isinf(x), torch.isinf(y)):
            return False
        if not torch.allclose(x.nan_to_num(), y.nan_to_num(), rtol=1e-6, atol=1e-6):
            return False
    return True


def _stepped(fast, steps, make=descend.Adam, n=10, dtype=torch.float32, **kw):
    p = torch.nn.Parameter(torch.linspace(-1, 1, n, dtype=dtype))
    opt = make([p], fast=fast, lr=0.01, **kw)
    for k in range(steps):
        p.grad = torch.full_like(p, 0.5 - 0.1 * k)
        opt.step()
    return p, opt


# --- a parameter changed after a step (steps=1: the generic path follows; steps=3: a planned step)

def resize(fast, steps, size=10_000_000):
    p, opt = _stepped(fast, steps)
    p.data = torch.zeros(size)  # the gradient and the state keep 10 elements
    opt.step()
    return [p]


def resize_1000(fast, steps):
    return resize(fast, steps, 1000)


def shrink(fast, steps):
    p, opt = _stepped(fast, steps)
    p.data = p.data[:5].clone()
    p.grad = torch.ones(5)  # a fresh gradient of the new size; the state keeps 10 elements
    opt.step()
    return [p]


def longer_view(fast, steps):
    """Re-pointed to a longer view of the same storage: the same data pointer, 50 elements."""
    base = torch.zeros(50)
    p = torch.nn.Parameter(base[:10])
    opt = descend.Adam([p], fast=fast, lr=0.01)
    for k in range(steps):
        p.grad = torch.full((10,), 0.5)
        opt.step()
    p.data = base
    p.grad = torch.ones(50)
    opt.step()
    return [p]


def _model(fast, steps, make):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    opt = make(model.parameters(), fast=fast, lr=0.01)
    x = torch.randn(16, 4)

    def step(dtype):
        opt.zero_grad()
        model(x.to(dtype)).pow(2).mean().backward()
        opt.step()

    for _ in range(steps):
        step(torch.float32)
    return model, opt, step


def to_double(fast, steps, make=descend.Adam):
    model, opt, step = _model(fast, steps, make)
    model.double()  # the state stays float32
    step(torch.float64)
    return list(model.parameters())


def to_double_lion(fast, steps):
    return to_double(fast, steps, descend.Lion)


def double_then_float(fast, steps):
    model, opt, step = _model(fast, steps, descend.Adam)
    model.double()
    try:
        step(torch.float64)
    except RuntimeError:
        pass  # as the reference: torch refuses the mixed dtypes
    model.float()
    step(torch.float32)
    step(torch.float32)
    return list(model.parameters())


# --- the state changed under a plan: one guard each (steps=1: before the plan; steps=3: under it)

def _state_edit(fast, steps, edit, dtype=torch.float32):
    p, opt = _stepped(fast, steps, dtype=dtype)
    edit(opt.state[p])
    p.grad = torch.full_like(p, 0.3)
    opt.step()
    opt.step()
    return [p, opt.state[p]["exp_avg_sq"]]


def state_numel(fast, steps):
    def edit(st):
        if steps == 1:
            st["exp_avg"] = torch.zeros(5)
        else:
            st["exp_avg"].resize_(5)  # the same object and data pointer, fewer elements
    return _state_edit(fast, steps, edit)


def state_dtype(fast, steps):
    def edit(st):  # the same object, storage and size, another dtype
        st["exp_avg"].data = st["exp_avg"].data.view(torch.int32)
    return _state_edit(fast, steps, edit)


def state_contiguity(fast, steps):
    def edit(st):  # the same object and data pointer, 10 elements, transposed
        t = st["exp_avg"]
        t.set_(t.untyped_storage(), 0, (5, 2), (1, 5))
    return _state_edit(fast, steps, edit)


def state_device(fast, steps):
    def edit(st):
        st["exp_avg"] = torch.zeros(10, device="meta")
    return _state_edit(fast, steps, edit)


def state_neg_bit(fast, steps):
    def edit(st):  # a lazily negated view of the same memory
        st["exp_avg"].data = torch._neg_view(st["exp_avg"].data)
    return _state_edit(fast, steps, edit)


def state_conj_bit(fast, steps):
    def edit(st):  # a lazily conjugated view of the same memory
        st["exp_avg"].data = st["exp_avg"].data.conj()
    return _state_edit(fast, steps, edit, dtype=torch.complex64)


def param_dtype(fast, steps):
    p, opt = _stepped(fast, steps, dtype=torch.float64)
    p.data = p.data.view(torch.complex64)  # same storage, pointer and size, another dtype
    p.grad = torch.ones(10, dtype=torch.complex64)
    opt.step()
    return [p]


# --- DTensor (FSDP2's parameters): the kernel runs on the local shard

def dtensor(fast, name):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.FileStore(tempfile.mktemp(), 1), rank=0, world_size=1)
    mesh = init_device_mesh("cpu", (1,))
    g = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(distribute_tensor(torch.randn(64, 32, generator=g), mesh, [Shard(0)]))
          for _ in range(3)]
    opt = descend.create(name, ps, fast=fast, lr=1e-2)
    calls = []
    real = cpu.run_group

    def spy(blocks, views, work, *args):
        rest = real(blocks, views, work, *args)
        calls.append(len(rest))
        return rest

    cpu.run_group = spy
    try:
        for k in range(4):
            for p in ps:
                p.grad = distribute_tensor(torch.randn(64, 32, generator=g), mesh, [Shard(0)])
            opt.step()
    finally:
        cpu.run_group = real
    if fast:
        assert calls and all(r == 0 for r in calls), calls  # every step ran the kernel, on the shards
    return [p.full_tensor() for p in ps]


CASES = {name: f for name, f in list(globals().items())
         if callable(f) and getattr(f, "__module__", None) == __name__ and not name.startswith("_")
         and name not in ("outcome", "same", "main")}


def main(argv: list[str]) -> None:
    check, names = argv[0], argv[1:]
    if check == "python":
        cpu.plan_check = lambda wait=False: None
    else:
        assert cpu.plan_check(wait=True) is not None, cpu.plan_check_status()
    for name in names:
        case, _, arg = name.partition(":")
        arg = int(arg) if arg.isdigit() else arg
        a, b = outcome(CASES[case], True, arg), outcome(CASES[case], False, arg)
        print(f"{name}: {'same ' + a[0] if same(a, b) else f'differ fast={a} reference={b}'}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
