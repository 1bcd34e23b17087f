"""Every optimizer with a torch.optim counterpart matches it step by step (torch's for-loop mode as the
reference), over every hyperparameter combination in tests/optim_db.py, with steps where some
parameters get no gradient."""

import pytest
import torch

from optim_db import WITH_TORCH, assert_same_trajectory, trajectory


def _cases():
    """float64 over every combination; float32 over every third one (the rules are the same code, and
    the grid is large: this keeps the file fast)."""
    for o in WITH_TORCH:
        for i, hp in enumerate(o.parity_configs()):
            yield pytest.param(o, hp, torch.float64, id=f"{o.name}-{i}-f64")
            if i % 3 == 0:
                yield pytest.param(o, hp, torch.float32, id=f"{o.name}-{i}-f32")


@pytest.mark.parametrize("info,hp,dtype", list(_cases()))
def test_matches_torch(info, hp, dtype):
    ours = trajectory(lambda ps: info.make(ps, **hp, **info.torch_fixed), dtype=dtype)
    with info.torch_dtype_context(dtype):
        theirs = trajectory(lambda ps: info.torch_cls(ps, foreach=False, **hp), dtype=dtype)
    assert_same_trajectory(ours, theirs, dtype, what=f"{info.name} {hp}")


def test_every_counterpart_has_cases():
    for o in WITH_TORCH:
        assert len(o.parity_configs()) >= 2, o.name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("info", WITH_TORCH, ids=lambda o: o.name)
def test_tensor_lr(info, dtype):
    """lr given as a 0-d tensor (``torch.tensor(0.01)``, in the parameters' dtype) matches torch.

    (A float32 lr tensor with float64 parameters is not compared at 1e-10: torch.optim.Adam and others
    then compute lr / (1 − β₁ᵗ) as a float32 tensor, a torch rounding, not a rule difference.)
    """
    lr = torch.tensor(0.01, dtype=dtype)
    ours = trajectory(lambda ps: info.make(ps, lr=lr.clone(), **info.torch_fixed), dtype=dtype)
    with info.torch_dtype_context(dtype):
        theirs = trajectory(lambda ps: info.torch_cls(ps, lr=lr.clone(), foreach=False), dtype=dtype)
    assert_same_trajectory(ours, theirs, dtype, what=info.name)
    # and it is really the lr in use: a ten times larger tensor lr moves differently
    other = trajectory(lambda ps: info.make(ps, lr=lr * 10, **info.torch_fixed), dtype=dtype)
    assert not torch.allclose(other[-1][0], ours[-1][0])


def test_nadam_float64_quirk_is_real():
    """The table's float64_default_for_parity field is needed: without it torch's NAdam keeps mu_product
    in float32 and drifts from an exact float64 computation by far more than 1e-10."""
    from optim_db import BY_NAME

    info = BY_NAME["nadam"]
    assert info.float64_default_for_parity
    ours = trajectory(lambda ps: info.make(ps, lr=0.01))
    torch.set_default_dtype(torch.float32)
    theirs = trajectory(lambda ps: info.torch_cls(ps, lr=0.01, foreach=False))
    with pytest.raises(AssertionError):
        assert_same_trajectory(ours, theirs, torch.float64)


@pytest.mark.parametrize("info", WITH_TORCH, ids=lambda o: o.name)
def test_resume_from_the_torch_counterparts_state_dict(info):
    """A state_dict saved by the torch.optim counterpart (tensor step counts, NAdam's tensor mu_product)
    loads into the descend optimizer, which then continues exactly as torch does."""
    hp = info.parity_configs()[-1]
    with info.torch_dtype_context(torch.float64):
        def switch_at_3(opt, params, t):
            if t == 3:  # hand torch's state over to descend, mid-run
                ours = info.make(params, **hp, **info.torch_fixed)
                ours.load_state_dict(opt.torch.state_dict())
                opt.current = ours

        class Handover:
            def __init__(self, ps):
                self.torch = self.current = info.torch_cls(ps, foreach=False, **hp)

            def zero_grad(self, set_to_none=True):
                self.current.zero_grad(set_to_none=set_to_none)

            def step(self):
                self.current.step()

        mixed = trajectory(Handover, before_step=switch_at_3)
        theirs = trajectory(lambda ps: info.torch_cls(ps, foreach=False, **hp))
    assert_same_trajectory(mixed, theirs, what=f"{info.name} {hp}")
