"""Instruction-following reward: IFEval-style rule checks on the final answer; all-of or fraction.

Ring-lite's two-stage paradigm (arXiv 2506.14731: reasoning RL first, then general RL) trains the
second stage on general data, including instruction following; the report does not detail how
those samples are rewarded. Our choice: verifiable instructions get rule-based rewards (the
reward model, `reward_model.py`, covers open-ended prompts). We use IFEval's instruction ids and
kwargs (`instruction_checks.py`) so IFEval-format data works unchanged. Each row carries
``instructions = [{"id": "length_constraints:number_words", "kwargs": {"num_words": 50,
"relation": "at least"}}, ...]``. Only the answer after the last ``</think>`` is checked (a
``<think>`` that never closes leaves no answer: reward 0).

Reward: ``mode="all"`` (default, IFEval's strict prompt-level accuracy) gives 1.0 only when every
instruction holds; ``mode="fraction"`` gives the fraction that hold (instruction-level accuracy).
An unknown instruction id or bad kwargs is a data error: `validate` raises at load time naming the
row and the id; at scoring time such a sample is invalid (``valid=False``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from ring_lightning.rows import PromptRow
from ring_lightning.rewards.base import RewardResult
from ring_lightning.rewards.extraction import strip_thinking
from ring_lightning.rewards.instruction_checks import CHECKS, check_kwargs


def validate_instructions(row: PromptRow, where: str) -> list[tuple[str, dict[str, Any]]]:
    """[(id, kwargs)] of the row's instructions; raises ValueError naming `where`, the index and the id."""
    if not row.instructions:
        raise ValueError(f"{where}: domain {row.domain!r} needs a non-empty 'instructions' list")
    out = []
    for j, inst in enumerate(row.instructions):
        if not isinstance(inst, dict) or not isinstance(inst.get("id"), str):
            raise ValueError(f"{where}: instructions[{j}] must be {{'id': str, 'kwargs': {{...}}}}")
        try:
            out.append((inst["id"], check_kwargs(inst["id"], inst.get("kwargs"))))
        except ValueError as e:
            raise ValueError(f"{where}: instructions[{j}]: {e}") from None
    return out


class InstructionReward:
    """Rule-based verifier for IFEval-style instructions.

    Args:
        mode: "all" (1.0 only if every instruction holds) or "fraction" (share that hold).
        strip_thinking: check only the text after the last ``</think>``.
    """

    def __init__(self, mode: Literal["all", "fraction"] = "all", strip_thinking: bool = True) -> None:
        if mode not in ("all", "fraction"):
            raise ValueError(f"InstructionReward mode must be 'all' or 'fraction', got {mode!r}")
        self.mode = mode
        self.strip_thinking = strip_thinking
        self.binary = mode == "all"

    def validate(self, row: PromptRow, where: str) -> None:
        validate_instructions(row, where)

    def score_one(self, row: PromptRow, response: str) -> RewardResult:
        try:
            instructions = validate_instructions(row, f"row {row.id!r}")
        except ValueError as e:
            return RewardResult(0.0, valid=False, info={"error": str(e)})
        text = strip_thinking(response) if self.strip_thinking else response
        results = [(iid, bool(text.strip()) and bool(CHECKS[iid].fn(text, **kwargs))) for iid, kwargs in instructions]
        passed = [iid for iid, ok in results if ok]
        frac = len(passed) / len(results)
        reward = frac if self.mode == "fraction" else float(len(passed) == len(results))
        return RewardResult(reward, info={"followed": passed, "failed": [iid for iid, ok in results if not ok],
                                          "fraction": frac})

    def __call__(self, rows: Sequence[PromptRow], responses: Sequence[str]) -> list[RewardResult]:
        if len(rows) != len(responses):
            raise ValueError(f"InstructionReward got {len(rows)} rows but {len(responses)} responses")
        return [self.score_one(r, s) for r, s in zip(rows, responses)]
