"""lr="auto" under the training loops practitioners use, where they are installed (they are not
descend dependencies, and CI does not install them): a descend ScheduleLR passed as the loop's
scheduler shapes the estimate, and what the loop logs as the learning rate is the rate in use."""

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


def test_hf_trainer_logs_the_rate_in_use(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    x, y = _data()

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return {"x": x[i], "labels": y[i]}

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def forward(self, x, labels=None):
            out = self.net(x)
            return {"loss": torch.nn.functional.cross_entropy(out, labels), "logits": out}

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
        trainer = transformers.Trainer(model=model, args=args, train_dataset=Data(),
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
