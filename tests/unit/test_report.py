"""report.py: from a pipeline state file and the stages' metrics.csv (a resumed stage with two
versions), build report.md with the stage table, the held-out table (pass@1 ± SE, pass@k, paired
changes) and one PNG per curve with data."""

from __future__ import annotations

import csv
import json
import math

import pytest

from ring_lightning.report import build_report, main, read_stage_metrics


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r})
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def summary(correct, n=4, k=4):
    rates = [c / n for c in correct]
    mean = sum(rates) / len(rates)
    se = math.sqrt(sum((r - mean) ** 2 for r in rates) / (len(rates) - 1) / len(rates))
    return {"prompts": len(correct), "samples": n * len(correct), "pass@1": mean, "pass@1_se": se,
            f"pass@{k}": sum(c > 0 for c in correct) / len(correct), "num_correct": correct,
            "num_samples": [n] * len(correct)}


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "run"
    write_csv(run / "sft" / "csv" / "version_0" / "metrics.csv",
              [{"step": s, "train/loss": 2.0 - s / 10, "train/loss_tokens": 500} for s in range(10)]
              + [{"step": 9, "sft/entropy": 0.4, "sft/pass@1": 0.2, "sft/response_length": 30}])
    # rl_reasoning was resumed: version_1 repeats step 4 (its value wins) and continues
    write_csv(run / "rl_reasoning" / "csv" / "version_0" / "metrics.csv",
              [{"step": s, "reward/mean": 0.2, "train/entropy": 0.3, "rollout/response_length_mean": 30,
                "train/loss_tokens": 2048} for s in range(5)])
    write_csv(run / "rl_reasoning" / "csv" / "version_1" / "metrics.csv",
              [{"step": s, "reward/mean": 0.2 + s / 20, "reward/math/mean": 0.2 + s / 20, "train/entropy": 0.25,
                "rollout/response_length_mean": 28, "train/loss_tokens": 2048} for s in range(4, 8)])
    write_csv(run / "rl_general" / "csv" / "version_0" / "metrics.csv",
              [{"step": s, "reward/mean": 0.5, "reward/instruction/mean": 0.4 + s / 20, "train/entropy": 0.2,
                "rollout/response_length_mean": 20, "train/loss_tokens": 2048} for s in range(6)])
    evals = {
        "sft": {"math": summary([0, 1, 2, 1]), "instruction": summary([2, 2, 1, 3])},
        "rl_reasoning": {"math": summary([2, 3, 2, 2]), "instruction": summary([2, 1, 2, 3])},
        "rl_general": {"math": summary([2, 3, 3, 2]), "instruction": summary([4, 4, 3, 4])},
    }
    for e in evals.values():  # a control set (prompts that ask nothing): sampled, never scored
        e["instruction_control"] = {**summary([0, 0]), "scored": False}
    state = {"stage_order": ["sft", "rl_reasoning", "rl_general"], "started_at": 100.0, "finished_at": 400.0,
             "stages": {n: {"status": "finished", "attempts": 1 + (n == "rl_reasoning"), "started_at": 100.0 + 100 * i,
                            "finished_at": 180.0 + 100 * i,
                            "outputs": {"model": f"/x/{n}/export", **({"chosen_step": 9, "entropy": 0.4,
                                                                        "fallback": False} if n == "sft" else {})},
                            "eval": {"model": f"/x/{n}/export", "seconds": 12.0, "sets": evals[n], "domains": {},
                                     "spec": {"samples_per_prompt": 4, "temperature": 1.0, "max_tokens": 64,
                                              "seed": 5}}}
                        for i, n in enumerate(["sft", "rl_reasoning", "rl_general"])}}
    (run / "pipeline_state.json").write_text(json.dumps(state))
    return run


def test_metrics_of_a_resumed_stage_are_merged_later_version_wins(run):
    m = read_stage_metrics(run / "rl_reasoning")
    assert sorted(m) == list(range(8))
    assert m[4]["reward/mean"] == pytest.approx(0.4) and m[3]["reward/mean"] == pytest.approx(0.2)
    sft = read_stage_metrics(run / "sft")
    assert sft[9]["sft/entropy"] == pytest.approx(0.4) and sft[9]["train/loss"] == pytest.approx(1.1)


def test_report_has_stage_and_heldout_tables_and_plots(run):
    out = build_report(run)
    text = out.read_text()
    assert out == run / "report.md"
    assert "| sft → rl_reasoning | rl_reasoning → rl_general |" in text
    assert "| sft | finished | 1 | 10 | 80 s | 12 s | /x/sft/export (SFT checkpoint of step 9, entropy 0.400) |" in text
    assert "| rl_reasoning | finished | 2 | 8 |" in text
    # pass@1 ± SE per stage, then paired changes: math 0.25 -> 0.5625 -> 0.625
    assert "| math (4 prompts × 4) | pass@1 | 0.250 ± 0.102 | 0.562 ± 0.062 | 0.625 ± 0.072 | +0.312 ± 0.120 | " \
           "+0.062 ± 0.062 |" in text
    assert "| instruction (4 prompts × 4) | pass@1 | 0.500 ± 0.102 |" in text
    assert "instruction_control (" not in text  # no pass@1 row for a set with nothing to score
    assert "| math | pass@4 | 0.750 | 1.000 | 1.000 |" in text
    assert "4 samples per prompt at temperature 1.0" in text
    assert "Pipeline wall time: 300 s" in text
    for name in ("reward", "entropy", "response_length", "tokens_per_step", "loss"):
        png = run / f"{name}.png"
        assert f"![{name}]({name}.png)" in text
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_report_cli_and_missing_state(run, tmp_path, capsys):
    assert main([str(run)]) == 0 and (run / "report.md").is_file()
    assert main([str(tmp_path / "nowhere")]) == 1
    assert "pipeline_state.json not found" in capsys.readouterr().err


def test_report_shows_the_sft_band_the_entropy_curve_and_the_pick(run):
    readiness = run / "sft" / "rl_readiness" / "rl_readiness.json"
    readiness.parent.mkdir(parents=True, exist_ok=True)
    readiness.write_text(json.dumps({
        "band": [0.1, 0.2], "rule": "accuracy", "reason": "2 of 3 candidates have entropy in [0.1, 0.2]; chose step 30",
        "chosen": {"step": 30, "entropy": 0.12, "accuracy": 0.4},
        "candidates": [{"step": 10, "entropy": 0.45, "accuracy": 0.1, "in_band": False},
                       {"step": 20, "entropy": 0.18, "accuracy": 0.3, "in_band": True},
                       {"step": 30, "entropy": 0.12, "accuracy": 0.4, "in_band": True}]}))
    state = json.loads((run / "pipeline_state.json").read_text())
    state["stages"]["sft"].setdefault("outputs", {})["readiness"] = str(readiness)
    (run / "pipeline_state.json").write_text(json.dumps(state))
    text = build_report(run).read_text()
    assert "## SFT checkpoint for RL (sft)" in text and "Entropy band [0.1, 0.2] nats" in text
    assert "| 10 | 0.450 | 0.100 | no |  |" in text and "| 30 | 0.120 | 0.400 | yes | **yes** |" in text
    assert (run / "sft_entropy.png").stat().st_size > 1000
