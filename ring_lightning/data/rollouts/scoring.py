"""Turn engine completions and reward results into `Response`s with group-relative advantages.

Ring-lite (arXiv 2506.14731, §3.1, Eq. 1–3): the K responses of a prompt form a group and share a
baseline; advantages are computed on the whole group (`rl/advantages.py`) before the C3PO budget
truncates anything. An invalid result (`RewardResult.valid=False`, e.g. a gold answer that does not
parse) keeps reward 0, is left out of its group's statistics and never enters the loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from ring_lightning.rows import PromptRow
from ring_lightning.rewards.base import RewardResult
from ring_lightning.rl.advantages import assign_advantages
from ring_lightning.rl.batch import Response
from ring_lightning.rollout.engine import Completion


def check_completions(comps: Sequence[Sequence[Completion]], n_prompts: int, k: int, engine: str) -> None:
    """Raise unless the engine returned `k` completions per prompt, each with one logprob per token."""
    if len(comps) != n_prompts or any(len(c) != k for c in comps):
        raise RuntimeError(f"{engine}.generate returned {[len(c) for c in comps]} completions for "
                           f"{n_prompts} prompts × n={k}")
    for i, group in enumerate(comps):
        for c in group:
            if len(c.logprobs) != len(c.token_ids):
                raise RuntimeError(f"{engine}: a completion of prompt {i} has {len(c.token_ids)} tokens but "
                                   f"{len(c.logprobs)} logprobs")


def scored_responses(
    rows: Sequence[PromptRow],
    prompts: Sequence[torch.Tensor],
    comps: Sequence[Sequence[Completion]],
    results: Sequence[RewardResult],
    first_group: int,
    *,
    scale: Literal["std", "none"] = "std",
    baseline: Literal["mean", "leave_one_out"] = "mean",
) -> list[Response]:
    """One `Response` per completion, grouped per prompt, advantages assigned.

    Args:
        rows: the prompts' rows.
        prompts: [P] long prompt token ids per row.
        comps: K completions per row (`check_completions` first).
        results: reward results, row-major (row i's completions at i·K ... i·K + K − 1).
        first_group: group id of the first row (rows get consecutive ids).
        scale: advantage scale (see `rl/advantages.py`).
        baseline: advantage baseline.
    """
    out = []
    for i, (row, group) in enumerate(zip(rows, comps)):
        for j, c in enumerate(group):
            res = results[i * len(group) + j]
            out.append(Response(
                prompt_ids=prompts[i], response_ids=torch.tensor(c.token_ids, dtype=torch.long),
                reward=float(res.reward) if res.valid else 0.0, group_id=first_group + i, valid=bool(res.valid),
                engine_logprobs=torch.tensor(c.logprobs, dtype=torch.float32), domain=row.domain,
                prompt_id=row.id, finish_reason=c.finish_reason))
    return list(assign_advantages(out, scale=scale, baseline=baseline))
