"""LogicReward + make_logic_rows: reasoning-gym tasks, AST-scored Countdown, row validation."""

from __future__ import annotations

import json

import pytest
from rewards_testlib import make_row

from ring_lightning.rows import parse_row
from ring_lightning.rewards.countdown import evaluate_expression, score_countdown
from ring_lightning.rewards.logic import RG_TASKS, LogicReward, LogicRowError, make_logic_rows

REWARD = LogicReward()


def roundtrip(rows):
    """Through JSON and the prompt schema, as rows written to a file and loaded back."""
    return [parse_row(json.loads(json.dumps(r.to_dict())), f"logic.jsonl row {i}") for i, r in enumerate(rows)]


@pytest.mark.parametrize("task", RG_TASKS)
def test_generated_rows_score_their_own_answers(task):
    rows = roundtrip(make_logic_rows(task, 2, seed=11))
    assert all(r.domain == "logic" and r.meta["task"] == task for r in rows)
    assert "<answer></answer>" in rows[0].messages[0]["content"]
    for row in rows:
        REWARD.validate(row, "x")
    right = REWARD(rows, [f"<think>working</think>\n<answer>\n{r.answer}\n</answer>" for r in rows])
    boxed = REWARD(rows, [f"Final: \\boxed{{{r.answer}}}" for r in rows])
    wrong = REWARD(rows, ["<answer>0 0</answer>", "<answer>12345</answer>"])
    missing = REWARD(rows, ["I give up.", "<answer></answer>"])
    assert [r.reward for r in right] == [1.0, 1.0], [r.info for r in right]
    assert [r.reward for r in boxed] == [1.0, 1.0]
    assert [r.reward for r in wrong] == [0.0, 0.0]
    assert [r.reward for r in missing] == [0.0, 0.0]


def test_rows_are_deterministic_in_seed():
    a, b, c = (make_logic_rows("maze", 3, seed=s) for s in (5, 5, 6))
    assert [r.to_dict() for r in a] == [r.to_dict() for r in b]
    assert [r.messages for r in a] != [r.messages for r in c]


def test_rule_checked_sudoku_is_binary_even_with_partial_credit():
    row = roundtrip(make_logic_rows("mini_sudoku", 1, seed=3))[0]
    lines = row.answer.split("\n")
    broken = "\n".join(lines[:-1] + [" ".join(reversed(lines[-1].split()))])
    assert REWARD([row], [f"<answer>{broken}</answer>"])[0].reward == 0.0
    assert LogicReward(partial_credit=True)([row], [f"<answer>{broken}</answer>"])[0].reward == 0.0
    assert LogicReward(partial_credit=True)([row], [f"<answer>{row.answer}</answer>"])[0].reward == 1.0


def test_countdown_is_scored_without_eval(tmp_path):
    marker = tmp_path / "pwned"
    row = make_row("logic", answer="(25 - 5) * 3", meta={"task": "countdown", "numbers": [25, 5, 3, 7], "target": 60})
    hostile = [f"<answer>__import__('os').system('touch {marker}')</answer>",
               "<answer>(lambda: 60)()</answer>", "<answer>2**6 - 4</answer>", "<answer>60</answer>",
               "<answer>25 * 3 - 5 - 5 - 5</answer>", "<answer>(25 - 5) * 3 / (7 - 7)</answer>",
               "<answer>" + "(" * 300 + "1" + ")" * 300 + "</answer>"]
    out = REWARD([row] * len(hostile), hostile)
    assert [r.reward for r in out] == [0.0] * len(hostile), [r.info for r in out]
    assert not marker.exists()
    ok = REWARD([row] * 3, ["<answer>(25 - 5) * 3</answer>", "\\boxed{3 \\times (25 - 5)}",
                            "<answer>(25-5)*3 = 60</answer>"])
    assert [r.reward for r in ok] == [1.0, 1.0, 1.0]


def test_countdown_number_rules():
    assert score_countdown("25 + 5", [25, 5, 3], 30, use_all=False) == (True, "")
    ok, why = score_countdown("25 + 5", [25, 5, 3], 30, use_all=True)
    assert not ok and "exactly the numbers" in why
    ok, why = score_countdown("25 + 25 - 20", [25, 5, 3], 30, use_all=False)
    assert not ok and "not available" in why
    assert evaluate_expression("7 / 2 * 2")[0] == 7
    assert score_countdown("100 / 3 * 3", [100, 3, 3], 100, use_all=True)[0]  # exact, no float rounding


@pytest.mark.parametrize("meta,match", [
    ({"task": "chess"}, "meta.task must be one of"),
    ({"task": "countdown", "numbers": [], "target": 3}, "meta.numbers"),
    ({"task": "countdown", "numbers": [1, 2], "target": "3"}, "meta.target"),
    ({"task": "sudoku"}, "meta.puzzle"),
    ({"task": "arc_1d"}, "rg_entry"),
])
def test_invalid_rows(meta, match):
    row = make_row("logic", answer="1", meta=meta)
    with pytest.raises(LogicRowError, match="logic.jsonl row 2: .*" + match):
        REWARD.validate(row, "logic.jsonl row 2")
    res = REWARD([row], ["<answer>1</answer>"])[0]
    assert res.valid is False and res.reward == 0.0


def test_rows_in_the_synthetic_module_format_are_scored():
    # data/synthetic/problems.py writes countdown rows as meta {"task", "numbers", "target"}: each number at most once.
    raw = {"id": "countdown-train-0", "domain": "logic", "prompt": "Use 3, 9, 4 to make 13.", "answer": "9 + 4",
           "meta": {"task": "countdown", "numbers": [3, 9, 4], "target": 13}}
    row = parse_row(raw, "synthetic row 0")
    out = REWARD([row] * 3, ["\\boxed{9 + 4}", "\\boxed{3 * 4 + 1}", "\\boxed{9 + 4 + 3 - 3}"])
    assert [r.reward for r in out] == [1.0, 0.0, 0.0]


def test_unknown_task_for_make_logic_rows():
    with pytest.raises(ValueError, match="unknown logic task 'chess'"):
        make_logic_rows("chess", 1)
