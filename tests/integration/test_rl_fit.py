"""End to end on CPU: `python -m ring_lightning fit -c configs/quickstart/rl_reasoning.yaml` from an
SFT export, with the real embedded vLLM engine (exact weight sync + parity probe; set on the command
line, whatever engine the quickstart config picks) and the real reward router on the config's
built-in verifiable tasks. Kept small (a few steps of a tiny model); the reward
*improvement* of a longer run is measured by benchmarks/bench_rl_step.py and reported, not asserted
here (a 2-step run cannot show it)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
PHI = 256
VLLM_ENGINE = ("{class_path: ring_lightning.rollout.vllm_engine.VLLMEngine, init_args: {max_model_len: 512, "
               "enforce_eager: true, cpu_kvcache_space_gib: 1, max_num_seqs: 64}}")


@pytest.mark.vllm
@pytest.mark.slow
def test_quickstart_rl_fit_trains_exactly_phi_tokens_per_step(tiny_sft_export, tmp_path):
    sft_tokens = json.loads((tiny_sft_export / "ring_lightning_meta.json").read_text())["sft_loss_tokens_seen"]
    cmd = [sys.executable, "-m", "ring_lightning", "fit", "-c", "configs/quickstart/rl_reasoning.yaml",
           f"--model.init_args.model={tiny_sft_export}", f"--model.init_args.objective.init_args.token_budget={PHI}",
           "--model.init_args.micro_batch_tokens=1024", "--trainer.max_steps=3",
           f"--trainer.default_root_dir={tmp_path}",
           "--trainer.callbacks.init_args.every_n_train_steps=3",
           "--data.init_args.prompts_per_step=4", "--data.init_args.samples_per_prompt=4",
           "--data.init_args.max_response_tokens=48", "--model.init_args.parity=true",
           "--trainer.enable_progress_bar=false", f"--data.init_args.engine={VLLM_ENGINE}"]
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    steps = [r for r in rows if r.get("train/loss_tokens")]
    assert len(steps) == 3
    for r in steps:
        assert float(r["train/loss_tokens"]) == PHI  # C3PO: exactly Φ tokens every step
        assert 0.0 <= float(r["reward/mean"]) <= 1.0
        assert float(r["rollout/responses"]) == 16
        assert float(r["time/rollout"]) > 0 and float(r["time/sync"]) > 0
    # the engine really samples from the trainer's weights: parity probe on the first syncs
    probed = [float(r["rollout/sync_logprob_diff_mean"]) for r in steps if r.get("rollout/sync_logprob_diff_mean")]
    assert len(probed) == 3 and max(probed) < 1e-3
    assert float(steps[0]["rollout/bind_sync_logprob_diff_mean"]) < 1e-3  # the engine's starting weights
    assert float(steps[-1]["tokens/rl_trained"]) == 3 * PHI and float(steps[-1]["tokens/sft"]) == sft_tokens
    ckpt = torch.load(next(tmp_path.rglob("last.ckpt")), weights_only=False)
    assert ckpt["c3po"]["rl_tokens_trained"] == 3 * PHI and ckpt["c3po"]["engine_weight_version"] == 3
    assert ckpt["RolloutDataModule"]["stage"] == "reasoning"
    export = tmp_path / "export"  # the config's FitEndExport, under default_root_dir: the next stage's model
    meta = json.loads((export / "ring_lightning_meta.json").read_text())
    assert meta["rl_tokens_trained"] == 3 * PHI and meta["sft_loss_tokens_seen"] == sft_tokens
    assert (export / "config.json").is_file() and (export / "model.safetensors").is_file()


@pytest.mark.parametrize("config", ["configs/quickstart/rl_reasoning.yaml", "configs/ring_lite_2507/rl_reasoning.yaml"])
def test_rl_configs_parse(config, capsys, monkeypatch):
    from ring_lightning.cli import main

    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_info:  # --print_config parses, prints and exits
        main(["fit", "-c", config, "--print_config"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "ring_lightning.modules.rl.RLModule" in out
    assert "ring_lightning.data.rollouts.RolloutDataModule" in out and "ring_lightning.rollout." in out
    if "ring_lite_2507" in config:
        for line in ("token_budget: 52428800", "updates_per_rollout: 2", "budget_scope: global", "prompts_per_step: 512",
                     "samples_per_prompt: 16",
                     "lr: 3.0e-06", "max_response_tokens: 24576", "ModelParallelStrategy",
                     "val_check_interval: 50", "eval_samples_per_prompt: 8", "heldout_math.jsonl",
                     "ring_lightning.rollout.vllm_engine.VLLMEngine"):
            assert line in out, line


@pytest.mark.vllm
@pytest.mark.slow
def test_two_ddp_ranks_each_with_an_embedded_engine(tiny_sft_export, tmp_path):
    """`--trainer.devices=2 --trainer.strategy=ddp` on CPU (gloo): one vLLM engine per rank, each rank
    samples its half of the prompts and trains Φ/2 of the Φ tokens; every rank's engine matches its
    trainer after every sync, and the run (whose engines are closed at teardown) ends cleanly."""
    cmd = [sys.executable, "-m", "ring_lightning", "fit", "-c", "configs/quickstart/rl_reasoning.yaml",
           f"--model.init_args.model={tiny_sft_export}", f"--model.init_args.objective.init_args.token_budget={PHI}",
           "--model.init_args.micro_batch_tokens=1024", "--trainer.max_steps=2",
           f"--trainer.default_root_dir={tmp_path}", "--trainer.callbacks.init_args.every_n_train_steps=2",
           "--data.init_args.prompts_per_step=4", "--data.init_args.samples_per_prompt=4",
           "--data.init_args.max_response_tokens=48", "--model.init_args.parity=true",
           "--trainer.enable_progress_bar=false", f"--data.init_args.engine={VLLM_ENGINE}",
           "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    steps = [r for r in csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))) if r.get("train/loss_tokens")]
    assert len(steps) == 2
    for r in steps:
        assert float(r["train/loss_tokens"]) == PHI  # all-reduced over both ranks
        assert float(r["rollout/responses"]) == 16  # 2 ranks x 2 prompts x 4 samples
        # rank 0's probe is logged; every rank probes its own engine and raises SyncParityError on a
        # mismatch, so rank 1 passed too (the run exited 0)
        assert float(r["rollout/sync_logprob_diff_max"]) < 1e-3
    ckpt = torch.load(next(tmp_path.rglob("last.ckpt")), weights_only=False)
    assert ckpt["c3po"]["rl_tokens_trained"] == 2 * PHI and ckpt["c3po"]["engine_weight_version"] == 2
    assert (tmp_path / "export" / "model.safetensors").is_file()
