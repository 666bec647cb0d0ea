"""A real, tiny SFT -> reasoning-RL pipeline through `python -m ring_lightning pipeline`, from the
quickstart configs (shrunk): the SFT stage's own EntropyMonitor + RLReadinessSelector pick and
export a checkpoint (the export loads in vLLM), the RL stage starts from that export, learns the SFT
token count from it and logs token_efficiency = RL tokens / SFT tokens into its CSV log under the
stage directory; every export is scored on held-out prompts and the report is written."""

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]


def shrunk_sft_config(path: Path) -> Path:
    """configs/quickstart/sft.yaml with a few steps and tiny measurements (callbacks and loggers kept)."""
    cfg = yaml.safe_load((REPO / "configs" / "quickstart" / "sft.yaml").read_text())
    cfg["trainer"].update(max_steps=2, val_check_interval=2, enable_progress_bar=False)
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("EntropyMonitor"):
            cb["init_args"].update(synthetic_prompts=2, num_samples=2, max_new_tokens=8)
    cfg["data"]["init_args"].update(synthetic_train_rows=100, synthetic_val_rows=4, micro_batch_tokens=256)
    names = [cb["class_path"].rsplit(".", 1)[1] for cb in cfg["trainer"]["callbacks"]]
    assert {"EntropyMonitor", "RLReadinessSelector"} <= set(names)  # sft.yaml alone selects and exports
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
@pytest.mark.vllm
def test_real_sft_then_rl_pipeline_with_evaluation_and_report(tmp_path):
    run = tmp_path / "run"
    sft_cfg = shrunk_sft_config(tmp_path / "sft.yaml")
    (tmp_path / "pipeline.yaml").write_text(textwrap.dedent(f"""
        run_dir: {run}
        env: {{OMP_NUM_THREADS: "1"}}
        stages:
          - name: sft
            kind: sft
            config: {sft_cfg}
            checkpoint_every_n_steps: 3
          - name: rl
            config: configs/quickstart/rl_reasoning.yaml
            checkpoint_every_n_steps: 1
            overrides:
              - --trainer.max_steps=1
              - --trainer.enable_progress_bar=false
              - --model.init_args.objective.init_args.token_budget=16
              - --data.init_args.prompts_per_step=2
              - --data.init_args.samples_per_prompt=2
              - --data.init_args.max_response_tokens=16
              - --trainer.callbacks+=ring_lightning.callbacks.token_efficiency.TokenEfficiency
        evaluation:
          sets:
            math: {{task: addition, size: 3, seed: 7, task_kwargs: {{split: heldout}}}}
          samples_per_prompt: 2
          k: [1, 2]
          max_tokens: 8
    """))
    proc = subprocess.run([sys.executable, "-m", "ring_lightning", "pipeline", "-c", str(tmp_path / "pipeline.yaml")],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    logs = {p.parent.name: p.read_text()[-3000:] for p in run.glob("*/stage.log")}
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:], logs)
    assert "[pipeline" in proc.stdout and "sft: finished in" in proc.stdout and "rl: held-out evaluation" in proc.stdout
    state = json.loads((run / "pipeline_state.json").read_text())
    sft_out, rl = state["stages"]["sft"]["outputs"], state["stages"]["rl"]
    assert Path(sft_out["model"]) == (run / "sft" / "export").resolve()  # sft.yaml's export_dir, in the stage dir
    decision = json.loads((run / "sft" / "rl_readiness" / "rl_readiness.json").read_text())
    assert decision["chosen"]["path"] and decision["exported_to"] == str((run / "sft" / "export").resolve())
    assert rl["init_model"] == sft_out["model"]
    # rl_reasoning.yaml's StageTransition (handoff: stop) recorded that the 1-step cap came before any rule
    move = rl["outputs"]["transition"]
    assert move["transitions"] == [] and move["end"]["rule"] is None and "max_steps=1" in move["end"]["reason"]
    sft_ckpt = torch.load(sft_out["checkpoint"], map_location="cpu", weights_only=False)
    sft_tokens = sft_ckpt["sft_loss_tokens_seen"]  # the token-efficiency denominator: trained (loss) tokens
    assert sft_tokens > 0 and sft_out["sft_tokens"] == sft_tokens
    rl_ckpt = torch.load(run / "rl" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert rl_ckpt["c3po"]["sft_tokens"] == sft_tokens and rl_ckpt["c3po"]["rl_tokens_trained"] == 16
    final = Path(state["final_model"])
    assert json.loads((final / "ring_lightning_meta.json").read_text())["sft_loss_tokens_seen"] == sft_tokens
    # CSV (and TensorBoard) logs under the stage directories (the configs' outputs follow default_root_dir)
    (metrics,) = (run / "rl" / "csv").rglob("metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("token_efficiency")]
    assert len(rows) == 1 and abs(float(rows[0]["token_efficiency"]) - 16 / sft_tokens) < 1e-6
    assert list((run / "sft" / "tensorboard").rglob("events.out.tfevents.*"))
    # held-out evaluation of both exports, in the state file and the report
    for name in ("sft", "rl"):
        ev = state["stages"][name]["eval"]
        assert ev["model"] == state["stages"][name]["outputs"]["model"]
        m = ev["sets"]["math"]
        assert m["prompts"] == 3 and m["samples"] == 6 and len(m["num_correct"]) == 3 and "pass@2" in m
    report = (run / "report.md").read_text()
    assert "| math (3 prompts × 2) | pass@1 |" in report and (run / "reward.png").is_file()
    # issue 3: the selector's export loads in vLLM and samples
    from ring_lightning.rollout.engine import SamplingConfig
    from ring_lightning.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(sft_out["model"], max_model_len=256, cpu_kvcache_space_gib=1)
    try:
        ids = engine.tokenizer.apply_chat_template([{"role": "user", "content": "Compute 1 + 2 + 3."}],
                                                   add_generation_prompt=True, tokenize=True, return_dict=False)
        (comps,) = engine.generate([ids], 2, SamplingConfig(temperature=1.0, max_tokens=8, seed=0))
        assert len(comps) == 2 and all(len(c.token_ids) >= 1 for c in comps)
    finally:
        close = getattr(engine, "close", None)
        if callable(close):
            close()
