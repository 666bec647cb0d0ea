"""EntropyCollapseGuard: counts consecutive low-entropy steps and warns / stops / raises the entropy
coefficient (capped), logs guard/*, and restores the raised coefficient on resume."""

from types import SimpleNamespace
import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, IterableDataset

from ring_lightning.callbacks.entropy_guard import EntropyCollapseGuard


class Forever(IterableDataset):
    def __iter__(self):
        while True:
            yield torch.zeros(1)


class Scripted(L.LightningModule):
    def __init__(self, entropies, coef=1e-3):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.entropies = entropies
        self.objective = SimpleNamespace(entropy_coef=coef)  # where RLModule keeps it
        self.coef_seen = []

    def training_step(self, batch, batch_idx):
        self.coef_seen.append(self.objective.entropy_coef)
        self.log("train/entropy", float(self.entropies[self.global_step]), batch_size=1)
        return (self.w ** 2).sum()

    def train_dataloader(self):
        return DataLoader(Forever(), batch_size=None)

    def configure_optimizers(self):
        return torch.optim.SGD([self.w], lr=0.1)


class Logged(Callback):
    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rows.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def fit(module, guard, steps, ckpt_dir=None, ckpt_path=None):
    log = Logged()
    cbs = [log, guard] + ([ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=1)] if ckpt_dir else [])
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=bool(ckpt_dir),
                        enable_progress_bar=False, enable_model_summary=False, callbacks=cbs)
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer, log


LOW = [0.5, 0.05, 0.05, 0.5, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05]


def test_warn_after_patience_consecutive_low_steps_and_logs_counters():
    guard = EntropyCollapseGuard(threshold=0.1, patience=3, action="warn")
    with pytest.warns(UserWarning, match=r"train/entropy=0.05 below 0.1 for 3 steps \(step 7\)"):
        _, log = fit(Scripted(LOW), guard, steps=10)
    # low streaks: steps 2-3 (reset at 4), then 5,6,7 -> act at 7 (reset), 8,9,10 -> act at 10
    assert [e["step"] for e in guard.events] == [7, 10]
    assert guard.actions == 2 and guard.low_steps == 0
    assert log.rows[-1]["guard/actions"] == 1.0  # the test recorder runs before the guard at step 10
    assert [r.get("guard/entropy_low_steps") for r in log.rows[1:7]] == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]


def test_stop_ends_the_run_at_the_trigger_step():
    guard = EntropyCollapseGuard(threshold=0.1, patience=2, action="stop")
    with pytest.warns(UserWarning, match="stopping training"):
        trainer, _ = fit(Scripted(LOW), guard, steps=10)
    assert trainer.global_step == 3 and guard.events[0]["step"] == 3


def test_raise_entropy_coef_multiplies_up_to_the_cap_and_survives_resume(tmp_path):
    guard = EntropyCollapseGuard(threshold=0.1, patience=2, action="raise_entropy_coef", factor=3.0, max_coef=5e-3)
    module = Scripted([0.05] * 20, coef=1e-3)
    with pytest.warns(UserWarning):
        _, log = fit(module, guard, steps=4, ckpt_dir=tmp_path)
    # acts at steps 2 and 4: 1e-3 -> 3e-3 -> 5e-3 (capped)
    assert module.coef_seen == [1e-3, 1e-3, 3e-3, 3e-3]
    assert module.objective.entropy_coef == pytest.approx(5e-3)
    assert log.rows[2]["guard/entropy_coef"] == pytest.approx(3e-3)

    guard2 = EntropyCollapseGuard(threshold=0.1, patience=2, action="raise_entropy_coef", factor=3.0, max_coef=5e-3)
    module2 = Scripted([0.05] * 20, coef=1e-3)
    with pytest.warns(UserWarning, match="already at max_coef"):
        fit(module2, guard2, steps=6, ckpt_path=str(tmp_path / "last.ckpt"))
    assert module2.coef_seen == [5e-3, 5e-3]  # restored from the checkpoint, not the config's 1e-3
    assert guard2.actions == 3 and guard2.events[-1]["action"] == "warn_at_max_coef"


def test_a_zero_coefficient_is_raised_to_start_coef_then_multiplied(tmp_path):
    """The general-RL configs run with entropy_coef 0: multiplying alone could never raise it."""
    guard = EntropyCollapseGuard(threshold=0.1, patience=2, action="raise_entropy_coef", factor=2.0, max_coef=4e-3,
                                 start_coef=1e-3)
    module = Scripted([0.05] * 20, coef=0.0)
    with pytest.warns(UserWarning):
        fit(module, guard, steps=6, ckpt_dir=tmp_path)
    assert module.coef_seen == [0.0, 0.0, 1e-3, 1e-3, 2e-3, 2e-3]  # acts at steps 2, 4, 6
    assert module.objective.entropy_coef == pytest.approx(4e-3)
    assert [e.get("new_coef") for e in guard.events] == [1e-3, 2e-3, 4e-3]
    default = EntropyCollapseGuard(action="raise_entropy_coef", factor=2.0, max_coef=8e-3)
    assert default.start_coef == pytest.approx(1e-3)  # max_coef / factor**3
    with pytest.raises(ValueError, match="start_coef must be in"):
        EntropyCollapseGuard(action="raise_entropy_coef", max_coef=1e-3, start_coef=2e-3)


def test_config_and_metric_errors():
    with pytest.raises(ValueError, match="action must be"):
        EntropyCollapseGuard(action="explode")
    with pytest.raises(ValueError, match="factor > 1"):
        EntropyCollapseGuard(action="raise_entropy_coef", factor=0.5)
    with pytest.raises(KeyError, match="metric 'policy/entropy' is not logged"):
        fit(Scripted(LOW), EntropyCollapseGuard(metric="policy/entropy"), steps=1)
    with pytest.raises(AttributeError, match="no attribute 'ent_coef'"):
        fit(Scripted(LOW), EntropyCollapseGuard(action="raise_entropy_coef", coef_path="ent_coef"), steps=1)
