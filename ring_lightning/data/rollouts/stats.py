"""Rollout statistics of one RL step, reduced over data-parallel ranks.

Ring-lite (arXiv 2506.14731, §3.2 and its RL training curves) follows reward, response length and
the token budget per step; per-domain reward/accuracy, drop/carry counts and timings are ours.

Each rank counts local *sums* and *maxima* under a fixed set of keys (every domain of
`data/prompts.DOMAINS` is always present), so all ranks run the same two all-reduces whatever data
they drew — a rank that drew no code prompt must not skip a collective. `finalize` turns the global
sums into the slash-namespaced metrics logged every step (DESIGN.md rule 9):

* ``reward/mean``, ``reward/<domain>/mean``, ``reward/<domain>/accuracy`` (fraction of responses with
  full reward, >= 1), ``reward/<domain>/count``, ``reward/invalid_frac``, ``reward/error_count``;
* ``rollout/response_length_mean|max``, ``rollout/length_clipped_frac`` (finish_reason "length"),
  ``rollout/generated_tokens``, ``rollout/prompts``, ``rollout/responses``,
  ``rollout/zero_advantage_group_frac``, ``rollout/refill_rounds``, ``rollout/staleness_max``;
* ``budget/used_token_fraction`` (loss tokens / tokens sampled this step), ``budget/prompts_covered``
  (fraction of this step's prompts with >= 1 trained token);
* ``budget/responses_used|truncated|dropped|carried|excluded`` and ``budget/loss_tokens``: used =
  responses with tokens in the loss (truncated ones included), dropped = eligible whole responses left
  out (past the budget, or too old to carry), excluded = invalid or empty;
* ``time/rollout``, ``time/reward`` (the slowest rank).

With `updates_per_rollout` > 1 these describe the whole rollout (all its updates) and are logged
again at its later updates with the sampling counters (``rollout/generated_tokens``, ``time/*``) at
0; ``rollout/update`` is the update's index in its rollout (`updates.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist

from ring_lightning.rows import DOMAINS
from ring_lightning.rl.batch import Response
from ring_lightning.rl.budget import BudgetPlan

SUM_KEYS = ("prompts", "responses", "gen_tokens", "len_sum", "len_clipped", "invalid", "reward_sum",
            "groups", "zero_adv_groups", "errors", "used", "truncated", "dropped", "carried", "excluded",
            "loss_tokens", "prompts_covered") + tuple(f"{d}/{k}" for d in DOMAINS for k in ("count", "reward", "correct"))
MAX_KEYS = ("len_max", "staleness_max", "refill_rounds", "time_rollout", "time_reward")


def empty_stats() -> tuple[dict[str, float], dict[str, float]]:
    """Zeroed (sums, maxima) with every key present."""
    return dict.fromkeys(SUM_KEYS, 0.0), dict.fromkeys(MAX_KEYS, 0.0)


def count_responses(sums: dict[str, float], maxes: dict[str, float], responses: Sequence[Response],
                    n_prompts: int, errors: int = 0) -> None:
    """Add freshly sampled, scored responses (all K of each of `n_prompts` groups) to the counts."""
    sums["prompts"] += n_prompts
    sums["errors"] += errors
    groups: dict[int, list[Response]] = {}
    for r in responses:
        groups.setdefault(r.group_id, []).append(r)
        n = r.length
        sums["responses"] += 1
        sums["gen_tokens"] += n
        sums["len_sum"] += n
        sums["len_clipped"] += r.finish_reason == "length"
        maxes["len_max"] = max(maxes["len_max"], n)
        if not r.valid:
            sums["invalid"] += 1
            continue
        domain = r.domain if r.domain in DOMAINS else "general"
        sums["reward_sum"] += r.reward
        sums[f"{domain}/count"] += 1
        sums[f"{domain}/reward"] += r.reward
        sums[f"{domain}/correct"] += r.reward >= 1.0
    sums["groups"] += len(groups)
    sums["zero_adv_groups"] += sum(all(x.advantage == 0.0 for x in g) for g in groups.values())


def count_plan(sums: dict[str, float], plan: BudgetPlan, responses: Sequence[Response], n_carried_in: int,
               n_carried_out: int) -> None:
    """Add a budget plan's selection counts (`responses[:n_carried_in]` came from the last step;
    `n_carried_out`: responses actually kept for the next step)."""
    lengths = [r.length for r in responses]
    used = {p.index for p in plan.pieces}
    sums["prompts_covered"] += len({responses[i].group_id for i in used if i >= n_carried_in})
    sums["used"] += len(used)
    sums["truncated"] += sum(1 for p in plan.pieces if p.end < lengths[p.index])
    # whole responses left out of the loss (the truncated one's tail is not counted here)
    sums["dropped"] += len([i for i in plan.dropped if i not in used]) + len(plan.carried) - n_carried_out
    sums["carried"] += n_carried_out
    sums["excluded"] += len(plan.excluded)
    sums["loss_tokens"] += plan.n_tokens


def all_reduce_stats(sums: dict[str, float], maxes: dict[str, float], device: torch.device | str = "cpu"
                     ) -> tuple[dict[str, float], dict[str, float]]:
    """Sum `sums` and max `maxes` over all ranks (no-op without an initialised process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dict(sums), dict(maxes)
    out = []
    for d, op in ((sums, dist.ReduceOp.SUM), (maxes, dist.ReduceOp.MAX)):
        keys = sorted(d)
        t = torch.tensor([float(d[k]) for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=op)
        out.append(dict(zip(keys, t.tolist())))
    return out[0], out[1]


def all_reduce_max_int(value: int, device: torch.device | str = "cpu") -> int:
    """The maximum of an integer over all ranks (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def all_reduce_sum_float(value: float, device: torch.device | str = "cpu") -> float:
    """The sum of a float over all ranks (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def finalize(sums: Mapping[str, float], maxes: Mapping[str, float]) -> dict[str, float]:
    """Global sums/maxima -> logged metrics (domains without responses are left out)."""
    n = max(sums["responses"], 1.0)
    n_valid = max(sums["responses"] - sums["invalid"], 1.0)
    out = {
        "reward/mean": sums["reward_sum"] / n_valid,
        "reward/invalid_frac": sums["invalid"] / n,
        "reward/error_count": sums["errors"],
        "rollout/prompts": sums["prompts"],
        "rollout/responses": sums["responses"],
        "rollout/generated_tokens": sums["gen_tokens"],
        "rollout/response_length_mean": sums["len_sum"] / n,
        "rollout/response_length_max": maxes["len_max"],
        "rollout/length_clipped_frac": sums["len_clipped"] / n,
        "rollout/zero_advantage_group_frac": sums["zero_adv_groups"] / max(sums["groups"], 1.0),
        "rollout/refill_rounds": maxes["refill_rounds"],
        "rollout/staleness_max": maxes["staleness_max"],
        "budget/responses_used": sums["used"],
        "budget/responses_truncated": sums["truncated"],
        "budget/responses_dropped": sums["dropped"],
        "budget/responses_carried": sums["carried"],
        "budget/responses_excluded": sums["excluded"],
        "budget/loss_tokens": sums["loss_tokens"],
        "budget/used_token_fraction": sums["loss_tokens"] / max(sums["gen_tokens"], 1.0),
        "budget/prompts_covered": sums["prompts_covered"] / max(sums["prompts"], 1.0),
        "time/rollout": maxes["time_rollout"],
        "time/reward": maxes["time_reward"],
    }
    for d in DOMAINS:
        c = sums[f"{d}/count"]
        if c > 0:
            out[f"reward/{d}/mean"] = sums[f"{d}/reward"] / c
            out[f"reward/{d}/accuracy"] = sums[f"{d}/correct"] / c
            out[f"reward/{d}/count"] = c
    return out
