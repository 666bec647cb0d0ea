"""FitEndExport: a completed C3PO fit leaves an HF export of its final weights (with the token counters
and use_cache on), replaces an earlier export, refuses other directories before training, and an
interrupted fit leaves the previous export whole."""

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from ring_lightning.callbacks.fit_end_export import FitEndExport
from ring_lightning.data.rollouts.stream import PromptSource
from ring_lightning.data.rollouts.datamodule import RolloutDataModule
from ring_lightning.models.loading import load_policy
from ring_lightning.modules.rl import RLModule
from ring_lightning.rl.objectives import C3PO
from unit.rl_fixtures import FakeEngine, alternating_reward


class Crash(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        raise RuntimeError("simulated crash")


def fit(tiny_sft_export, export, steps=2, extra=()):
    dm = RolloutDataModule(sources={"math": PromptSource(task="arithmetic_steps", size=16)}, engine=FakeEngine(),
                           reward=alternating_reward, prompts_per_step=2, samples_per_prompt=2, max_response_tokens=8)
    module = RLModule(model=str(tiny_sft_export), parity=False, lr=1e-2, objective=C3PO(token_budget=10, kl_coef=0.0))
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[FitEndExport(str(export)), *extra])
    trainer.fit(module, dm)
    return module


def test_completed_fit_exports_final_weights_counters_and_kv_cache(tiny_sft_export, tmp_path):
    export = tmp_path / "export"
    module = fit(tiny_sft_export, export)
    loaded, _ = load_policy(str(export))
    trained = module.policy.state_dict()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, trained[name]), name  # the final weights, exactly
    original, _ = load_policy(str(tiny_sft_export))
    assert any(not torch.equal(v, original.state_dict()[k]) for k, v in trained.items())  # it did train
    meta = json.loads((export / "ring_lightning_meta.json").read_text())
    assert meta["sft_loss_tokens_seen"] == 200 and meta["rl_tokens_trained"] == 20
    assert json.loads((export / "config.json").read_text())["use_cache"] is True
    assert not list(tmp_path.glob(".tmp-*"))


def test_interrupted_fit_leaves_the_previous_export_whole(tiny_sft_export, tmp_path):
    export = tmp_path / "export"
    fit(tiny_sft_export, export)
    before = {p.name: p.read_bytes() for p in export.iterdir()}
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tiny_sft_export, export, steps=3, extra=[Crash()])
    assert {p.name: p.read_bytes() for p in export.iterdir()} == before


def test_refuses_a_directory_that_is_not_an_export_before_training(tiny_sft_export, tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an earlier HF export"):
        fit(tiny_sft_export, other)
    assert (other / "keep.txt").read_text() == "mine" and len(list(other.iterdir())) == 1
    with pytest.raises(ValueError, match="dirpath"):
        FitEndExport("")
