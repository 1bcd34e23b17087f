"""torch.compile: a compiled training step that calls ``opt.step()``, and ``torch.compile(opt.step)``,
compile once and never again, and give the eager results.

The step is opaque to dynamo (``ChainOptimizer.step`` is ``torch.compiler.disable``d): dynamo breaks the
graph at the call and the step runs eagerly, fused kernel included. Traced instead, it guarded on the
integer step counts and recompiled on every step until torch's limit of 8. Graphs are counted with
dynamo's own counting backend (``CompileCounter`` runs them eagerly, so the tests stay fast);
``error_on_recompile`` turns any recompilation into a failure. Speed: ``scripts/bench_compile.py``.
"""

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter, CompileCounterWithBackend

import descend
from optim_db import Decay

STEPS = 12

CASES = {
    "adam": lambda ps: descend.Adam(ps, lr=0.01, weight_decay=0.1),
    "sgd-nesterov": lambda ps: descend.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    "rmsprop-scheduled": lambda ps: descend.RMSProp(ps, lr=Decay(0.01, half_life=4, warmup=3), centered=True),
    "lion": lambda ps: descend.Lion(ps, lr=1e-3),
    # the estimate changes group["lr"] (a Python float) every step: still no recompilation
    "adam-auto": lambda ps: descend.Adam(ps, lr="auto"),
    "momentum-auto-scheduled": lambda ps: descend.Momentum(ps, lr=descend.auto(scale=Decay(1.0, half_life=4, warmup=3))),
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    X, y = torch.randn(32, 8), torch.randn(32, 1)
    return model, X, y


def _train(make_opt, compile_step=None, compile_opt_step=None, steps=STEPS):
    """Train the small model; return its parameters, the optimizer and the number of graphs compiled
    after each step. ``compile_step``: a backend to compile the whole training step (forward,
    backward, ``opt.step()``) with; ``compile_opt_step``: one to compile ``opt.step`` alone with."""
    model, X, y = _setup()
    opt = make_opt(list(model.parameters()))

    def train_step():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(X), y)
        loss.backward()
        opt.step()
        return loss

    def train_step_opt_compiled():
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(X), y).backward()
        step()

    if compile_step is not None:
        train_step = torch.compile(train_step, backend=compile_step)
    if compile_opt_step is not None:
        step = torch.compile(opt.step, backend=compile_opt_step)
        train_step = train_step_opt_compiled
    graphs = []
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(steps):
            train_step()
            graphs.append(getattr(compile_step or compile_opt_step, "frame_count", None))
    return [p.detach().clone() for p in model.parameters()], opt, graphs


def _assert_equal(a, b):
    for x, y in zip(a, b):
        assert torch.equal(x, y), (x - y).abs().max()


@pytest.mark.parametrize("name", CASES)
def test_a_compiled_training_step_compiles_once(name):
    eager, _, _ = _train(CASES[name])
    cnt = CompileCounter()
    compiled, opt, graphs = _train(CASES[name], compile_step=cnt)
    assert graphs[0] >= 1  # the forward was compiled ...
    assert graphs == graphs[:1] * STEPS  # ... on the first step, and nothing after it
    _assert_equal(compiled, eager)
    assert opt.param_groups[0]["step"] == STEPS
    assert opt.__dict__.get("_fast_plans"), "the fused kernel did not run under torch.compile"


@pytest.mark.parametrize("name", CASES)
def test_compiling_opt_step_traces_nothing(name):
    """``torch.compile(opt.step)``: the step runs eagerly, no graph, no recompilation."""
    eager, _, _ = _train(CASES[name])
    cnt = CompileCounter()
    compiled, opt, graphs = _train(CASES[name], compile_opt_step=cnt)
    assert graphs == [0] * STEPS
    _assert_equal(compiled, eager)
    assert opt.__dict__.get("_fast_plans"), "the fused kernel did not run under torch.compile"


def test_aot_autograd_gradients_step_as_eager():
    """With AOTAutograd (a compiled backward writes the gradients) the step sees the same numbers."""
    eager, _, _ = _train(CASES["adam"])
    cnt = CompileCounterWithBackend("aot_eager")
    compiled, _, graphs = _train(CASES["adam"], compile_step=cnt)
    assert graphs == graphs[:1] * STEPS
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-7)


def test_hooks_closure_and_profiler_under_compile():
    """Step hooks fire once per step, a closure passed to a compiled ``opt.step`` is evaluated, and the
    profiler records the step."""
    model, X, y = _setup()
    opt = descend.Adam(model.parameters(), lr=0.01)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(X), y)
        loss.backward()
        return loss

    cnt = CompileCounter()
    step = torch.compile(opt.step, backend=cnt)
    with torch._dynamo.config.patch(error_on_recompile=True):
        losses = [step(closure).item() for _ in range(4)]
    assert calls == ["pre", "post"] * 4
    assert losses[-1] < losses[0]
    assert opt.param_groups[0]["step"] == 4 and cnt.frame_count == 0
    # and the profiler sees the step under its torch.optim name, as in eager mode
    with torch.autograd.profiler.profile() as prof:
        step(closure)
    assert any(e.name == "Optimizer.step#Adam.step" for e in prof.function_events)
