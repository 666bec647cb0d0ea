"""Exact resume of the SFT stage through the real CLI: a run killed with SIGKILL right after step 8's
checkpoint and resumed with `--ckpt_path last` logs, for steps 9-12, exactly the loss, gradient norm,
learning rate and token counts of the uninterrupted run (model, AdamW, schedule, RNG states, data-stream
position, token counters and gradient accumulation all restored; the data stream crosses an epoch end)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
STEPS, EVERY, KILL_AT = 12, 4, 8
COMPARED = ("train/loss", "train/grad_norm", "train/lr", "train/loss_tokens", "train/sft_tokens_seen",
            "train/padding_fraction", "train/aux/load_balance", "train/nonfinite_skipped", "data/rows_read",
            "data/docs_packed")

KILLER = '''
import os, signal
from lightning.pytorch.callbacks import Callback

class KillAt(Callback):
    """SIGKILL this process when the micro-batch after optimizer step `step` starts (mid-step, no cleanup)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
'''


def config(root: Path) -> Path:
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": STEPS, "accumulate_grad_batches": 2,
            "gradient_clip_val": 1.0, "num_sanity_val_steps": 0, "log_every_n_steps": 1,
            "enable_progress_bar": False, "enable_model_summary": False,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(root / "runs"), "name": "sft"}},
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"dirpath": str(root / "ckpt"), "filename": "sft-{step}",
                                         "every_n_train_steps": EVERY, "save_top_k": 2, "monitor": "step",
                                         "mode": "max", "save_last": True}}],
        },
        "model": {"class_path": "ring_lightning.modules.sft.SFTModule",
                  "init_args": {"model": "bailing-tiny", "lr": 1.0e-2, "seed": 0}},
        "data": {"class_path": "ring_lightning.data.sft.SFTDataModule",
                 "init_args": {"train": ["synthetic:mixed"], "micro_batch_tokens": 256, "shuffle_buffer": 16,
                               "synthetic_train_rows": 30, "seed": 0}},
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def launch(root: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(root.parent), str(REPO)]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "ring_lightning", "fit", "-c", str(config(root)), *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def metrics(csv_path: Path) -> dict[int, dict[str, str]]:
    rows = list(csv.DictReader(csv_path.open()))
    return {int(r["step"]): {k: r[k] for k in COMPARED} for r in rows if r.get("train/loss")}


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_matches_the_uninterrupted_run(tmp_path):
    (tmp_path / "killer.py").write_text(KILLER)
    full, crash = launch(tmp_path / "full"), launch(
        tmp_path / "crash", "--trainer.callbacks+=killer.KillAt", f"--trainer.callbacks.init_args.step={KILL_AT}")
    out, err = full.communicate(timeout=600)
    assert full.returncode == 0, err[-3000:]
    _, err = crash.communicate(timeout=600)
    assert crash.returncode == -signal.SIGKILL, err[-3000:]
    last = tmp_path / "crash" / "ckpt" / "last.ckpt"
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["global_step"] == KILL_AT
    data_state = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert data_state["epoch"] == 1 and data_state["position"] > 0  # mid-epoch, after an epoch end

    resumed = launch(tmp_path / "crash", "--ckpt_path", "last")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]

    reference = metrics(tmp_path / "full" / "runs" / "sft" / "version_0" / "metrics.csv")
    after = metrics(tmp_path / "crash" / "runs" / "sft" / "version_1" / "metrics.csv")
    assert sorted(reference) == list(range(STEPS))
    assert sorted(after) == list(range(KILL_AT, STEPS))
    for step in range(KILL_AT, STEPS):
        assert after[step] == reference[step], step  # the logged values, digit for digit
    assert float(reference[KILL_AT]["train/lr"]) != float(reference[STEPS - 1]["train/lr"])  # the schedule moves
    # keep-last-2 by step with the atomic writer: the last two step checkpoints and last.ckpt
    assert sorted(os.listdir(tmp_path / "crash" / "ckpt")) == ["last.ckpt", "sft-step=12.ckpt", "sft-step=8.ckpt"]
    assert torch.load(last, weights_only=False)["global_step"] == STEPS
