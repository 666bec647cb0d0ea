"""Several optimizer updates per rollout: the rollout split into N disjoint token selections.

Ring-lite (arXiv 2506.14731, §4.1) trains with "a minibatch size of 2" and PPO clipping; with one
update per rollout π_old is the current policy and the clip never acts. Our reading: each rollout
feeds `updates_per_rollout` = N optimizer steps, each on its own selection of the objective's budget
(C3PO: exactly Φ tokens each), all against π_old = the sampling policy. The objective plans update 1
on every response, update 2 on the responses update 1 left untouched, and so on (with a "random"
fill order that is one shuffled pass through the rollout; a truncated response's tail is not reused).
The responses of updates 2..N get their trainer π_old before update 1 runs, and wait here
(`PendingUpdate`, checkpointed, so a resume between updates is exact).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from ring_lightning.rl.batch import Response
from ring_lightning.rl.budget import BudgetPlan, Piece
from ring_lightning.rl.objectives.base import Objective

__all__ = ["PendingUpdate", "merged_plan", "pending_from_state", "pending_to_state", "pending_updates", "plan_updates"]


@dataclass(frozen=True)
class PendingUpdate:
    """A later update of the current rollout: its responses (π_old attached) and its final plan.

    Attributes:
        responses: the responses this update trains on (indices of `plan` refer to this tuple).
        plan: the finalized plan (normaliser set) over `responses`.
        index: which update of the rollout it is (1 = the second).
        metrics: the rollout's logged statistics (sampling counters zeroed: nothing new is sampled).
    """

    responses: tuple[Response, ...]
    plan: BudgetPlan
    index: int
    metrics: dict[str, float]


def plan_updates(objective: Objective, responses: Sequence[Response], *, n_updates: int, n_carried: int,
                 world_size: int, seed: int) -> list[BudgetPlan | None]:
    """The objective's plans for `n_updates` disjoint selections of `responses` (update 1 first).

    A plan that is None or `need_more` means the rollout is short: the caller samples more prompts
    and plans again from scratch. Plans 2..N never see a response an earlier plan used."""
    lengths = [r.length for r in responses]
    eligible = [r.valid for r in responses]
    plans: list[BudgetPlan | None] = []
    for _ in range(n_updates):
        plan = objective.select(lengths, eligible, n_carried=n_carried, world_size=world_size, seed=seed)
        plans.append(plan)
        if plan is None or plan.need_more:
            break
        for p in plan.pieces:
            eligible[p.index] = False
    return plans


def merged_plan(plans: Sequence[BudgetPlan], responses: Sequence[Response]) -> BudgetPlan:
    """One plan describing the whole rollout (every update's pieces), for its statistics:
    dropped = valid responses no update used, excluded = invalid or empty ones."""
    used = {p.index for plan in plans for p in plan.pieces}
    excluded = tuple(i for i, r in enumerate(responses) if not (r.valid and r.length > 0))
    dropped = tuple(i for i, r in enumerate(responses) if i not in used and i not in excluded)
    first = plans[0]
    return replace(first, pieces=tuple(p for plan in plans for p in plan.pieces), dropped=dropped,
                   carried=(), excluded=excluded, budget=sum(plan.budget for plan in plans), shortfall=0)


def pending_updates(plans: Sequence[BudgetPlan], responses: Sequence[Response], metrics: dict[str, float],
                    old_logprobs: Callable[[Sequence[Response]], list]) -> tuple[PendingUpdate, ...]:
    """Updates 2..N as `PendingUpdate`s. `old_logprobs` (collective: called on every rank, possibly
    with an empty list) gives the sampling policy's trainer logprobs of responses that lack them."""
    later = [sorted({p.index for p in plan.pieces}) for plan in plans[1:]]
    need = [i for idx in later for i in idx if responses[i].old_logprobs is None]
    lps = dict(zip(need, old_logprobs([responses[i] for i in need])))
    quiet = {**metrics, "rollout/generated_tokens": 0.0, "time/rollout": 0.0, "time/reward": 0.0}
    out = []
    for u, (plan, idx) in enumerate(zip(plans[1:], later), start=1):
        where = {i: j for j, i in enumerate(idx)}
        rs = tuple(responses[i] if i not in lps else responses[i].replace(old_logprobs=lps[i]) for i in idx)
        pieces = tuple(Piece(where[p.index], p.start, p.end) for p in plan.pieces)
        out.append(PendingUpdate(rs, replace(plan, pieces=pieces, dropped=(), carried=(), excluded=()), u,
                                 {**quiet, "rollout/update": float(u)}))
    return tuple(out)


def pending_to_state(pending: Sequence[PendingUpdate]) -> list[dict[str, Any]]:
    """Checkpointable form (tensors stay tensors; torch.save handles them)."""
    return [{"responses": [{f.name: getattr(r, f.name) for f in fields(Response)} for r in u.responses],
             "plan": {f.name: getattr(u.plan, f.name) for f in fields(BudgetPlan)}
             | {"pieces": [(p.index, p.start, p.end) for p in u.plan.pieces]},
             "index": u.index, "metrics": dict(u.metrics)} for u in pending]


def pending_from_state(state: Sequence[dict[str, Any]]) -> tuple[PendingUpdate, ...]:
    out = []
    for d in state:
        plan = dict(d["plan"])
        plan["pieces"] = tuple(Piece(*p) for p in plan["pieces"])
        for k in ("dropped", "carried", "excluded"):
            plan[k] = tuple(plan[k])
        out.append(PendingUpdate(tuple(Response(**r) for r in d["responses"]), BudgetPlan(**plan),
                                 int(d["index"]), dict(d["metrics"])))
    return tuple(out)
