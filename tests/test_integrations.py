"""lr="auto" under the training loops practitioners use, where they are installed (the test extra
brings them; they are not descend dependencies): a descend ScheduleLR passed as the loop's scheduler
shapes the estimate, and what the loop logs as the learning rate is the rate in use; the loop's
evaluations see the averaged weights (opt.eval() / opt.train()) and leave training as it was."""

import warnings

import pytest
import torch

import descend
from descend import schedules as S


def _data(n=256):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 10, generator=g)
    return x, (x[:, 0] > 0).long()


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))


def _no_auto_warning(caught):
    return not [w for w in caught if "lr='auto'" in str(w.message)]


def _hf_setup():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    x, y = _data()
    vx, vy = _data(96)
    vx = vx + 0.5  # other rows

    class Data(torch.utils.data.Dataset):
        def __init__(self, x, y):
            self.x, self.y = x, y

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return {"x": self.x[i], "labels": self.y[i]}

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def forward(self, x, labels=None):
            out = self.net(x)
            return {"loss": torch.nn.functional.cross_entropy(out, labels), "logits": out}

    return transformers, Data(x, y), Data(vx, vy), Model, (vx, vy)


def test_hf_trainer_logs_the_rate_in_use(tmp_path):
    transformers, train, _, Model, _ = _hf_setup()
    x = train.x
    model = Model()
    steps = 3 * len(x) // 32
    opt = descend.Adam(model.parameters(), lr="auto")
    shape = S.warmup_cosine(1.0, 4, steps)
    seen = []

    class Watch(transformers.TrainerCallback):  # HF logs the rate of the step just taken
        def on_step_begin(self, args, state, control, **kw):
            self.in_use = opt.param_groups[0]["lr"]

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "learning_rate" in logs:
                seen.append((logs["learning_rate"], self.in_use))

    args = transformers.TrainingArguments(output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=32,
                                          logging_steps=4, report_to=[], save_strategy="no", use_cpu=True,
                                          disable_tqdm=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = transformers.Trainer(model=model, args=args, train_dataset=train,
                                       optimizers=(opt, S.ScheduleLR(opt, shape)), callbacks=[Watch()])
        trainer.train()
    assert _no_auto_warning(caught)
    assert len(seen) >= 4 and all(logged == in_use > 0 for logged, in_use in seen)
    g = opt.param_groups[0]
    assert g["step"] == steps and g["lr_scale"] == shape(steps) and g["lr_estimate"]["eta"] > 0


def test_lightning_monitor_logs_the_rate_in_use(tmp_path):
    L = pytest.importorskip("lightning")
    from lightning.pytorch.callbacks import LearningRateMonitor

    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    steps = 3 * len(x) // 32
    shape = S.warmup_cosine(1.0, 4, steps)
    shown, logged = [], []

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def training_step(self, batch, i):
            shown.append(self.optimizers().optimizer.param_groups[0]["lr"])
            return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            opt = descend.Adam(self.parameters(), lr="auto")
            return {"optimizer": opt, "lr_scheduler": {"scheduler": S.ScheduleLR(opt, shape), "interval": "step"}}

    class Logger(L.pytorch.loggers.logger.DummyLogger):
        def log_metrics(self, metrics, step=None):
            logged.extend(v for k, v in metrics.items() if k.startswith("lr-"))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = L.Trainer(max_epochs=3, logger=Logger(), callbacks=[LearningRateMonitor("step")], log_every_n_steps=1,
                            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                            accelerator="cpu", default_root_dir=str(tmp_path))
        trainer.fit(Module(), loader)
    assert _no_auto_warning(caught)
    assert len(logged) >= steps - 1 and all(any(v == s for s in shown) for v in logged)
    assert max(logged) > 10 * min(v for v in logged if v > 0)  # the warm-up and the cosine shaped it
    g = trainer.optimizers[0].param_groups[0]
    assert g["lr_scale"] == shape(steps) and g["lr_estimate"]["eta"] > 0


def test_hf_trainer_evaluates_the_averaged_weights_and_trains_as_without_evaluating(tmp_path):
    transformers, train, val, Model, (vx, vy) = _hf_setup()
    seen = []

    def fit(evaluate):
        model = Model()
        opt = descend.Adam(model.parameters(), lr="auto")

        class Check(transformers.TrainerCallback):  # HF called opt.eval() before evaluating
            def on_evaluate(self, args, state, control, metrics=None, **kw):
                p = opt.param_groups[0]["params"][0]
                with torch.no_grad():
                    here = torch.nn.functional.cross_entropy(model.net(vx), vy).item()
                    iterate = p.detach().clone()
                    p.copy_(opt.state[p]["avg"])  # in eval mode the iterate waits in the average's place
                    at_iterate = torch.nn.functional.cross_entropy(model.net(vx), vy).item()
                    p.copy_(iterate)
                seen.append((opt.param_groups[0].get("averaged_in"), metrics["eval_loss"], here, at_iterate))

        args = transformers.TrainingArguments(
            output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=32,
            per_device_eval_batch_size=len(vx), eval_strategy="steps" if evaluate else "no", eval_steps=5,
            report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                                       optimizers=(opt, S.ScheduleLR(opt, S.warmup_cosine(1.0, 4, 24))),
                                       callbacks=[Check()])
        trainer.train()
        opt.train()  # (the last evaluation may have left the average in)
        return [p.detach().clone() for p in model.parameters()]

    evaluated = fit(True)
    assert len(seen) >= 4
    for mode, logged, here, at_iterate in seen:
        assert mode is True and logged == pytest.approx(here, rel=1e-6) and at_iterate != here
    assert all(torch.equal(a, b) for a, b in zip(evaluated, fit(False)))


def test_lightning_validates_the_averaged_weights_with_two_hooks(tmp_path):
    L = pytest.importorskip("lightning")
    x, y = _data()
    vx, vy = _data(96)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(vx + 0.5, vy), batch_size=96)
    seen = []

    class Module(L.LightningModule):
        def __init__(self, hooks):
            super().__init__()
            self.net, self.hooks = _net(), hooks

        def training_step(self, batch, i):
            return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def validation_step(self, batch, i):
            opt = self.optimizers().optimizer
            seen.append((opt.param_groups[0].get("averaged_in"), "avg" in opt.state.get(self.net[0].weight, {})))

        def on_validation_start(self):  # the README's two hooks
            if self.hooks:
                self.optimizers().eval()

        def on_validation_end(self):
            if self.hooks:
                self.optimizers().train()

        def configure_optimizers(self):
            return descend.Adam(self.parameters(), lr="auto")

    def fit(hooks, val_loader):
        module = Module(hooks)
        trainer = L.Trainer(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=False, accelerator="cpu", default_root_dir=str(tmp_path))
        trainer.fit(module, loader, val_loader)
        return module, trainer.optimizers[0]

    module, opt = fit(True, val)
    assert seen and all(mode is True for mode, _ in seen) and any(stepped for _, stepped in seen)
    assert "averaged_in" not in opt.param_groups[0]
    plain, _ = fit(False, None)
    assert all(torch.equal(a, b) for a, b in zip(module.parameters(), plain.parameters()))


def test_through_lightnings_optimizer_wrapper_the_switch_and_averaged_reach_the_optimizer():
    # LightningOptimizer subclasses the optimizer's class: a method called on it has the wrapper as self,
    # where Adam's class-level (fixed-lr) chain shadowed lr="auto"'s: eval() did nothing, averaged() refused
    pytest.importorskip("lightning")
    from lightning.pytorch.core.optimizer import LightningOptimizer

    p = torch.nn.Parameter(torch.zeros(5))
    opt = descend.Adam([p], lr="auto")
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        p.grad = torch.randn(5, generator=g)
        opt.step()
    wrapped, iterate = LightningOptimizer(opt), p.detach().clone()
    with wrapped.averaged():
        assert torch.equal(p, opt.state[p]["avg"]) and not torch.equal(p, iterate)
    assert torch.equal(p, iterate)
    assert wrapped.eval() is wrapped and opt.param_groups[0]["averaged_in"] is True
    assert torch.equal(opt.state[p]["avg"], iterate) and not torch.equal(p, iterate)
    wrapped.train()
    assert "averaged_in" not in opt.param_groups[0] and torch.equal(p, iterate)


def test_hf_trainer_resumes_exactly_from_a_checkpoint_saved_with_the_average_in(tmp_path):
    # HF saves right after evaluating: the checkpoint holds the averaged weights and the optimizer's
    # state in eval mode; resumed (HF calls opt.train() before the first step) the run ends bitwise as
    # the uninterrupted one
    transformers, train, val, Model, _ = _hf_setup()

    def fit(out, resume=None):
        model = Model()
        opt = descend.Adam(model.parameters(), lr="auto")
        args = transformers.TrainingArguments(
            output_dir=str(out), num_train_epochs=3, per_device_train_batch_size=32, per_device_eval_batch_size=96,
            eval_strategy="steps", eval_steps=8, save_strategy="steps", save_steps=8, report_to=[], use_cpu=True,
            disable_tqdm=True, seed=0)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                                       optimizers=(opt, S.ScheduleLR(opt, S.warmup_cosine(1.0, 4, 24))))
        trainer.train(resume_from_checkpoint=resume)
        opt.train()
        return [p.detach().clone() for p in model.parameters()]

    whole = fit(tmp_path / "a")
    saved = torch.load(tmp_path / "a" / "checkpoint-8" / "optimizer.pt", weights_only=False)
    assert all(g.get("averaged_in") is True for g in saved["param_groups"])  # written in eval mode
    resumed = fit(tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-8"))
    assert all(torch.equal(a, b) for a, b in zip(whole, resumed))
