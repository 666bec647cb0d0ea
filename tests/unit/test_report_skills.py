"""report_skills.py: from hand-made stage evaluations with `analysis` / `examples`, the math trace-mode,
per-constraint compliance and shortcut-control tables hold the stored numbers and the paired
changes computed by hand ("n/a" when the prompt counts differ, "–" where a stage has nothing), and
build_report puts the section into report.md."""

from __future__ import annotations

import json
import math

from ring_lightning.report import build_report
from ring_lightning.report_skills import skills_section

STAGES = ["sft", "rl_reasoning", "rl_general"]


def summary(correct, n=4, k=4):
    rates = [c / n for c in correct]
    mean = sum(rates) / len(rates)
    se = math.sqrt(sum((r - mean) ** 2 for r in rates) / (len(rates) - 1) / len(rates))
    return {"prompts": len(correct), "samples": n * len(correct), "pass@1": mean, "pass@1_se": se,
            f"pass@{k}": sum(c > 0 for c in correct) / len(correct), "num_correct": correct,
            "num_samples": [n] * len(correct)}


def stats(rates):
    return {"mean": sum(rates) / len(rates), "se": 0.0, "prompts": len(rates), "rates": rates}


def modes(guess, reasoned, other, acc_reasoned):
    return {"shares": {"guess": guess, "reasoned": reasoned, "other": other},
            "accuracy": {"guess": 0.0, "reasoned": acc_reasoned, "other": None}, "counts": {}}


MATH = {"sft": modes(0.5, 0.25, 0.25, 0.75), "rl_reasoning": modes(0.125, 0.75, 0.125, 0.9),
        "rl_general": modes(0.0, 1.0, 0.0, None)}
COMPLIANCE = {"sft": {"lower": stats([0.25, 0.5]), "fewer_than": stats([0.0, 0.5, 1.0])},
              "rl_reasoning": {"lower": stats([0.5, 0.5]), "fewer_than": stats([0.5, 1.0])},
              "rl_general": {"lower": stats([1.0, 0.75])}}
CONTROL = {"sft": {"short": stats([0.5, 0.5])}, "rl_reasoning": {"short": stats([0.5, 0.5])},
           "rl_general": {"short": stats([1.0, 1.0]), "ending See you.": stats([0.25])}}
EXAMPLES = [{"id": "q1", "prompt": "Compute 3 +\n4.", "responses": ["<think>\n3 + 4 = 7.\n</think>\n\\boxed{7}", "x"]}]
PASS = {"sft": [0, 1, 2, 1], "rl_reasoning": [2, 3, 2, 2], "rl_general": [2, 3, 3, 2]}


def evaluation(stage):
    m = {**summary(PASS[stage]), "analysis": {"math": MATH[stage]}}
    inst = {**summary([2, 2, 1, 3]),
            "analysis": {"instruction": {"compliance": COMPLIANCE[stage], "control": CONTROL[stage]}}}
    if stage == "rl_general":
        m["examples"] = EXAMPLES
    return {"model": f"/x/{stage}", "seconds": 1.0, "sets": {"math": m, "instruction": inst}, "domains": {},
            "spec": {"samples_per_prompt": 4, "temperature": 1.0, "max_tokens": 64, "seed": 5}}


def test_math_trace_modes_table():
    text = "\n".join(skills_section([(n, evaluation(n)) for n in STAGES]))
    assert "### math: math trace modes" in text
    assert "| stage | guess share | reasoned share | other share | accuracy when reasoned | pass@1 | pass@4 |" in text
    assert "| sft | 0.500 | 0.250 | 0.250 | 0.750 | 0.250 ± 0.102 | 0.750 |" in text
    assert "| rl_reasoning | 0.125 | 0.750 | 0.125 | 0.900 | 0.562 ± 0.062 | 1.000 |" in text
    assert "| rl_general | 0.000 | 1.000 | 0.000 | – | 0.625 ± 0.072 | 1.000 |" in text
    assert "### instruction: math trace modes" not in text


def test_compliance_and_control_tables_with_paired_changes():
    text = "\n".join(skills_section([(n, evaluation(n)) for n in STAGES]))
    assert ("| constraint | after sft | after rl_reasoning | after rl_general | Δ sft→rl_reasoning | "
            "Δ rl_reasoning→rl_general |") in text
    # lower: diffs [.25, 0] -> +0.125, sd 0.177 / sqrt 2 = 0.125; then [.5, .25] -> +0.375 ± 0.125
    assert "| lower | 0.375 (2) | 0.500 (2) | 0.875 (2) | +0.125 ± 0.125 | +0.375 ± 0.125 |" in text
    # fewer_than: 3 vs 2 prompts cannot be paired; absent after rl_general
    assert "| fewer_than | 0.500 (3) | 0.750 (2) | – | n/a | – |" in text
    assert "| upper |" not in text  # no stage has it
    assert "| property | after sft |" in text
    assert "| short | 0.500 (2) | 0.500 (2) | 1.000 (2) | +0.000 ± 0.000 | +0.500 ± 0.000 |" in text
    assert "| ending See you. | – | – | 0.250 (1) | – | – |" in text
    assert text.index("### instruction: per-constraint compliance") < text.index(
        "### instruction: unasked families (each property where its family is not asked)")
    assert "shortcut control (prompts that ask nothing)" not in text


def test_a_control_set_gets_the_shortcut_control_table_and_no_compliance():
    evals = []
    for n in STAGES:
        e = evaluation(n)
        e["sets"] = {"instruction_control": {**summary([0, 0]), "scored": False,
                                             "analysis": {"instruction": {"compliance": {}, "control": CONTROL[n]}}}}
        evals.append((n, e))
    text = "\n".join(skills_section(evals))
    assert "### instruction_control: shortcut control (prompts that ask nothing)" in text
    assert "| short | 0.500 (2) | 0.500 (2) | 1.000 (2) | +0.000 ± 0.000 | +0.500 ± 0.000 |" in text
    assert "per-constraint compliance" not in text and "unasked families (each" not in text


def test_samples_of_the_last_stage_and_stages_without_analysis():
    evals = [(n, evaluation(n)) for n in STAGES]
    for s in evals[0][1]["sets"].values():  # sft evaluated before diagnostics existed
        del s["analysis"]
    evals.insert(1, ("skipped", None))
    text = "\n".join(skills_section(evals))
    assert "| sft | – | – | – | – | 0.250 ± 0.102 | 0.750 |" in text
    assert "| lower | – | 0.500 (2) | 0.875 (2) | – | +0.375 ± 0.125 |" in text and "skipped" not in text
    assert "#### Samples: math, after rl_general\n\n**q1**: Compute 3 + 4.\n\n```text\n<think>\n3 + 4 = 7.\n" \
           "</think>\n\\boxed{7}\n```\n\n```text\nx\n```" in text
    assert "Samples: instruction" not in text
    assert skills_section([("sft", {"sets": {"math": summary([1, 2])}, "domains": {}})]) == []


def test_mixed_set_uses_the_math_domain_summary():
    e = {"sets": {"mix": {**summary([4, 0, 0, 0]), "analysis": {"math": MATH["sft"]}}},
         "domains": {"mix": {"math": summary([4, 0]), "logic": summary([0, 0])}}}
    text = "\n".join(skills_section([("sft", e)]))
    assert "| sft | 0.500 | 0.250 | 0.250 | 0.750 | 0.500 ± 0.500 | 0.500 |" in text


def test_build_report_has_the_section(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    state = {"stage_order": STAGES, "stages": {n: {"status": "finished", "eval": evaluation(n)} for n in STAGES}}
    (run / "pipeline_state.json").write_text(json.dumps(state))
    text = build_report(run).read_text()
    assert text.index("## Held-out evaluation") < text.index("## Skill or shortcut") < text.index("## Training curves")
    assert "| lower | 0.375 (2) | 0.500 (2) | 0.875 (2) | +0.125 ± 0.125 | +0.375 ± 0.125 |" in text
    assert "| rl_reasoning | 0.125 | 0.750 | 0.125 | 0.900 | 0.562 ± 0.062 | 1.000 |" in text
