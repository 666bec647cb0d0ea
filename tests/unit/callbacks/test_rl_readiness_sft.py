"""The SFT-stage callbacks on the real SFTModule + SFTDataModule (synthetic arithmetic, MathReward)."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from ring_lightning.callbacks.entropy import EntropyMonitor
from ring_lightning.callbacks.export import module_from_checkpoint
from ring_lightning.callbacks.rl_readiness import RLReadinessSelector
from ring_lightning.data.sft.datamodule import SFTDataModule
from ring_lightning.models.loading import load_policy
from ring_lightning.modules.sft import SFTModule
from ring_lightning.rewards.math import MathReward

N_TRAIN = 64


class TokensAtValidation(L.Callback):
    def __init__(self):
        self.tokens = []

    def on_validation_end(self, trainer, pl_module):
        self.tokens.append(pl_module.sft_loss_tokens_seen)


def test_sft_fit_selects_exports_and_reports(tmp_path):
    reward = MathReward(num_workers=1)
    monitor = EntropyMonitor(synthetic_task="arithmetic", synthetic_prompts=4, synthetic_n_train=N_TRAIN,
                             max_new_tokens=12, batch_size=4, reward=reward)
    selector = RLReadinessSelector(dirpath=str(tmp_path / "cands"), export_dir=str(tmp_path / "rl_start"))
    spy = TokensAtValidation()
    data = SFTDataModule(train=["synthetic:arithmetic"], val=["synthetic:arithmetic"], micro_batch_tokens=256,
                         synthetic_train_rows=N_TRAIN, synthetic_val_rows=4, shuffle_buffer=0)
    model = SFTModule(model="bailing-tiny", lr=3e-3)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=4, val_check_interval=2, limit_val_batches=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path),
                        callbacks=[selector, spy, monitor])
    # A random tiny model is far above the (0.3, 0.5) band: the selector must fall back and say so.
    with pytest.warns(UserWarning, match="FALLBACK"):
        trainer.fit(model, datamodule=data)

    report = json.loads((tmp_path / "cands" / "rl_readiness.json").read_text())
    cands = report["candidates"]
    assert [c["step"] for c in cands] == [2, 4] and report["fallback"] and not report["chosen"]["in_band"]
    assert [c["sft_tokens"] for c in cands] == spy.tokens and 0 < spy.tokens[0] < spy.tokens[1]
    assert spy.tokens[1] == model.sft_loss_tokens_seen
    for c in cands:  # pass@1 from MathReward on the held-out arithmetic prompts
        assert c["accuracy"] is not None and 0.0 <= c["accuracy"] <= 1.0
        assert 5.0 < c["entropy"] < 7.1
    assert monitor.latest.num_samples == 4 and monitor.latest.invalid_rewards == 0
    chosen = min(cands, key=lambda c: c["entropy"])  # closest to the band from above
    assert report["chosen"]["step"] == chosen["step"]
    assert "FALLBACK" in report["reason"]

    # The export is the chosen candidate, loadable with load_policy, same logits.
    assert report["exported_to"] == str(tmp_path / "rl_start")
    exported, tok = load_policy(tmp_path / "rl_start")
    reference = module_from_checkpoint(report["chosen"]["path"], SFTModule).policy
    probe = torch.randint(3, 1000, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(exported(input_ids=probe).logits, reference(input_ids=probe).logits, atol=1e-6, rtol=0)
    assert tok.eos_token_id == model.tokenizer.eos_token_id


def test_a_run_shorter_than_the_first_measurement_exports_the_final_weights_and_says_so(tmp_path):
    """The README's short run (`sft.yaml --trainer.max_steps=20` with validations every 100 steps): no
    candidate exists; the selector warns and exports the final weights instead of a traceback."""
    selector = RLReadinessSelector(dirpath=str(tmp_path / "cands"), export_dir=str(tmp_path / "rl_start"))
    data = SFTDataModule(train=["synthetic:arithmetic"], val=["synthetic:arithmetic"], micro_batch_tokens=256,
                         synthetic_train_rows=N_TRAIN, synthetic_val_rows=4, shuffle_buffer=0)
    model = SFTModule(model="bailing-tiny", lr=3e-3)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2, val_check_interval=100, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, default_root_dir=str(tmp_path), callbacks=[selector])
    with pytest.warns(UserWarning, match="exporting the FINAL weights"):
        trainer.fit(model, datamodule=data)
    report = json.loads((tmp_path / "cands" / "rl_readiness.json").read_text())
    assert report["chosen"] is None and report["exported_to"] == str(tmp_path / "rl_start")
    loaded, _ = load_policy(str(tmp_path / "rl_start"))
    for (name, a), (_, b) in zip(model.policy.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
