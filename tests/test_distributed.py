"""Distributed training on CPU: two processes over gloo, as torch's own multiprocess tests run.

One group of two processes (started once for the whole file: start-up is the expensive part) runs
every scenario and writes what each one raised; the tests below read those results:

- FSDP2 (``fully_shard``, DTensor parameters, one shard per rank, an empty shard on one rank): every
  optimizer with a torch.optim counterpart (tests/optim_db.py) matches it step by step under the same
  sharding, at test_parity's tolerances;
- ``torch.distributed.checkpoint`` with ``get/set_model_state_dict`` and ``get/set_optimizer_state_dict``:
  saved mid-run, loaded into a fresh model and optimizer, the run goes on bitwise as the uninterrupted one
  (lr="auto" too: its estimate, marks, anchor and average travel in the checkpoint);
- DDP, and ``ZeroRedundancyOptimizer(optimizer_class=descend.Adam)`` (its consolidated state_dict loads
  and resumes), match torch.optim.Adam; under DDP, ``lr="auto"`` matches one process on the whole batch;
- ``lr="auto"`` under FSDP2, fused and reference: every rank keeps one estimate, that of one process
  training the whole model on the whole batch, and so reaches the same parameters and, inside
  ``opt.averaged()``, the same average of the iterates (before, each rank
  estimated from its own shard: the ranks' rates differed by up to 2×); a group that mixes sharded and
  plain tensors is refused with a ValueError before anything changes;
- ``ZeroRedundancyOptimizer(optimizer_class=descend.Adam, lr="auto", partitioned=True)``, fused and
  reference, one parameter group and two (one rank's partition of the second is empty): the same, one
  estimate and step count per group on every rank, one process's (without ``partitioned``, each rank
  estimates from its own partition: the rates differed by ~19%); with ``skip_nonfinite=True``, a NaN
  in one rank's partition skips the group on every rank.

descend runs with its default fast path throughout, and a spy on ``descend.kernels.run_group`` checks
that the fused kernel took every parameter (under FSDP2: each rank's local shard). A crash in a worker
(before issue 9, every descend optimizer segfaulted here on its first FSDP2 step) fails these tests;
it cannot take pytest down.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import re
import time
import traceback
import warnings

import pytest
import torch
import torch.distributed as dist

import descend
from descend import schedules as S
from optim_db import BY_NAME, TOL, WITH_TORCH, Decay

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

WORLD = 2
STEPS, SAVE_AT = 5, 2
KERNEL = {"ran": 0, "refused": 0}  # parameters descend.kernels.run_group ran / handed back (in a worker)


def _config(info) -> dict:
    """The richest parity combination that does not maximize (training a real loss)."""
    return [c for c in info.parity_configs() if not c.get("maximize")][-1]


FSDP_CASES = {o.name: (o, _config(o), torch.float64) for o in WITH_TORCH}
FSDP_CASES["adam-f32"] = (BY_NAME["adam"], _config(BY_NAME["adam"]), torch.float32)
DCP_CASES = {n: (BY_NAME[n], _config(BY_NAME[n])) for n in ("adam", "nadam", "rmsprop", "sgd")}
DCP_CASES["adamw-scheduled"] = (BY_NAME["adamw"], {**_config(BY_NAME["adamw"]), "lr": Decay(0.01, 3, warmup=2)})
DCP_CASES["adam-auto"] = (BY_NAME["adam"], {**_config(BY_NAME["adam"]), "lr": "auto"})  # the estimate, marks, average


# --------------------------------------------------------------------------- the workers' side


def _model(dtype, seed=0):
    """A small MLP; the last layer's bias (one element) leaves rank 1 an empty shard."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5),
                               torch.nn.Tanh(), torch.nn.Linear(5, 1)).to(dtype)


def _sharded(dtype, mesh, seed=0):
    from torch.distributed.fsdp import fully_shard

    m = _model(dtype, seed)
    for layer in m:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(m, mesh=mesh)


def _train(model, opt, steps, rank, start=0, whole=False):
    """``steps`` steps on this rank's slice of a global batch that depends only on the step (``whole``:
    on the whole batch, as one process would; FSDP2 averages the ranks' gradients to the same)."""
    dtype = next(model.parameters()).dtype
    rows = slice(None) if whole else slice(4 * rank, 4 * rank + 4)
    for t in range(start, start + steps):
        g = torch.Generator().manual_seed(t)
        X = torch.randn(4 * WORLD, 6, generator=g, dtype=dtype)
        y = torch.randn(4 * WORLD, 1, generator=g, dtype=dtype)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(X[rows]), y[rows]).backward()
        opt.step()


def _local(model):
    return [(p.to_local() if hasattr(p, "to_local") else p).detach().clone() for p in model.parameters()]


def _assert_close(ours, theirs, dtype):
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m: f"parameter {i}: {m}")


def _assert_bitwise(ours, theirs):
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert torch.equal(a, b), f"parameter {i} differs by {(a - b).abs().max() if a.numel() else 0}"


def _descend(info, hp):
    return lambda ps: info.make(ps, **hp, **info.torch_fixed)  # the default: the fast path on


def _spy_on_the_kernel():
    """Count the parameters the fused kernel takes, and those it hands back to the reference."""
    import descend.kernels

    run_group = descend.kernels.run_group

    def counting(blocks, views, work, *args, **kw):
        rest = run_group(blocks, views, work, *args, **kw)
        KERNEL["ran"] += len(work) - len(rest)
        KERNEL["refused"] += len(rest)
        return rest

    descend.kernels.run_group = counting


def _fused(run):
    """``run()``, which must step every descend parameter with the fused kernel (DTensors: their shards)."""
    KERNEL.update(ran=0, refused=0)
    out = run()
    assert KERNEL["ran"] > 0 and KERNEL["refused"] == 0, f"the fused kernel did not run everything: {KERNEL}"
    return out


def _fsdp_matches_torch(rank, mesh, name):
    info, hp, dtype = FSDP_CASES[name]
    with info.torch_dtype_context(dtype):
        out = []
        for ours in (True, False):
            make = _descend(info, hp) if ours else lambda ps: info.torch_cls(ps, foreach=False, **hp)
            model = _sharded(dtype, mesh)
            opt = make(model.parameters())
            (_fused if ours else lambda run: run())(lambda: _train(model, opt, STEPS, rank))
            out.append(_local(model))
    assert any(p.numel() == 0 for p in out[0]) == (rank == 1)  # the case is really there
    _assert_close(*out, dtype)


def _dcp_case(rank, mesh, name, root):
    """Train to SAVE_AT, checkpoint, train on to STEPS (the uninterrupted run); then a fresh model
    (other initial weights) and optimizer load the checkpoint and train from SAVE_AT to STEPS: bitwise
    the same parameters."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    make = _descend(*DCP_CASES[name])
    path = os.path.join(root, f"ckpt-{name}")
    model = _sharded(torch.float64, mesh)
    opt = make(model.parameters())
    _fused(lambda: _train(model, opt, SAVE_AT, rank))
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
             checkpoint_id=path)
    _train(model, opt, STEPS - SAVE_AT, rank, start=SAVE_AT)

    model2 = _sharded(torch.float64, mesh, seed=1)
    opt2 = make(model2.parameters())
    sd = {"model": get_model_state_dict(model2), "optim": get_optimizer_state_dict(model2, opt2)}
    dcp.load(sd, checkpoint_id=path)
    set_model_state_dict(model2, sd["model"])
    set_optimizer_state_dict(model2, opt2, sd["optim"])
    assert opt2.param_groups[0]["step"] == SAVE_AT
    assert opt2.param_groups[0]["schedules"].keys() == opt.param_groups[0]["schedules"].keys()
    _fused(lambda: _train(model2, opt2, STEPS - SAVE_AT, rank, start=SAVE_AT))
    _assert_bitwise(_local(model2), _local(model))


def _assert_one_estimate(opt, one):
    """Every rank shows one lr="auto" rate per group, that of ``one`` (one process on the whole model
    and batch), and has counted as many steps of each group."""
    shown, theirs = [None] * WORLD, [x for g in one.param_groups for x in (g["lr"], g["step"])]
    dist.all_gather_object(shown, [x for g in opt.param_groups for x in (g["lr"], g["step"])])
    assert shown[0] == shown[1], f"the ranks keep different estimates (or step counts): {shown}"
    assert shown[0] == pytest.approx(theirs, rel=1e-9), (shown, theirs)


AUTO_CASES = {f"{n}-{'fast' if fast else 'reference'}": (n, fast)
              for n in ("adam", "momentum", "gd") for fast in (True, False)}


def _fsdp_auto(rank, mesh, case):
    """lr="auto" on FSDP2 shards: the estimate's sums are added up over the ranks, so every rank
    shows one learning rate, that of one process on the whole model and batch, and the parameters
    follow that run."""
    name, fast = AUTO_CASES[case]
    model = _sharded(torch.float64, mesh)
    opt = descend.create(name, model.parameters(), lr="auto", fast=fast)
    (_fused if fast else lambda run: run())(lambda: _train(model, opt, 3 * STEPS, rank))
    whole = _model(torch.float64)
    one = descend.create(name, whole.parameters(), lr="auto")
    _train(whole, one, 3 * STEPS, 0, whole=True)
    _assert_one_estimate(opt, one)
    full = [p.full_tensor() for p in model.parameters()]
    _assert_close(full, [p.detach() for p in whole.parameters()], torch.float64)
    before = _local(model)
    with opt.averaged(), one.averaged():  # the iterate average, shard by shard, is one process's
        _assert_close([p.full_tensor() for p in model.parameters()],
                      [p.detach().clone() for p in whole.parameters()], torch.float64)
        assert not all(torch.equal(a, b) for a, b in zip(_local(model), before))  # it is swapped in ...
    _assert_bitwise(_local(model), before)  # ... and back out, bitwise


def _fsdp_auto_mixed_group(rank, mesh):
    """A group of sharded and plain tensors has no one way to add its sums up: a ValueError that
    names both layouts, before any parameter, state or step count changes."""
    model = _sharded(torch.float64, mesh)
    plain = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = descend.create("adam", [*model.parameters(), plain], lr="auto")
    _train(model, torch.optim.SGD(model.parameters(), lr=0.0), 1, rank)  # gradients, no move
    plain.grad = torch.ones(3, dtype=torch.float64)
    before = _local(model) + [plain.detach().clone()]
    try:  # (not pytest.raises: its failure is a BaseException, which would end the worker)
        opt.step()
    except ValueError as e:
        assert re.search(r"different layouts \(DTensors on .*Shard.*, plain tensors\)", str(e)), str(e)
    else:
        raise AssertionError("a group of sharded and plain tensors stepped with lr='auto'")
    _assert_bitwise(_local(model) + [plain.detach()], before)
    assert opt.param_groups[0]["step"] == 0 and not opt.state


def _fsdp_skip_nonfinite(rank, mesh):
    """skip_nonfinite=True on FSDP2 shards: a NaN in one rank's shard of a gradient skips the step on
    every rank (each rank alone would see only its own shard: one rank skipped, the other stepped, and
    their step counts and bias corrections parted for the rest of the run)."""
    model = _sharded(torch.float64, mesh)
    opt = descend.Adam(model.parameters(), lr=1e-2, skip_nonfinite=True)
    _train(model, opt, 2, rank)
    before = _local(model)
    opt.zero_grad()
    g = torch.Generator().manual_seed(7)
    torch.nn.functional.mse_loss(model(torch.randn(4, 6, generator=g, dtype=torch.float64)),
                                 torch.randn(4, 1, generator=g, dtype=torch.float64)).backward()
    first = next(iter(model.parameters()))
    if rank == 0:
        first.grad.to_local().view(-1)[0] = float("nan")  # this rank's shard only
    opt.step()
    # every rank reports before any asserts: a rank that failed alone would leave the other waiting
    seen = [None] * WORLD
    unchanged = all(torch.equal(a, b) for a, b in zip(_local(model), before))
    dist.all_gather_object(seen, [unchanged, opt.param_groups[0]["skipped_steps"], opt.state[first]["step"]])
    assert seen == [[True, 1, 2]] * WORLD, f"[unchanged, skipped steps, step count] per rank: {seen}"
    _train(model, opt, 2, rank, start=3)  # and the ranks go on together
    dist.all_gather_object(seen, opt.state[first]["step"])
    assert seen == [4] * WORLD, seen


def _ddp(rank):
    """DDP (plain tensors, the default fast path) with descend.Adam matches torch.optim.Adam; with
    lr="auto", one process on the whole batch."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    hp = _config(BY_NAME["adam"])
    out = []
    for make in (lambda ps: descend.Adam(ps, **hp), lambda ps: torch.optim.Adam(ps, foreach=False, **hp)):
        model = DDP(_model(torch.float64))
        opt = make(model.parameters())
        _train(model, opt, STEPS, rank)
        out.append(_local(model))
        if isinstance(opt, descend.Adam):
            assert opt.__dict__.get("_fast_plans"), "the fused kernel did not run"
    _assert_close(*out, torch.float64)
    # lr="auto": DDP hands every rank the whole, averaged gradient, so every rank's estimate is one
    # process's on the whole batch (no sums to add up: the parameters are plain tensors)
    model, whole = DDP(_model(torch.float64)), _model(torch.float64)
    opt, one = descend.Adam(model.parameters(), lr="auto"), descend.Adam(whole.parameters(), lr="auto")
    _train(model, opt, 3 * STEPS, rank)
    _train(whole, one, 3 * STEPS, 0, whole=True)
    _assert_one_estimate(opt, one)
    _assert_close(_local(model), _local(whole), torch.float64)


def _zero(rank):
    """ZeroRedundancyOptimizer over descend.Adam matches it over torch.optim.Adam; its consolidated
    state_dict, loaded into a fresh one, resumes bitwise."""
    from torch.distributed.optim import ZeroRedundancyOptimizer as ZeRO
    from torch.nn.parallel import DistributedDataParallel as DDP

    hp = _config(BY_NAME["adam"])
    runs = []
    for cls, kw in ((descend.Adam, {}), (torch.optim.Adam, {"foreach": False})):
        model = DDP(_model(torch.float64))
        opt = ZeRO(model.parameters(), optimizer_class=cls, **hp, **kw)
        _train(model, opt, SAVE_AT, rank)
        runs.append((model, opt))
    (model, opt), (tmodel, _) = runs
    _assert_close(_local(model), _local(tmodel), torch.float64)
    assert opt.optim.__dict__.get("_fast_plans"), "the fused kernel did not run"

    opt.consolidate_state_dict(to=0)
    sd = [copy.deepcopy(opt.state_dict()) if rank == 0 else None]  # (as saved: not the live tensors)
    dist.broadcast_object_list(sd, src=0)
    model2 = DDP(_model(torch.float64, seed=1))
    model2.load_state_dict(model.state_dict())
    opt2 = ZeRO(model2.parameters(), optimizer_class=descend.Adam, **{**hp, "lr": 0.5})
    opt2.load_state_dict(sd[0])
    for m, o in ((model, opt), (model2, opt2)):
        _train(m, o, STEPS - SAVE_AT, rank, start=SAVE_AT)
    _assert_bitwise(_local(model2), _local(model))


ZERO_AUTO_CASES = {f"{layout}-{'fast' if fast else 'reference'}": (layout, fast)
                   for layout in ("one-group", "two-groups") for fast in (True, False)}


def _groups(model, layout):
    """The parameters as one group, or as two: the second holds the last layer's bias alone, so that
    one rank's partition of it is empty (ZeRO hands that rank's optimizer an empty group)."""
    ps = list(model.parameters())
    return ps if layout == "one-group" else [{"params": ps[:-1]}, {"params": ps[-1:]}]


def _zero_auto(rank, case):
    """ZeRO over descend.Adam with lr="auto" and partitioned=True, fused and reference: each rank's
    optimizer holds a partition of plain tensors, yet every rank keeps one estimate per group, that of
    one process on the whole model and batch, counts the groups' steps alike (also the rank whose
    partition of a group is empty) and reaches the same parameters; with ZeRO's own broadcast, the same
    iterate average inside ``opt.optim.averaged()``, and its iterates bitwise after it."""
    from torch.distributed.optim import ZeroRedundancyOptimizer as ZeRO
    from torch.nn.parallel import DistributedDataParallel as DDP

    layout, fast = ZERO_AUTO_CASES[case]
    model = DDP(_model(torch.float64))
    opt = ZeRO(_groups(model, layout), optimizer_class=descend.Adam, lr="auto", partitioned=True, fast=fast)
    sizes = [None] * WORLD
    dist.all_gather_object(sizes, [len(g["params"]) for g in opt.optim.param_groups])
    assert (layout == "two-groups") == any(0 in s for s in sizes), sizes  # the empty partition is there
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        (_fused if fast else lambda run: run())(lambda: _train(model, opt, 3 * STEPS, rank))
    assert not [w for w in seen if "Adam" in str(w.message)], [str(w.message) for w in seen]
    whole = _model(torch.float64)
    one = descend.Adam(_groups(whole, layout), lr="auto")
    _train(whole, one, 3 * STEPS, 0, whole=True)
    _assert_one_estimate(opt.optim, one)
    _assert_close(_local(model), _local(whole), torch.float64)
    before = _local(model)
    with opt.optim.averaged(), one.averaged():
        opt._sync_params()  # each rank swapped its own partition in; ZeRO broadcasts the partitions
        _assert_close(_local(model), _local(whole), torch.float64)
        assert not all(torch.equal(a, b) for a, b in zip(_local(model), before))
    opt._sync_params()
    _assert_bitwise(_local(model), before)


def _zero_auto_schedule_lr(rank):
    """descend's ScheduleLR on ZeRO over lr="auto": ZeRO copies its groups' keys into each rank's
    optimizer, so the shape (lr_scale) reaches them; the same run as one process with
    descend.auto(scale=shape), and no warning that a scheduler overwrote the rate shown."""
    from torch.distributed.optim import ZeroRedundancyOptimizer as ZeRO
    from torch.nn.parallel import DistributedDataParallel as DDP

    shape = S.warmup_cosine(1.0, 4, 3 * STEPS)
    model = DDP(_model(torch.float64))
    opt = ZeRO(model.parameters(), optimizer_class=descend.Adam, lr="auto", partitioned=True)
    sched = S.ScheduleLR(opt, shape)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for t in range(3 * STEPS):
            _train(model, opt, 1, rank, start=t)
            sched.step()
    assert not [w for w in seen if "Adam" in str(w.message)], [str(w.message) for w in seen]
    whole = _model(torch.float64)
    one = descend.Adam(whole.parameters(), lr=descend.auto(scale=shape))
    _train(whole, one, 3 * STEPS, 0, whole=True)
    # the estimate and the step count are one process's; the rate shown is still the last step's
    # (the new shape reaches the rank's optimizer at its next step)
    mine, theirs = opt.optim.param_groups[0], one.param_groups[0]
    assert mine["step"] == theirs["step"] == 3 * STEPS
    assert mine["lr_estimate"]["eta"] == pytest.approx(theirs["lr_estimate"]["eta"], rel=1e-9)
    assert mine["lr_scale"] == shape(3 * STEPS - 1) and opt.param_groups[0]["lr_scale"] == shape(3 * STEPS)
    _assert_close(_local(model), _local(whole), torch.float64)


def _zero_auto_unpartitioned(rank):
    """Why partitioned=True exists: without it, each rank's optimizer estimates lr="auto" from its own
    partition, and the ranks' rates part."""
    from torch.distributed.optim import ZeroRedundancyOptimizer as ZeRO
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(_model(torch.float64))
    opt = ZeRO(model.parameters(), optimizer_class=descend.Adam, lr="auto")
    _train(model, opt, STEPS, rank)
    shown = [None] * WORLD
    dist.all_gather_object(shown, opt.optim.param_groups[0]["lr"])
    assert shown[0] != pytest.approx(shown[1], rel=1e-3), shown


def _zero_skip_nonfinite(rank):
    """skip_nonfinite=True with partitioned=True under ZeRO: a NaN in one rank's partition of a group
    skips that group's step on every rank (alone, that rank skipped and the other stepped its
    partition); the other group, empty on one rank, steps and is counted on both."""
    from torch.distributed.optim import ZeroRedundancyOptimizer as ZeRO
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(_model(torch.float64))
    opt = ZeRO(_groups(model, "two-groups"), optimizer_class=descend.Adam, lr=1e-2, skip_nonfinite=True,
               partitioned=True)
    _train(model, opt, 2, rank)
    before = _local(model)
    opt.zero_grad()
    g = torch.Generator().manual_seed(7)
    torch.nn.functional.mse_loss(model(torch.randn(4, 6, generator=g, dtype=torch.float64)),
                                 torch.randn(4, 1, generator=g, dtype=torch.float64)).backward()
    if rank == 0:
        opt.optim.param_groups[0]["params"][0].grad.view(-1)[0] = float("nan")  # this rank's partition only
    opt.step()
    after = _local(model)
    seen = [None] * WORLD  # every rank reports before any asserts
    dist.all_gather_object(seen, [all(torch.equal(a, b) for a, b in zip(after[:-1], before[:-1])),
                                  not torch.equal(after[-1], before[-1]),
                                  [g["skipped_steps"] for g in opt.optim.param_groups],
                                  [g["step"] for g in opt.optim.param_groups]])
    assert seen == [[True, True, [1, 0], [2, 3]]] * WORLD, \
        f"[group 0 unchanged, group 1 stepped, skipped steps, step counts] per rank: {seen}"
    _train(model, opt, 2, rank, start=3)  # and the ranks go on together
    dist.all_gather_object(seen, [g["step"] for g in opt.optim.param_groups])
    assert seen == [[4, 5]] * WORLD, seen


def _worker(rank: int, init_method: str, root: str) -> None:
    import torch.distributed.checkpoint  # noqa: F401  (dist.checkpoint.api below)
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    _spy_on_the_kernel()
    # a rank that fails between collectives leaves the other waiting: time out instead of hanging
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    mesh = init_device_mesh("cpu", (WORLD,))
    scenarios = {f"fsdp-{n}": (lambda n=n: _fsdp_matches_torch(rank, mesh, n)) for n in FSDP_CASES}
    scenarios.update({f"dcp-{n}": (lambda n=n: _dcp_case(rank, mesh, n, root)) for n in DCP_CASES})
    scenarios.update({f"auto-{c}": (lambda c=c: _fsdp_auto(rank, mesh, c)) for c in AUTO_CASES})
    scenarios["auto-mixed-group"] = lambda: _fsdp_auto_mixed_group(rank, mesh)
    scenarios["skip-nonfinite"] = lambda: _fsdp_skip_nonfinite(rank, mesh)
    scenarios["ddp"] = lambda: _ddp(rank)
    scenarios["zero"] = lambda: _zero(rank)
    scenarios.update({f"zero-auto-{c}": (lambda c=c: _zero_auto(rank, c)) for c in ZERO_AUTO_CASES})
    scenarios["zero-auto-unpartitioned"] = lambda: _zero_auto_unpartitioned(rank)
    scenarios["zero-auto-schedule-lr"] = lambda: _zero_auto_schedule_lr(rank)
    scenarios["zero-skip-nonfinite"] = lambda: _zero_skip_nonfinite(rank)
    results, times = {}, {}
    for name, run in scenarios.items():
        t0 = time.perf_counter()
        try:
            run()
            results[name] = None
        except (Exception, dist.checkpoint.api.CheckpointException):  # (DCP's is a BaseException)
            results[name] = traceback.format_exc()  # recorded; the next scenario runs on both ranks
        times[name] = round(time.perf_counter() - t0, 2)
    print(f"rank {rank} seconds per scenario: {times}", flush=True)
    with open(os.path.join(root, f"results-{rank}.json"), "w") as f:
        json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()
    # every result is on disk: leave without the interpreter's teardown, where gloo's threads can abort
    # the process (std::terminate) after the work is done, as a single-rank ZeRO run once did in CI
    os._exit(0)


# --------------------------------------------------------------------------- pytest's side


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("dist")
    try:
        mp.spawn(_worker, args=(f"file://{root}/store", str(root)), nprocs=WORLD, join=True)
    except mp.ProcessExitedException as e:  # a crash: say where it happened (it still fails every test)
        written = [r for r in range(WORLD) if (root / f"results-{r}.json").exists()]
        raise RuntimeError(f"a worker died ({e}); ranks that had recorded every scenario's result "
                           f"before: {written} (all of them: the crash came at shutdown, after the "
                           "scenarios)") from e
    out = []
    for rank in range(WORLD):
        with open(root / f"results-{rank}.json") as f:
            out.append(json.load(f))
    return out


def _check(results, scenario):
    errors = [f"rank {r}:\n{res[scenario]}" for r, res in enumerate(results) if res[scenario] is not None]
    if errors:
        pytest.fail(f"{scenario} failed\n" + "\n".join(errors), pytrace=False)


@pytest.mark.parametrize("name", FSDP_CASES)
def test_fsdp2_matches_torch(results, name):
    _check(results, f"fsdp-{name}")


@pytest.mark.parametrize("name", DCP_CASES)
def test_distributed_checkpoint_resumes_bitwise(results, name):
    _check(results, f"dcp-{name}")


@pytest.mark.parametrize("case", AUTO_CASES)
def test_fsdp2_lr_auto_keeps_one_estimate_across_ranks(results, case):
    _check(results, f"auto-{case}")


def test_fsdp2_lr_auto_refuses_a_group_of_mixed_layouts(results):
    _check(results, "auto-mixed-group")


def test_fsdp2_skip_nonfinite_skips_on_every_rank_alike(results):
    _check(results, "skip-nonfinite")


def test_ddp_matches_torch(results):
    _check(results, "ddp")


def test_zero_redundancy_optimizer(results):
    _check(results, "zero")


@pytest.mark.parametrize("case", ZERO_AUTO_CASES)
def test_zero_partitioned_lr_auto_keeps_one_estimate_across_ranks(results, case):
    _check(results, f"zero-auto-{case}")


def test_zero_partitioned_lr_auto_takes_a_schedule_lr_shape(results):
    _check(results, "zero-auto-schedule-lr")


def test_zero_unpartitioned_lr_auto_estimates_one_rate_per_rank(results):
    _check(results, "zero-auto-unpartitioned")


def test_zero_partitioned_skip_nonfinite_skips_on_every_rank_alike(results):
    _check(results, "zero-skip-nonfinite")
