"""C3PO token budget: which response tokens enter one optimizer step, and on which rank/micro-batch.

Ring-lite (arXiv 2506.14731, §3.2, Eq. 4–6): responses are taken one after another until exactly
Φ tokens (the crossing response truncated at token level, after its group advantage); the summed
token loss is divided by the constant Φ. `select_budget` (C3PO) and `select_all` (GRPO) plan;
`split_plan` lays a plan out over ranks (C3PO: Φ/W tokens each, a response split at a token
boundary where a share ends; GRPO: whole sequences) and micro-batches (rows × longest row <=
`micro_batch_tokens`, every rank the same count). Pure functions; the objectives in
`rl/objectives/` choose which to call. Fill order, overflow (drop / carry), ineligible responses,
shortfall and the normaliser under gradient averaging: docs/design.md#budget.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ring_lightning.rl.terms import LossAgg  # one definition of the aggregations

FillOrder = Literal["batch", "random", "shortest_first"]
Overflow = Literal["drop", "carry"]
GradReduce = Literal["mean", "sum"]


@dataclass(frozen=True)
class Piece:
    """A token slice of one response that enters the loss.

    Attributes:
        index: position of the response in the step's response list.
        start: first response token in the loss (inclusive, 0-based within the response).
        end: one past the last response token in the loss. The forward pass needs the prompt and
            response tokens [0, end); only [start, end) are in the loss mask.
    """

    index: int
    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"Piece(index={self.index}): need 0 <= start < end, got start="
                             f"{self.start}, end={self.end}")

    @property
    def n_tokens(self) -> int:
        """Number of loss tokens in this piece."""
        return self.end - self.start


@dataclass(frozen=True)
class BudgetPlan:
    """Which response tokens enter one optimizer step (all ranks together).

    Attributes:
        pieces: selected slices in fill order; in C3PO mode only the last may be truncated.
        budget: Φ (C3PO) or the total selected tokens (GRPO `select_all`).
        shortfall: Φ minus the eligible tokens available when that is positive, else 0.
        dropped: indices of unused responses that are discarded (overflow="drop"), plus the
            truncated response if any (its unused tail is discarded).
        carried: indices of unused whole responses to put first in the next step (overflow="carry").
        excluded: indices never eligible (eligible=False or empty response).
        loss_agg: the loss aggregation this plan is built for (see `rl/losses.py`).
        normalizer: the global loss normaliser: Φ for C3PO, the number of sequences for GRPO.
    """

    pieces: tuple[Piece, ...]
    budget: int
    shortfall: int
    dropped: tuple[int, ...]
    carried: tuple[int, ...]
    excluded: tuple[int, ...]
    loss_agg: LossAgg
    normalizer: float

    @property
    def n_tokens(self) -> int:
        """Selected loss tokens (== budget unless there is a shortfall)."""
        return sum(p.n_tokens for p in self.pieces)

    @property
    def need_more(self) -> bool:
        """True when the rollout batch held fewer eligible tokens than Φ: roll out more prompts."""
        return self.shortfall > 0


@dataclass(frozen=True)
class StepPlan:
    """A `BudgetPlan` laid out over data-parallel ranks and micro-batches.

    Attributes:
        micro_batches: [rank][micro-batch] -> pieces; every rank has the same number of
            micro-batches (some possibly empty).
        normalizer: the per-rank loss normaliser to pass to `policy_loss` (already divided by
            world_size when grad_reduce="mean").
        loss_agg: loss aggregation of the underlying plan.
        budget: the step's global budget (Φ in C3PO mode).
    """

    micro_batches: tuple[tuple[tuple[Piece, ...], ...], ...]
    normalizer: float
    loss_agg: LossAgg
    budget: int

    @property
    def world_size(self) -> int:
        return len(self.micro_batches)

    @property
    def num_micro_batches(self) -> int:
        """Micro-batches per rank (the same on every rank)."""
        return len(self.micro_batches[0])

    def rank_tokens(self, rank: int) -> int:
        """Loss tokens assigned to `rank`."""
        return sum(p.n_tokens for mb in self.micro_batches[rank] for p in mb)


def _check_eligible(lengths: Sequence[int], eligible: Sequence[bool] | None) -> list[bool]:
    if eligible is None:
        eligible = [True] * len(lengths)
    if len(eligible) != len(lengths):
        raise ValueError(f"eligible has {len(eligible)} entries but lengths has {len(lengths)}; "
                         "pass one flag per response")
    for i, n in enumerate(lengths):
        if n < 0:
            raise ValueError(f"lengths[{i}] = {n} is negative; lengths are response token counts")
    return [bool(e) and n > 0 for e, n in zip(eligible, lengths)]


def select_budget(
    lengths: Sequence[int],
    phi: int,
    *,
    order: FillOrder = "batch",
    seed: int = 0,
    overflow: Overflow = "drop",
    eligible: Sequence[bool] | None = None,
    n_carried_in: int = 0,
    carry_cap: int | None = None,
) -> BudgetPlan:
    """Select exactly `phi` response tokens for one C3PO optimizer step.

    Args:
        lengths: response token count of each response of the step (carried-in ones first).
        phi: the token budget Φ of the step (all ranks together).
        order: fill order for responses that were not carried in: "batch", "random" or
            "shortest_first" (ties keep batch order).
        seed: seed of the "random" order; must be identical on every rank.
        overflow: "drop" or "carry" unused whole responses.
        eligible: per response, False to never select it (e.g. invalid samples). Default all True.
        n_carried_in: the first `n_carried_in` responses were carried over from the previous step
            and are taken first, in their given order.
        carry_cap: with overflow="carry", the most tokens the carried responses may hold (whole
            responses in fill order until the next would pass it; the rest are dropped). None = no
            cap. A cap below `phi` keeps fresh responses in every step: uncapped leftovers >= Φ
            would make every later step train only on one-step-old responses.

    Returns:
        The plan. Its pieces sum to exactly `phi` tokens unless `plan.need_more`.
    """
    if phi <= 0:
        raise ValueError(f"phi (the token budget) must be positive, got {phi}")
    if order not in ("batch", "random", "shortest_first"):
        raise ValueError(f"order must be 'batch', 'random' or 'shortest_first', got {order!r}")
    if overflow not in ("drop", "carry"):
        raise ValueError(f"overflow must be 'drop' or 'carry', got {overflow!r}")
    if not 0 <= n_carried_in <= len(lengths):
        raise ValueError(f"n_carried_in={n_carried_in} is outside [0, {len(lengths)}]")
    ok = _check_eligible(lengths, eligible)

    rest = list(range(n_carried_in, len(lengths)))
    if order == "random":
        random.Random(seed).shuffle(rest)
    elif order == "shortest_first":
        rest.sort(key=lambda i: lengths[i])
    fill = list(range(n_carried_in)) + rest

    pieces: list[Piece] = []
    unused: list[int] = []
    dropped: list[int] = []
    excluded = [i for i in range(len(lengths)) if not ok[i]]
    total = 0
    for i in fill:
        if not ok[i]:
            continue
        if total >= phi:
            unused.append(i)
            continue
        take = min(lengths[i], phi - total)
        pieces.append(Piece(i, 0, take))
        total += take
        if take < lengths[i]:
            dropped.append(i)  # truncated: its tail is discarded
    if overflow == "carry":
        carried, held = [], 0
        for i in unused:
            if carry_cap is not None and held + lengths[i] > carry_cap:
                dropped.append(i)
                continue
            carried.append(i)
            held += lengths[i]
    else:
        carried, dropped = [], dropped + unused
    return BudgetPlan(pieces=tuple(pieces), budget=phi, shortfall=max(phi - total, 0),
                      dropped=tuple(sorted(dropped)), carried=tuple(carried),
                      excluded=tuple(excluded), loss_agg="token_sum_over_constant",
                      normalizer=float(phi))


def select_all(lengths: Sequence[int], *, eligible: Sequence[bool] | None = None) -> BudgetPlan:
    """Plain GRPO: every eligible response enters in full; loss is the mean of per-sequence means.

    Args:
        lengths: response token count of each response of the step.
        eligible: per response, False to leave it out (e.g. invalid samples). Default all True.
    """
    ok = _check_eligible(lengths, eligible)
    pieces = tuple(Piece(i, 0, n) for i, n in enumerate(lengths) if ok[i])
    if not pieces:
        raise ValueError("select_all: no eligible, non-empty response in the batch; roll out more")
    return BudgetPlan(pieces=pieces, budget=sum(p.n_tokens for p in pieces), shortfall=0,
                      dropped=(), carried=(), excluded=tuple(i for i in range(len(lengths))
                                                               if not ok[i]),
                      loss_agg="seq_mean_token_mean", normalizer=float(len(pieces)))


def _ranks_by_tokens(pieces: Sequence[Piece], world_size: int) -> list[list[Piece]]:
    """C3PO: fill ranks contiguously, splitting a piece where a rank's Φ/world share ends."""
    share = sum(p.n_tokens for p in pieces) // world_size
    ranks: list[list[Piece]] = [[] for _ in range(world_size)]
    r, room = 0, share
    for p in pieces:
        start = p.start
        while start < p.end:
            take = min(p.end - start, room)
            ranks[r].append(Piece(p.index, start, start + take))
            start += take
            room -= take
            if room == 0 and r < world_size - 1:
                r, room = r + 1, share
    return ranks


def _ranks_by_sequences(pieces: Sequence[Piece], world_size: int) -> list[list[Piece]]:
    """GRPO: deal whole sequences, longest first, to the rank with the fewest tokens so far."""
    ranks: list[list[Piece]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for p in sorted(pieces, key=lambda p: -p.n_tokens):
        r = min(range(world_size), key=lambda k: (load[k], len(ranks[k]), k))
        ranks[r].append(p)
        load[r] += p.n_tokens
    return ranks


def _micro_batches(pieces: Sequence[Piece], prompt_lengths: Sequence[int],
                   micro_batch_tokens: int | None) -> list[tuple[Piece, ...]]:
    """Pack a rank's pieces longest row first; padded cost rows × longest row <= the cap."""
    if micro_batch_tokens is None:
        return [tuple(pieces)] if pieces else []
    # A row holds prompt + response[:end] minus one token (inputs predict the next token).
    row = {id(p): prompt_lengths[p.index] + p.end - 1 for p in pieces}
    out: list[list[Piece]] = []
    width = 0
    for p in sorted(pieces, key=lambda p: -row[id(p)]):
        if out and (len(out[-1]) + 1) * width <= micro_batch_tokens:
            out[-1].append(p)
        else:
            out.append([p])
            width = row[id(p)]
    return [tuple(sorted(mb, key=lambda p: (p.index, p.start))) for mb in out]


def split_plan(
    plan: BudgetPlan,
    world_size: int,
    prompt_lengths: Sequence[int],
    micro_batch_tokens: int | None = None,
    grad_reduce: GradReduce = "mean",
) -> StepPlan:
    """Lay a plan out over data-parallel ranks and micro-batches (identically on every rank).

    Args:
        plan: from `select_budget` (C3PO) or `select_all` (GRPO).
        world_size: number of data-parallel ranks.
        prompt_lengths: prompt token count of each response of the step (indexed like `lengths`).
        micro_batch_tokens: cap on rows × longest row of one micro-batch; None = one micro-batch
            per rank.
        grad_reduce: how the strategy reduces gradients over ranks: "mean" (DDP/FSDP) or "sum".

    Returns:
        The step plan. In C3PO mode every rank holds exactly Φ / world_size loss tokens.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if grad_reduce not in ("mean", "sum"):
        raise ValueError(f"grad_reduce must be 'mean' or 'sum', got {grad_reduce!r}")
    if micro_batch_tokens is not None and micro_batch_tokens < 1:
        raise ValueError(f"micro_batch_tokens must be positive or None, got {micro_batch_tokens}")
    if plan.need_more:
        raise ValueError(f"the plan is {plan.shortfall} tokens short of its budget {plan.budget}: "
                         "roll out more prompts and call select_budget again on all responses")
    for p in plan.pieces:
        if not 0 <= p.index < len(prompt_lengths):
            raise ValueError(f"piece index {p.index} has no entry in prompt_lengths "
                             f"(len {len(prompt_lengths)})")
        if prompt_lengths[p.index] < 1:
            raise ValueError(f"response {p.index} has an empty prompt; every row needs at least "
                             "one prompt token to predict its first response token")
    if plan.loss_agg == "token_sum_over_constant":
        if plan.budget % world_size:
            raise ValueError(f"phi={plan.budget} is not divisible by world_size={world_size}; "
                             "choose phi as a multiple of the number of data-parallel ranks")
        ranks = _ranks_by_tokens(plan.pieces, world_size)
    else:
        ranks = _ranks_by_sequences(plan.pieces, world_size)
    per_rank = [_micro_batches(rk, prompt_lengths, micro_batch_tokens) for rk in ranks]
    n_micro = max(1, max(len(m) for m in per_rank))
    padded = tuple(tuple(m) + ((),) * (n_micro - len(m)) for m in per_rank)
    scale = world_size if grad_reduce == "mean" else 1
    return StepPlan(micro_batches=padded, normalizer=plan.normalizer / scale,
                    loss_agg=plan.loss_agg, budget=plan.budget)
