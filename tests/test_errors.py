"""Bad input: invalid hyperparameters, unknown names, mismatched state_dicts, non-finite gradients."""

import copy
import inspect
import math

import numpy as np
import pytest
import torch

import descend
from optim_db import OPTIMS, Decay, loss_fn, make_params, trajectory, assert_bitwise

ids = lambda o: o.name  # noqa: E731

# hyperparameter → (bad values, a phrase of the valid range the message must show)
BAD = {
    "lr": ([-1.0, math.nan, math.inf], ">= 0"),
    "betas": ([(1.0, 0.999), (0.9, -0.1), (0.9, 1.0), (math.nan, 0.9)], "[0, 1)"),
    "momentum": ([1.0, -0.1, math.nan], "[0, 1)"),
    "alpha": ([1.0, -0.5], "[0, 1)"),
    "rho": ([1.0, -0.5], "[0, 1)"),
    "dampening": ([1.5, -0.1], "[0, 1]"),
    "eps": ([0.0, -1e-8, math.nan], "> 0"),
    "weight_decay": ([-0.1, math.nan], ">= 0"),
    "lr_decay": ([-0.1], ">= 0"),
    "momentum_decay": ([-1.0], ">= 0"),
    "initial_accumulator_value": ([-1.0], ">= 0"),
    "amsgrad": (["yes", 1], "True or False"),
    "centered": (["yes"], "True or False"),
    "maximize": (["no", 0], "True or False"),
    "skip_nonfinite": ([None], "True or False"),
    "partitioned": ([None, 1, "yes"], "True or False"),
}


def _cases():
    for o in OPTIMS:
        names = inspect.signature(o.cls.__init__).parameters
        for hp, (values, rng) in BAD.items():
            if hp in names:
                for v in values:
                    yield pytest.param(o, hp, v, rng, id=f"{o.name}-{hp}={v!r}")


@pytest.mark.parametrize("info,hp,value,rng", list(_cases()))
def test_invalid_hyperparameter_raises_at_construction(info, hp, value, rng):
    params = make_params()
    with pytest.raises(ValueError) as e:
        info.make(params, **{hp: value})
    msg = str(e.value)
    shown = repr(value) if hp != "betas" else None
    assert hp in msg and rng in msg and info.cls.__name__ in msg, msg
    if shown is not None:
        assert shown in msg, msg
    else:  # the bad element of the pair, by index and value
        i = 0 if not (0 <= value[0] < 1) else 1
        assert f"betas[{i}]={value[i]!r}" in msg, msg


def test_every_optimizer_has_invalid_cases():
    names = {c.values[0].name for c in _cases()}
    assert names == {o.name for o in OPTIMS}


@pytest.mark.parametrize("cls,kw", [(descend.SGD, {"lr": 0.1, "nesterov": True}),
                                    (descend.SGD, {"lr": 0.1, "nesterov": True, "momentum": 0.9, "dampening": 0.1}),
                                    (descend.Nesterov, {"lr": 0.1, "momentum": 0.0})])
def test_nesterov_needs_momentum(cls, kw):
    with pytest.raises(ValueError, match=r"nesterov=True.*momentum=.*\(0, 1\)"):
        cls(make_params(), **kw)


@pytest.mark.parametrize("info", OPTIMS, ids=ids)
def test_empty_parameter_list(info):
    with pytest.raises(ValueError, match=rf"{info.cls.__name__}.*empty parameter list"):
        info.make([])
    with pytest.raises(ValueError, match="empty parameter list"):
        info.make(iter([]))


@pytest.mark.parametrize("info", OPTIMS, ids=ids)
def test_unknown_hyperparameter(info):
    with pytest.raises(TypeError):
        info.make(make_params(), not_a_hyperparameter=1.0)


def test_invalid_schedule_value_raises_at_construction():
    """A schedule is checked by its value at step 0."""
    with pytest.raises(ValueError, match="lr=-0.1"):
        descend.Momentum(make_params(), lr=Decay(-0.1, 10))


def test_create_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as e:
        descend.create("adamm", make_params())
    msg = str(e.value)
    assert "'adamm'" in msg
    for name in descend.available():
        assert name in msg
    assert isinstance(descend.create("ADAM", make_params()), descend.Adam)


# ------------------------------------------------------------------ load_state_dict


def _stepped(cls, params, groups=None, **hp):
    opt = cls(groups or params, **hp)
    for t in range(2):
        opt.zero_grad()
        sum((torch.sin(p) * p * (1 + t)).sum() for p in params).backward()
        opt.step()
    return opt


def _assert_unchanged(opt, before):
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert after["state"].keys() == before["state"].keys()
    for k, st in before["state"].items():
        for n, v in st.items():
            w = after["state"][k][n]
            assert (torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w), (k, n)


def _bad_state_dicts():
    p = make_params()
    yield "another optimizer", _stepped(descend.AdaGrad, p).state_dict()
    yield "fewer parameters", _stepped(descend.Adam, make_params()[:2]).state_dict()
    yield "other shapes", _stepped(descend.Adam, [torch.ones(2, 2, requires_grad=True), *make_params()[1:]]).state_dict()
    two = make_params()
    yield "two groups", _stepped(descend.Adam, two, [{"params": two[:1]}, {"params": two[1:]}]).state_dict()
    sd = copy.deepcopy(_stepped(descend.Adam, make_params()).state_dict())
    sd["param_groups"][0]["lr"] = -1.0
    yield "an invalid value", sd
    sd = copy.deepcopy(_stepped(descend.Adam, make_params()).state_dict())
    sd["state"][0]["bogus"] = torch.zeros(1)
    yield "unknown state", sd
    yield "not a state_dict", {"foo": 1}
    yield "torch's Adam with decoupled weight decay", _stepped(
        torch.optim.Adam, make_params(), lr=0.01, weight_decay=0.1, decoupled_weight_decay=True).state_dict()


@pytest.mark.parametrize("what,sd", list(_bad_state_dicts()), ids=lambda x: x if isinstance(x, str) else "")
def test_load_state_dict_mismatch_changes_nothing(what, sd):
    params = make_params()
    opt = _stepped(descend.Adam, params, lr=0.01)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match="Adam.load_state_dict"):
        opt.load_state_dict(sd)
    _assert_unchanged(opt, before)
    # and it still steps as an untouched copy does
    params2, opt2 = copy.deepcopy((params, opt))
    for o, ps in ((opt, params), (opt2, params2)):
        o.zero_grad()
        loss_fn(ps, 5).backward()
        o.step()
    assert not torch.equal(params[0], make_params()[0])
    assert_bitwise([params], [params2])


def _with(edit):
    """A state_dict of a stepped descend.Adam over make_params(), changed by ``edit(sd)``."""
    sd = copy.deepcopy(_stepped(descend.Adam, make_params(), lr=0.01).state_dict())
    edit(sd)
    return sd


def _set_state(pid, key, value):
    return lambda sd: sd["state"][pid].__setitem__(key, value)


def _set_group(key, value):
    return lambda sd: sd["param_groups"][0].__setitem__(key, value)


# what is wrong -> (the change, what the message must say); each of these loaded before, and then
# failed in step() with a math error, or (string ids) silently dropped every state tensor
BAD_ENTRIES = {
    "step -3": (_set_state(1, "step", -3), r"state 'step' of parameter 1 is -3; expected a non-negative integer"),
    "step '2'": (_set_state(0, "step", "2"), r"state 'step' of parameter 0 is '2'; expected a non-negative"),
    "step None": (_set_state(2, "step", None), r"'step' of parameter 2 is None"),
    "step 2.5": (_set_state(0, "step", 2.5), r"'step' of parameter 0 is 2.5"),
    "step True": (_set_state(0, "step", True), r"'step' of parameter 0 is True"),
    "step 2-element tensor": (_set_state(0, "step", torch.tensor([2.0, 2.0])), r"'step' of parameter 0 is tensor"),
    "step tensor -1": (_set_state(0, "step", torch.tensor(-1.0)), r"'step' of parameter 0 is tensor\(-1\.\)"),
    "step tensor 2.5": (_set_state(0, "step", torch.tensor(2.5)), r"'step' of parameter 0 is tensor\(2\.5"),
    "step tensor nan": (_set_state(0, "step", torch.tensor(math.nan)), r"'step' of parameter 0 is tensor\(nan"),
    "string ids (JSON)": (lambda sd: sd.__setitem__("state", {str(k): v for k, v in sd["state"].items()}),
                          r"parameter id '0' \(str\), which no saved parameter group lists; they list \[0, 1, 2\]"
                          r" \(string ids, as after a JSON round trip\?\)"),
    "an unlisted id": (lambda sd: sd["state"].__setitem__(7, dict(sd["state"][0])), r"parameter id 7 \(int\)"),
    "a state that is not a dict": (lambda sd: sd["state"].__setitem__(1, [1, 2]), r"state of parameter 1 is a list"),
    "group step -1": (_set_group("step", -1), r"group 0 has step=-1; expected a non-negative integer"),
    "group step '2'": (_set_group("step", "2"), r"group 0 has step='2'"),
    "group skipped_steps None": (_set_group("skipped_steps", None), r"group 0 has skipped_steps=None"),
    "group skipped_steps 0.5": (_set_group("skipped_steps", 0.5), r"group 0 has skipped_steps=0.5"),
}


@pytest.mark.parametrize("what", BAD_ENTRIES)
def test_load_state_dict_refuses_a_bad_entry_naming_it(what):
    edit, message = BAD_ENTRIES[what]
    params = make_params()
    opt = _stepped(descend.Adam, params, lr=0.01)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=r"Adam\.load_state_dict: .*" + message):
        opt.load_state_dict(_with(edit))
    _assert_unchanged(opt, before)
    assert all(isinstance(st["step"], int) for st in opt.state.values())


def test_nadam_refuses_a_bad_mu_product():
    opt = _stepped(descend.NAdam, make_params(), lr=0.01)
    sd = copy.deepcopy(opt.state_dict())
    before = copy.deepcopy(sd)
    sd["state"][0]["mu_product"] = torch.ones(2)
    with pytest.raises(ValueError, match=r"state 'mu_product' of parameter 0 is tensor\(\[1\., 1\.\]\); expected a real"):
        opt.load_state_dict(sd)
    _assert_unchanged(opt, before)


@pytest.mark.parametrize("step", [torch.tensor(2.0), torch.tensor(2), torch.tensor([2.0]), 2, np.int64(2)],
                         ids=["f32 tensor", "int tensor", "1-element", "int", "numpy int"])
def test_load_state_dict_takes_a_count_in_any_form_torch_saves(step):
    """torch.optim saves step counts as float tensors; they load as ints (and the group's too)."""
    ref = _stepped(descend.Adam, make_params(), lr=0.01)
    sd = copy.deepcopy(ref.state_dict())
    for st in sd["state"].values():
        st["step"] = step
    sd["param_groups"][0]["step"] = step
    sd["param_groups"][0]["skipped_steps"] = np.int64(0)
    opt = _stepped(descend.Adam, make_params(), lr=0.01)
    opt.load_state_dict(sd)
    assert [st["step"] for st in opt.state.values()] == [2, 2, 2]
    assert all(type(st["step"]) is int for st in opt.state.values())
    g = opt.param_groups[0]
    assert (type(g["step"]), g["step"], type(g["skipped_steps"]), g["skipped_steps"]) == (int, 2, int, 0)


def test_a_torch_rule_switch_this_optimizer_lacks_is_named():
    opt = _stepped(descend.Adam, make_params(), lr=0.01)
    sd = _stepped(torch.optim.Adam, make_params(), lr=0.01, decoupled_weight_decay=True).state_dict()
    with pytest.raises(ValueError, match=r"decoupled_weight_decay=True.*descend\.AdamW"):
        opt.load_state_dict(sd)
    gd = _stepped(descend.GD, make_params(), lr=0.01)
    with pytest.raises(ValueError, match="momentum=0.9"):
        gd.load_state_dict(_stepped(torch.optim.SGD, make_params(), lr=0.01, momentum=0.9).state_dict())


@pytest.mark.parametrize("ours,theirs,kw", [(descend.AdamW, torch.optim.AdamW, {}),
                                            (descend.Adam, torch.optim.Adam, {}),
                                            (descend.GD, torch.optim.SGD, {})])
def test_torch_state_loads_without_torch_s_execution_switches(ours, theirs, kw):
    """torch.optim's foreach/fused/capturable/differentiable say how torch runs a step: dropped; a rule
    switch at the value this optimizer implies (AdamW's decoupled weight decay) loads."""
    opt = _stepped(ours, make_params(), lr=0.01)
    opt.load_state_dict(_stepped(theirs, make_params(), lr=0.01, **kw).state_dict())
    keys = set(opt.param_groups[0])
    assert not keys & {"foreach", "fused", "capturable", "differentiable", "decoupled_weight_decay"}


# ------------------------------------------------------------------ non-finite gradients


def _nan_at(t_bad):
    def before_step(opt, params, t):
        if t == t_bad:
            params[0].grad[0, 0] = math.nan
    return before_step


@pytest.mark.parametrize("info", OPTIMS, ids=ids)
def test_nan_gradient_propagates_by_default(info):
    """As in torch.optim: the NaN reaches the parameter (and only the element it was in, for
    elementwise rules)."""
    traj = trajectory(lambda ps: info.make(ps, lr=0.01), steps=3, before_step=_nan_at(1), no_grad_at={})
    assert not torch.isnan(traj[0][0]).any()
    assert torch.isnan(traj[1][0][0, 0])
    assert not torch.isnan(traj[1][1]).any()  # other parameters are untouched by it


@pytest.mark.parametrize("info", OPTIMS, ids=ids)
def test_skip_nonfinite(info):
    """skip_nonfinite=True: the bad step changes no parameter, no state and no step counter, and counts
    in group["skipped_steps"]; the run then goes on exactly as one that never saw the bad step."""
    seen = {}

    def bad_then_check(opt, params, t):
        if t == 2:
            seen["before"] = (copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in params])
            params[1].grad[0] = math.inf
            opt.step()  # the bad step (the trajectory then takes the normal step t = 2)
            sd, ps = seen["before"]
            assert sd["param_groups"][0]["skipped_steps"] == 0
            sd["param_groups"][0]["skipped_steps"] = 1  # the only change
            _assert_unchanged(opt, sd)
            assert all(torch.equal(p, q) for p, q in zip(params, ps))
            assert opt.param_groups[0]["skipped_steps"] == 1
            params[1].grad = None
            loss_fn(params, t).backward(inputs=[params[1]])  # a clean gradient for the normal step

    skipping = trajectory(lambda ps: info.make(ps, lr=0.01, skip_nonfinite=True), steps=5,
                          before_step=bad_then_check, no_grad_at={})
    clean = trajectory(lambda ps: info.make(ps, lr=0.01), steps=5, no_grad_at={})
    assert "before" in seen
    assert_bitwise(skipping, clean, what=info.name)


def test_skip_nonfinite_counts_per_group():
    p = make_params()
    opt = descend.Adam([{"params": p[:1]}, {"params": p[1:]}], skip_nonfinite=True)
    loss_fn(p, 0).backward()
    p[0].grad[0, 0] = -math.inf
    opt.step()
    assert [g["skipped_steps"] for g in opt.param_groups] == [1, 0]
    assert [g["step"] for g in opt.param_groups] == [0, 1]
