"""TokenEfficiency: RL training tokens / SFT tokens of the starting checkpoint, logged every step,
from an explicit count, an SFT export's meta file, rl_readiness.json or an SFT .ckpt — with the
real RLModule (its sft_tokens read from the export dir, its rl_tokens_trained = Φ per step)."""

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from ring_lightning.callbacks.token_efficiency import META_FILE, TokenEfficiency, read_sft_tokens
from ring_lightning.data.rollouts.stream import PromptSource
from ring_lightning.data.rollouts.datamodule import RolloutDataModule
from ring_lightning.models.loading import load_policy
from ring_lightning.modules.rl import RLModule
from ring_lightning.rl.objectives import C3PO
from unit.rl_fixtures import FakeEngine, alternating_reward


def test_read_sft_tokens_from_each_kind_of_source(tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / META_FILE).write_text(json.dumps({"sft_loss_tokens_seen": 1234}))
    assert read_sft_tokens(tmp_path / "export") == 1234
    (tmp_path / "rl_readiness.json").write_text(json.dumps({"chosen": {"sft_tokens": 777, "step": 3}}))
    assert read_sft_tokens(tmp_path / "rl_readiness.json") == 777
    torch.save({"state_dict": {}, "sft_tokens_seen": 9000, "sft_loss_tokens_seen": 4321}, tmp_path / "sft.ckpt")
    assert read_sft_tokens(tmp_path / "sft.ckpt") == 4321
    (tmp_path / "bad.json").write_text(json.dumps({"sft_loss_tokens_seen": 0}))
    with pytest.raises(ValueError, match=r"bad.json \['sft_loss_tokens_seen'\] must be a positive"):
        read_sft_tokens(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="no SFT token record"):
        read_sft_tokens(tmp_path / "nowhere")


def test_the_denominator_is_the_sft_loss_tokens_like_the_rl_numerator(tmp_path):
    """RL counts its loss (response) tokens; the SFT side must too, not every packed token with the
    prompts (the bug: an export with both counters gave RLModule.sft_tokens = all tokens)."""
    from ring_lightning.models.export import read_sft_tokens as export_tokens

    (tmp_path / META_FILE).write_text(json.dumps({"sft_tokens_seen": 9000, "sft_loss_tokens_seen": 4000}))
    assert export_tokens(tmp_path) == 4000 and read_sft_tokens(tmp_path) == 4000
    (tmp_path / META_FILE).write_text(json.dumps({"sft_tokens_seen": 9000}))  # an older export: said, not silent
    with pytest.warns(UserWarning, match="prompts included.*understated"):
        assert export_tokens(tmp_path) == 9000


class Logged(Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(float(trainer.callback_metrics["token_efficiency"]))


def fit(model_dir, te, steps, ckpt_dir=None, ckpt_path=None):
    dm = RolloutDataModule(sources={"math": PromptSource(task="arithmetic_steps", size=16)}, engine=FakeEngine(),
                           reward=alternating_reward, prompts_per_step=2, samples_per_prompt=2, max_response_tokens=8)
    module = RLModule(model=str(model_dir), parity=False, objective=C3PO(token_budget=10, kl_coef=0.0))
    log = Logged()
    cbs = [te, log] + ([ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=1)] if ckpt_dir else [])
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=bool(ckpt_dir),
                        enable_progress_bar=False, enable_model_summary=False, callbacks=cbs)
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return module, log


def test_real_c3po_logs_rl_over_sft_tokens_each_step_and_after_resume(tiny_sft_export, tmp_path):
    te = TokenEfficiency()  # denominator from RLModule.sft_tokens (read from the export's meta file)
    module, log = fit(tiny_sft_export, te, steps=2, ckpt_dir=tmp_path)
    assert te.sft_tokens == 200 and te.source == "RLModule.sft_tokens"
    assert module.rl_tokens_trained == 20
    assert log.values == [pytest.approx(10 / 200), pytest.approx(20 / 200)]
    te2 = TokenEfficiency(sft_source=str(tiny_sft_export))
    module2, log2 = fit(tiny_sft_export, te2, steps=3, ckpt_path=str(tmp_path / "last.ckpt"))
    assert log2.values == [pytest.approx(30 / 200)]  # RL tokens restored from the checkpoint


def test_explicit_count_wins_and_a_missing_denominator_is_an_error(tmp_path):
    policy, tok = load_policy("bailing-tiny")
    policy.save_pretrained(str(tmp_path / "m"))
    tok.save_pretrained(str(tmp_path / "m"))
    _, log = fit(tmp_path / "m", TokenEfficiency(sft_tokens=40), steps=1)
    assert log.values == [pytest.approx(10 / 40)]
    with pytest.raises(ValueError, match="no SFT token count: RLModule.sft_tokens is 0"):
        fit(tmp_path / "m", TokenEfficiency(), steps=1)
