"""Built-in synthetic long-CoT data: deterministic, held-out split disjoint, answers correct."""

from __future__ import annotations

import ast
import operator
import re
from collections import Counter

import pytest

from ring_lightning.rows import parse_row
from ring_lightning.data.synthetic.problems import generate_problems, prompt_rows, sft_rows

OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def evaluate(expr: str) -> int:
    """Integer + - * (and unary minus) expressions only: our own generated strings, never model output."""

    def walk(node):
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            return OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        raise ValueError(f"unexpected node {ast.dump(node)}")

    return walk(ast.parse(expr, mode="eval").body)


def test_same_seed_same_data_other_seed_other_data():
    assert sft_rows("mixed", "train", 50, 5, seed=3) == sft_rows("mixed", "train", 50, 5, seed=3)
    assert sft_rows("mixed", "train", 50, 5, seed=3) != sft_rows("mixed", "train", 50, 5, seed=4)


def test_held_out_split_is_disjoint_and_sized():
    for task in ("arithmetic", "countdown", "mixed"):
        split = generate_problems(task, 300, 40, seed=0)
        assert len(split["train"]) == 300 and len(split["val"]) == 40
        assert not {p.question for p in split["train"]} & {p.question for p in split["val"]}


def test_arithmetic_answers_and_reasoning_are_correct():
    for p in generate_problems("arithmetic", 200, 0)["train"]:
        expr = p.meta["expression"]
        assert p.question.startswith(f"Compute {expr}.")
        assert evaluate(expr) == int(p.answer)
        for step in p.steps:  # "a op b = c."
            lhs, rhs = step.rstrip(".").split(" = ")
            assert evaluate(lhs) == int(rhs)


def test_countdown_solutions_use_the_numbers_once_and_hit_the_target():
    for p in generate_problems("countdown", 200, 0)["train"]:
        used = Counter(int(x) for x in re.findall(r"\d+", p.answer))
        assert not used - Counter(p.meta["numbers"])  # each number at most as often as given
        assert evaluate(p.answer) == p.meta["target"]
        assert f"make {p.meta['target']}." in p.question


def test_sft_rows_are_long_cot_chats_with_a_boxed_answer():
    for row in sft_rows("mixed", "val", 20, 10):
        user, assistant = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert re.fullmatch(r"<think>\n(.+\n)+</think>\nThe answer is \\boxed\{.+\}\.", assistant["content"])


def test_prompt_rows_follow_the_rl_schema():
    rows = prompt_rows("mixed", "val", 10, 6)
    parsed = [parse_row(r, f"synthetic row {i}") for i, r in enumerate(rows)]
    assert {p.domain for p in parsed} == {"math", "logic"}
    for p in parsed:
        if p.domain == "math":
            assert int(p.answer) == evaluate(p.meta["expression"])
        else:
            assert evaluate(p.answer) == p.meta["target"] and p.meta["task"] == "countdown"


def test_unknown_task_is_an_error():
    with pytest.raises(ValueError, match="unknown synthetic task 'poetry'"):
        generate_problems("poetry", 1, 1)
