"""SFTModule reliability: a NaN/Inf step is skipped (parameters and AdamW moments unchanged, counted,
logged), too many in a row abort; guard and RNG states travel in checkpoints; every HF export carries
the SFT token counter in ring_lightning_meta.json."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch

from ring_lightning.callbacks.export import export_checkpoint
from ring_lightning.data.sft.datamodule import SFTDataModule
from ring_lightning.callbacks.token_efficiency import read_sft_tokens
from ring_lightning.modules.nonfinite import NonFiniteError
from ring_lightning.modules.rng_state import KEY as RNG_KEY
from ring_lightning.modules.sft import META_FILE, SFTModule


class NaNLoss(SFTModule):
    """Makes the loss of the given optimizer steps NaN and snapshots parameters + AdamW state after each step."""

    def __init__(self, nan_steps: tuple[int, ...] = (), **kwargs) -> None:
        super().__init__(**kwargs)
        self.nan_steps = set(nan_steps)
        self.snapshots: list[dict] = []

    def _forward(self, batch):
        ce, n, aux, load = super()._forward(batch)
        if self.trainer.global_step in self.nan_steps:
            ce = ce * float("nan")
        return ce, n, aux, load

    def on_train_batch_end(self, outputs, batch, batch_idx):
        opt = self.trainer.optimizers[0]
        self.snapshots.append({
            "params": {n: p.detach().clone() for n, p in self.policy.named_parameters()},
            "moments": {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in self.policy.named_parameters()
                        if p in opt.state},
            "metrics": dict(self.last_step_metrics), "tokens": self.sft_tokens_seen})


def fit(module: SFTModule, steps: int) -> tuple[L.Trainer, SFTDataModule]:
    dm = SFTDataModule(train=["synthetic:arithmetic"], micro_batch_tokens=128, shuffle_buffer=0,
                       synthetic_train_rows=24)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0)
    trainer.fit(module, datamodule=dm)
    return trainer, dm


def test_a_nonfinite_step_is_skipped_counted_and_logged(tmp_path):
    module = NaNLoss(nan_steps=(1,), model="bailing-tiny", seed=0, lr=1e-2)
    trainer, dm = fit(module, 3)
    before, skipped, after = module.snapshots
    assert skipped["metrics"]["train/loss"] != skipped["metrics"]["train/loss"]  # NaN was logged as such
    assert skipped["metrics"]["train/nonfinite_skipped"] == 1.0
    for name, p in before["params"].items():  # no update: parameters and AdamW moments as after step 0
        assert torch.equal(skipped["params"][name], p), name
        for key, value in before["moments"][name].items():
            assert torch.equal(skipped["moments"][name][key], value), (name, key)
    assert any(not torch.equal(after["params"][n], p) for n, p in skipped["params"].items())  # step 2 trains
    assert all(torch.isfinite(p).all() for p in after["params"].values())
    assert after["metrics"]["train/nonfinite_consecutive"] == 0.0
    assert trainer.callback_metrics["train/nonfinite_skipped"].item() == 1.0
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 3  # the schedule still advanced
    batches = list(dm.train_set)[:3]  # the skipped step's tokens were not trained on
    assert module.sft_tokens_seen == int(batches[0].num_tokens) + int(batches[2].num_tokens)

    trainer.save_checkpoint(tmp_path / "sft.ckpt")
    ckpt = torch.load(tmp_path / "sft.ckpt", weights_only=True)  # how Lightning reads it on resume
    assert ckpt["sft_nonfinite"] == {"skipped_total": 1, "consecutive": 0}
    fresh = SFTModule(model="bailing-tiny")
    fresh.on_load_checkpoint(ckpt)
    assert fresh.nonfinite.skipped_total == 1
    # RNG states: restored when training starts, so the resumed run draws what this one would have
    torch.set_rng_state(ckpt[RNG_KEY]["torch"])
    expected = torch.rand(5)
    np_state = ckpt[RNG_KEY]["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype("uint32"), *np_state[2:]))
    expected_np = np.random.rand(3)
    torch.manual_seed(1234)
    np.random.seed(1234)
    fresh.on_train_start()
    assert torch.equal(torch.rand(5), expected) and np.array_equal(np.random.rand(3), expected_np)


def test_too_many_nonfinite_steps_in_a_row_abort_naming_the_step():
    module = NaNLoss(nan_steps=(0, 1, 2, 3), model="bailing-tiny", seed=0, max_nonfinite_steps=2)
    with pytest.raises(NonFiniteError, match=r"SFTModule: 2 optimizer steps in a row .* global step 1: loss=nan"):
        fit(module, 4)
    initial = SFTModule(model="bailing-tiny", seed=0)
    initial.configure_model()
    for (name, p), (_, q) in zip(module.policy.named_parameters(), initial.policy.named_parameters()):
        assert torch.equal(p, q), name  # nothing was ever applied


def test_guard_off_applies_nan_updates():
    module = NaNLoss(nan_steps=(0,), model="bailing-tiny", seed=0, max_nonfinite_steps=0)
    fit(module, 1)
    assert any(not torch.isfinite(p).all() for p in module.policy.parameters())


def test_every_export_carries_the_sft_token_counter(tmp_path):
    module = SFTModule(model="bailing-tiny", seed=0)
    trainer, _ = fit(module, 2)
    assert module.sft_tokens_seen > 0
    out = module.export_hf(tmp_path / "direct")
    meta = json.loads((out / META_FILE).read_text())
    assert meta == {"sft_tokens_seen": module.sft_tokens_seen, "sft_loss_tokens_seen": module.sft_loss_tokens_seen}
    assert read_sft_tokens(out) == module.sft_loss_tokens_seen  # what TokenEfficiency / RLModule read: loss tokens
    # the checkpoint export path (callbacks/export.py, used by RLReadinessSelector and the pipeline)
    trainer.save_checkpoint(tmp_path / "sft.ckpt")
    exported = export_checkpoint(tmp_path / "sft.ckpt", tmp_path / "from_ckpt")
    assert read_sft_tokens(exported) == module.sft_loss_tokens_seen
    assert not list(exported.glob(".tmp-*"))
