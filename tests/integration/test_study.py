"""`python -m ring_lightning study` end to end on a cut-down config: SFT 4 steps with a candidate every 2
(2 starts), 2 RL steps per run (C3PO from each start, GRPO from the chosen one), 3 held-out prompts;
the report's tables, JSON and plots exist and hold numbers."""

import json
import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from ring_lightning import study

REPO = Path(__file__).resolve().parents[2]


def cut_down_configs(tmp: Path) -> tuple[Path, Path]:
    sft = yaml.safe_load((REPO / "configs" / "quickstart" / "sft.yaml").read_text())
    sft["trainer"].update(max_steps=4)
    for cb in sft["trainer"]["callbacks"]:
        if cb["class_path"].endswith("EntropyMonitor"):
            cb["init_args"].update(synthetic_prompts=2, num_samples=2, max_new_tokens=8)
    sft["data"]["init_args"].update(synthetic_train_rows=100, synthetic_val_rows=4, micro_batch_tokens=256)
    rl = yaml.safe_load((REPO / "configs" / "quickstart" / "rl_reasoning.yaml").read_text())
    rl["model"]["init_args"]["objective"]["init_args"]["token_budget"] = 16
    rl["data"]["init_args"].update(prompts_per_step=2, samples_per_prompt=2, max_response_tokens=16)
    (tmp / "sft_in.yaml").write_text(yaml.safe_dump(sft))
    (tmp / "rl_in.yaml").write_text(yaml.safe_dump(rl))
    return tmp / "sft_in.yaml", tmp / "rl_in.yaml"


def _numbers(row: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?\d+\.\d+|[-+]?\d+", row)]


@pytest.mark.slow
@pytest.mark.vllm
def test_study_writes_both_comparisons_with_numbers_and_plots(tmp_path):
    sft_cfg, rl_cfg = cut_down_configs(tmp_path)
    out = tmp_path / "study"
    (tmp_path / "study.yaml").write_text(textwrap.dedent(f"""
        out_dir: {out}
        sft_config: {sft_cfg}
        sft_every: 2
        rl_config: {rl_cfg}
        rl_steps: 2
        evaluation:
          sets:
            math: {{task: addition, size: 3, seed: 7, task_kwargs: {{split: heldout}}}}
          samples_per_prompt: 2
          k: [1, 2]
          max_tokens: 8
    """))
    proc = subprocess.run([sys.executable, "-m", "ring_lightning", "study", "-c", str(tmp_path / "study.yaml")],
                          cwd=REPO, capture_output=True, text=True, timeout=1200)
    logs = {p.parent.name: p.read_text()[-2000:] for p in out.glob("*/stage.log")}
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:], logs)
    data = json.loads((out / "study.json").read_text())
    starts, (c3po, grpo) = data["starts"], data["objectives"]
    assert [s["step"] for s in starts] == [2, 4] and data["chosen_step"] in (2, 4)
    for s in starts:  # SFT entropy, held-out before/after, the paired gain, RL entropy, token efficiency
        assert s["sft_tokens"] > 0 and math.isfinite(s["entropy"]) and s["entropy"] > 0
        assert 0 <= s["before"] <= 1 and 0 <= s["after"] <= 1
        assert abs(s["gain"] - (s["after"] - s["before"])) < 1e-9 and s["gain_se"] >= 0
        assert math.isfinite(s["rl_entropy_first"]) and math.isfinite(s["rl_entropy_last"])
        assert s["rl_tokens"] == 2 * 16  # C3PO: exactly Φ = 16 loss tokens in each of the 2 steps
        assert s["token_efficiency"] == pytest.approx(32 / s["sft_tokens"])
    assert starts[1]["sft_tokens"] > starts[0]["sft_tokens"]
    assert c3po["objective"] == "C3PO" and grpo["objective"] == "GRPO"
    assert c3po["steps"] == grpo["steps"] == 2  # fixed-length: StageTransition dropped
    assert c3po["loss_tokens_mean"] == 16 and c3po["loss_tokens_sd"] == 0
    assert grpo["loss_tokens_mean"] > 0 and math.isfinite(grpo["grad_norm_var"]) and grpo["grad_norm_mean"] > 0
    chosen = next(s for s in starts if s["step"] == data["chosen_step"])
    assert c3po["after"] == chosen["after"] and c3po["before"] == grpo["before"] == chosen["before"]
    grpo_cfg = yaml.safe_load((out / "rl_grpo.yaml").read_text())
    assert grpo_cfg["model"]["init_args"]["objective"]["class_path"] == "ring_lightning.rl.objectives.GRPO"
    assert grpo_cfg["model"]["init_args"]["objective"]["init_args"]["entropy_coef"] == 0.0  # C3PO's knob, shared
    assert not [cb for cb in grpo_cfg["trainer"]["callbacks"] if cb["class_path"].endswith("StageTransition")]
    report = (out / "study.md").read_text()
    rows_a = [line for line in report.splitlines() if re.match(r"\| [24]( \(chosen\))? \|", line)]
    rows_b = [line for line in report.splitlines() if re.match(r"\| (C3PO|GRPO) \|", line)]
    assert len(rows_a) == 2 and len(rows_b) == 2 and "n/a" not in "".join(rows_a + rows_b)
    assert all(len(_numbers(r)) >= 10 for r in rows_a + rows_b)
    assert "Observed:" in report and "(chosen)" in report and "wall time" in report
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings) == {"sft", "rl_c3po_2", "rl_c3po_4", f"rl_grpo_{data['chosen_step']}"}
    assert all(t > 0 for t in timings.values()) and data["fit_seconds"] == timings
    for png in ("rl_entropy.png", "c3po_vs_grpo.png"):
        assert f"]({png})" in report and (out / png).stat().st_size > 1000


def test_study_without_evaluation_is_a_config_error_naming_it(capsys):
    assert study.main(["--out_dir=/nonexistent/never"]) == 2
    assert "`evaluation` is missing" in capsys.readouterr().err


def test_study_eval_set_must_be_an_evaluation_set(capsys):
    args = ["--evaluation.sets={math: {task: addition, size: 2}}", "--eval_set=logic"]
    assert study.main(args) == 2
    assert "eval_set='logic' is not among evaluation.sets ['math']" in capsys.readouterr().err


def test_study_refuses_an_out_dir_written_with_other_settings(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    (tmp_path / "sft.yaml").write_text("trainer: {max_steps: 7}\n")  # an earlier study's SFT copy
    args = [f"--out_dir={tmp_path}", "--evaluation.sets={math: {task: addition, size: 2}}"]
    assert study.main(args) == 1
    assert f"{tmp_path / 'sft.yaml'} was written with other settings" in capsys.readouterr().err
    assert not (tmp_path / "sft").exists()  # nothing ran
