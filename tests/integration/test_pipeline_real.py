"""A real, tiny SFT -> reasoning-RL pipeline through `python -m ring_lightning pipeline`: the SFT
stage (with EntropyMonitor + RLReadinessSelector) picks and exports a checkpoint, the RL stage
(embedded vLLM) starts from that export, learns the SFT token count from it and logs
token_efficiency = RL tokens / SFT tokens; the RL checkpoint is exported at the end."""

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.vllm
def test_real_sft_then_rl_pipeline(tmp_path):
    run = tmp_path / "run"
    (tmp_path / "pipeline.yaml").write_text(textwrap.dedent(f"""
        run_dir: {run}
        stages:
          - name: sft
            kind: sft
            config: configs/quickstart/sft.yaml
            checkpoint_every_n_steps: 3
            overrides:
              - --trainer.max_steps=2
              - --trainer.val_check_interval=2
              - --trainer.logger=false
              - --data.init_args.synthetic_train_rows=100
              - --data.init_args.synthetic_val_rows=4
              - --data.init_args.micro_batch_tokens=256
          - name: rl
            config: configs/quickstart/rl_reasoning.yaml
            checkpoint_every_n_steps: 1
            overrides:
              - --trainer.max_steps=1
              - --model.init_args.token_budget=16
              - --model.init_args.parity=false
              - --data.init_args.prompts_per_step=2
              - --data.init_args.samples_per_prompt=2
              - --data.init_args.max_response_tokens=16
              - --trainer.callbacks+=ring_lightning.callbacks.token_efficiency.TokenEfficiency
    """))
    proc = subprocess.run([sys.executable, "-m", "ring_lightning", "pipeline", "-c", str(tmp_path / "pipeline.yaml")],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    logs = {p.parent.name: p.read_text()[-3000:] for p in run.glob("*/stage.log")}
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:], logs)
    state = json.loads((run / "pipeline_state.json").read_text())
    sft_out, rl = state["stages"]["sft"]["outputs"], state["stages"]["rl"]
    assert Path(sft_out["model"]) == (run / "sft" / "export").resolve()
    assert rl["init_model"] == sft_out["model"]
    assert f"--model.init_args.model={sft_out['model']}" in rl["command"]
    sft_ckpt = torch.load(sft_out["checkpoint"], map_location="cpu", weights_only=False)
    sft_tokens = sft_ckpt["sft_tokens_seen"]
    assert sft_tokens > 0 and sft_out["sft_tokens"] == sft_tokens
    rl_ckpt = torch.load(run / "rl" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert rl_ckpt["c3po"]["sft_tokens"] == sft_tokens and rl_ckpt["c3po"]["rl_tokens_trained"] == 16
    final = Path(state["final_model"])
    assert (final / "config.json").is_file() and (final / "model.safetensors").is_file()
    assert json.loads((final / "ring_lightning_meta.json").read_text())["sft_tokens_seen"] == sft_tokens
    (metrics,) = (run / "rl").rglob("metrics.csv")  # the pipeline sets RING_LIGHTNING_STAGE_DIR
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("token_efficiency")]
    assert len(rows) == 1 and abs(float(rows[0]["token_efficiency"]) - 16 / sft_tokens) < 1e-6
