"""Typed RL batches: one sampled `Response`, the padded `MicroBatch` a training step consumes, and
the per-rank `RolloutBatch` of one optimizer step; plus `collate`, which builds a micro-batch from
budget pieces (`rl/budget.py`).

Ring-lite (arXiv 2506.14731, §3.1–3.2) trains on prompt + response sequences with a token-level
loss over response tokens only; C3PO (§3.2) may put only part of a response into a step. We
therefore carry, per row, the whole prefix the piece needs (prompt + response[:end]) and a loss
mask on the piece's tokens [start, end) only.

Alignment convention (all per-token tensors are [B, T] and aligned with `target_ids`): for a row
holding the sequence s = prompt + response[:end], `input_ids = s[:-1]`, `target_ids = s[1:]`, so
`logits[b, t]` (from `model(input_ids)`) predicts `target_ids[b, t]` and every per-token tensor at
[b, t] (loss mask, advantages, old / engine / ref logprobs) refers to that target token. Response
token j sits at t = len(prompt) + j − 1. Rows are right-padded with `pad_id`; padding has
attention 0 and loss mask 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from ring_lightning.rl.budget import Piece, StepPlan


@dataclass(frozen=True, eq=False)
class Response:
    """One sampled response and everything the RL loss needs about it.

    Attributes:
        prompt_ids: [P] long, the prompt tokens (chat template applied); P >= 1.
        response_ids: [L] long, the generated tokens (EOS included when generation stopped on it).
        reward: scalar reward of the response.
        group_id: id shared by the K responses of one prompt (advantages are computed per group).
        advantage: group-relative advantage (`rl/advantages.py`); 0 until assigned.
        valid: False when the sample must be excluded from the loss (never selected by the budget).
        engine_logprobs: [L] float or None, logprobs of the rollout engine (for TIS / IcePop).
        old_logprobs: [L] float or None, logprobs under the behaviour policy π_old as computed by
            the trainer. Carried-over responses keep the values of the step that sampled them.
        ref_logprobs: [L] float or None, logprobs under the frozen reference policy π_ref.
        domain: data domain of the prompt ("math", "code", ...), for per-domain metrics.
        prompt_id: id of the prompt row.
        finish_reason: "stop" or "length".
        age: optimizer steps since the response was sampled (0 = on-policy; +1 per carry-over).
    """

    prompt_ids: torch.Tensor  # [P] long
    response_ids: torch.Tensor  # [L] long
    reward: float
    group_id: int
    advantage: float = 0.0
    valid: bool = True
    engine_logprobs: torch.Tensor | None = None  # [L]
    old_logprobs: torch.Tensor | None = None  # [L]
    ref_logprobs: torch.Tensor | None = None  # [L]
    domain: str = "general"
    prompt_id: str = ""
    finish_reason: str = "stop"
    age: int = 0

    def __post_init__(self) -> None:
        where = f"Response(prompt_id={self.prompt_id!r}, group_id={self.group_id})"
        for name in ("prompt_ids", "response_ids"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.dtype != torch.long:
                raise ValueError(f"{where}: {name} must be a 1-D torch.long tensor, got "
                                 f"{type(t).__name__} {getattr(t, 'dtype', '')}")
        if self.prompt_ids.numel() < 1:
            raise ValueError(f"{where}: prompt_ids is empty; a prompt needs at least one token")
        n = self.response_ids.numel()
        for name in ("engine_logprobs", "old_logprobs", "ref_logprobs"):
            t = getattr(self, name)
            if t is not None and (t.ndim != 1 or t.numel() != n or not t.is_floating_point()):
                raise ValueError(f"{where}: {name} must be a 1-D float tensor of length {n} "
                                 f"(one per response token), got shape {tuple(t.shape)}")

    @property
    def length(self) -> int:
        """Number of response tokens L."""
        return self.response_ids.numel()

    def replace(self, **changes: Any) -> Response:
        """A copy with some fields changed (e.g. `old_logprobs=`, `advantage=`)."""
        return replace(self, **changes)


@dataclass(frozen=True, eq=False)
class MicroBatch:
    """One padded micro-batch: what a single forward/backward consumes.

    Attributes:
        input_ids: [B, T] long, prompt + response[:end] without its last token, right-padded.
        target_ids: [B, T] long, the next token at each position (input shifted by one), padded.
        attention_mask: [B, T] long, 1 on real tokens, 0 on padding.
        position_ids: [B, T] long, 0..T-1 (rows start at position 0, padding is at the right).
        loss_mask: [B, T] bool, True on the targets that enter the loss (the piece's tokens).
        advantages: [B, T] float, the response's advantage broadcast over its tokens (0 elsewhere).
        old_logprobs: [B, T] float or None, stored π_old logprobs of the targets; None when no row
            has them. Rows with `old_known` False hold zeros: use `old_logprobs_for`.
        old_known: [B] bool, True for rows whose response carries stored old logprobs (e.g.
            carried-over responses); the other rows are on-policy (π_old = current policy).
        engine_logprobs: [B, T] float or None, rollout-engine logprobs of the targets.
        ref_logprobs: [B, T] float or None, reference-policy logprobs of the targets.
        normalizer: the constant the summed loss is divided by on this rank (see `StepPlan`).
        loss_agg: the loss aggregation (see `rl/losses.py`).
        sample_index: [B] long, index of each row's response in the step (-1 for a dummy row).
        num_loss_tokens: number of True entries in `loss_mask`.
    """

    input_ids: torch.Tensor  # [B, T]
    target_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T]
    loss_mask: torch.Tensor  # [B, T] bool
    advantages: torch.Tensor  # [B, T]
    old_logprobs: torch.Tensor | None  # [B, T]
    old_known: torch.Tensor  # [B] bool
    engine_logprobs: torch.Tensor | None  # [B, T]
    ref_logprobs: torch.Tensor | None  # [B, T]
    normalizer: float
    loss_agg: str
    sample_index: torch.Tensor  # [B]
    num_loss_tokens: int

    def old_logprobs_for(self, logprobs: torch.Tensor) -> torch.Tensor:
        """π_old logprobs [B, T]: the stored ones where known, else `logprobs` detached.

        With one optimizer step per rollout batch (the report's setting) a fresh response's
        behaviour policy is the current policy, so its ratio is exactly 1 at every micro-batch.

        Args:
            logprobs: [B, T] current-policy logprobs of the targets.
        """
        cur = logprobs.detach()  # [B, T]
        if self.old_logprobs is None:
            return cur
        known = self.old_known.to(logprobs.device).unsqueeze(-1)  # [B, 1]
        return torch.where(known, self.old_logprobs.to(cur), cur)  # [B, T]

    def to(self, device: torch.device | str) -> MicroBatch:
        """A copy with every tensor moved to `device`."""
        moved = {f.name: (v.to(device) if isinstance(v := getattr(self, f.name), torch.Tensor)
                          else v) for f in fields(self)}
        return MicroBatch(**moved)


@dataclass(frozen=True, eq=False)
class RolloutBatch:
    """One optimizer step on one rank: what the RolloutDataModule yields to `training_step`.

    Attributes:
        micro_batches: this rank's micro-batches (the same count on every rank; accumulate
            gradients over all of them, then take one optimizer step).
        responses: every response of the step (all ranks), for logging and carry-over.
        rank: this data-parallel rank.
        world_size: number of data-parallel ranks.
        budget: the step's global token budget Φ (or total tokens in GRPO mode).
        metrics: rollout statistics to log (slash-namespaced, e.g. "rollout/reward_mean").
    """

    micro_batches: tuple[MicroBatch, ...]
    responses: tuple[Response, ...]
    rank: int
    world_size: int
    budget: int
    metrics: dict[str, float] = field(default_factory=dict)


def _gather_optional(responses: Sequence[Response], pieces: Sequence[Piece], name: str
                     ) -> list[torch.Tensor | None] | None:
    have = [getattr(responses[p.index], name) is not None for p in pieces]
    if not any(have):
        return None
    if not all(have) and name != "old_logprobs":
        missing = [p.index for p, h in zip(pieces, have) if not h]
        raise ValueError(f"collate: responses {missing} lack {name} while others in the same "
                         f"micro-batch have it; set {name} on every response of the step (e.g. "
                         "recompute π_old logprobs for fresh responses) or on none")
    return [getattr(responses[p.index], name) for p in pieces]


def _check_pieces(responses: Sequence[Response], pieces: Sequence[Piece]) -> None:
    for p in pieces:
        if not 0 <= p.index < len(responses):
            raise ValueError(f"collate: piece index {p.index} outside the {len(responses)} "
                             "responses")
        r = responses[p.index]
        if p.end > r.length:
            raise ValueError(f"collate: piece [{p.start}, {p.end}) of response {p.index} runs past "
                             f"its {r.length} tokens")
        if not r.valid:
            raise ValueError(f"collate: response {p.index} is invalid (valid=False) and must not "
                             "enter the loss; pass eligible=[r.valid ...] to the budget selection")


def _dummy(responses: Sequence[Response], normalizer: float, loss_agg: str, pad_id: int,
           dtype: torch.dtype) -> MicroBatch:
    """One pad row with an all-zero loss mask (keeps collective forwards matched across ranks)."""
    z = torch.zeros(1, 1, dtype=torch.long)
    # Same optional tensors as the step's real micro-batches, so the loss call is identical.
    opt = {name: (torch.zeros(1, 1, dtype=dtype) if responses and all(
        getattr(r, name) is not None for r in responses) else None)
        for name in ("engine_logprobs", "ref_logprobs")}
    return MicroBatch(input_ids=z + pad_id, target_ids=z + pad_id, attention_mask=z + 1,
                      position_ids=z.clone(), loss_mask=torch.zeros(1, 1, dtype=torch.bool),
                      advantages=torch.zeros(1, 1, dtype=dtype), old_logprobs=None,
                      old_known=torch.zeros(1, dtype=torch.bool),
                      engine_logprobs=opt["engine_logprobs"],
                      ref_logprobs=opt["ref_logprobs"], normalizer=normalizer,
                      loss_agg=loss_agg, sample_index=torch.tensor([-1]), num_loss_tokens=0)


def collate(
    responses: Sequence[Response],
    pieces: Sequence[Piece],
    normalizer: float,
    loss_agg: str = "token_sum_over_constant",
    pad_id: int = 0,
    dtype: torch.dtype = torch.float32,
) -> MicroBatch:
    """Right-pad the pieces' rows into a `MicroBatch`.

    Args:
        responses: all responses of the step (pieces index into it).
        pieces: the slices for this micro-batch; empty gives one dummy row (pad token, attention 1,
            loss mask 0, zero engine/ref logprobs when every response has them) so that every
            rank still runs a forward/backward.
        normalizer: per-rank loss normaliser (`StepPlan.normalizer`).
        loss_agg: loss aggregation (`StepPlan.loss_agg`).
        pad_id: padding token id.
        dtype: float dtype of advantages and logprob tensors.
    """
    _check_pieces(responses, pieces)
    if not pieces:
        return _dummy(responses, normalizer, loss_agg, pad_id, dtype)
    seqs = [torch.cat([responses[p.index].prompt_ids, responses[p.index].response_ids[: p.end]])
            for p in pieces]
    B, T = len(pieces), max(s.numel() for s in seqs) - 1
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)  # [B, T]
    target_ids = torch.full((B, T), pad_id, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros(B, T, dtype=torch.long)  # [B, T]
    loss_mask = torch.zeros(B, T, dtype=torch.bool)  # [B, T]
    advantages = torch.zeros(B, T, dtype=dtype)  # [B, T]
    lp = {name: _gather_optional(responses, pieces, name)
          for name in ("old_logprobs", "engine_logprobs", "ref_logprobs")}
    lp_out = {name: (torch.zeros(B, T, dtype=dtype) if v is not None else None)
              for name, v in lp.items()}
    for b, (p, s) in enumerate(zip(pieces, seqs)):
        n = s.numel() - 1
        input_ids[b, :n] = s[:-1]
        target_ids[b, :n] = s[1:]
        attention_mask[b, :n] = 1
        P = responses[p.index].prompt_ids.numel()
        lo, hi = P - 1 + p.start, P - 1 + p.end  # target positions of response tokens [start, end)
        loss_mask[b, lo:hi] = True
        advantages[b, lo:hi] = responses[p.index].advantage
        for name, vals in lp.items():
            if vals is not None and vals[b] is not None:
                lp_out[name][b, lo:hi] = vals[b][p.start: p.end].to(dtype)
    position_ids = torch.arange(T).expand(B, T).clone()  # [B, T]
    return MicroBatch(input_ids=input_ids, target_ids=target_ids, attention_mask=attention_mask,
                      position_ids=position_ids, loss_mask=loss_mask, advantages=advantages,
                      old_logprobs=lp_out["old_logprobs"],
                      old_known=torch.tensor([responses[p.index].old_logprobs is not None
                                              for p in pieces]),
                      engine_logprobs=lp_out["engine_logprobs"],
                      ref_logprobs=lp_out["ref_logprobs"], normalizer=normalizer,
                      loss_agg=loss_agg, sample_index=torch.tensor([p.index for p in pieces]),
                      num_loss_tokens=int(loss_mask.sum()))


def build_rank_batch(
    responses: Sequence[Response],
    plan: StepPlan,
    rank: int,
    pad_id: int = 0,
    metrics: dict[str, float] | None = None,
) -> RolloutBatch:
    """Collate this rank's micro-batches of a `StepPlan` into a `RolloutBatch`.

    Args:
        responses: all responses of the step (the list the plan was made from).
        plan: from `split_plan`.
        rank: this data-parallel rank.
        pad_id: padding token id.
        metrics: rollout statistics to carry along for logging.
    """
    if not 0 <= rank < plan.world_size:
        raise ValueError(f"rank {rank} outside the plan's world_size {plan.world_size}")
    mbs = tuple(collate(responses, pieces, plan.normalizer, plan.loss_agg, pad_id)
                for pieces in plan.micro_batches[rank])
    return RolloutBatch(micro_batches=mbs, responses=tuple(responses), rank=rank,
                        world_size=plan.world_size, budget=plan.budget, metrics=dict(metrics or {}))


def carry_over(responses: Sequence[Response], carried: Sequence[int], max_age: int = 1
               ) -> tuple[Response, ...]:
    """The carried responses, aged by one step, to put first in the next step's response list.

    Responses whose age would exceed `max_age` are dropped (too far off-policy). They keep their
    advantage and old / engine / ref logprobs. A carried response must know its behaviour-policy
    logprobs: without trainer-computed `old_logprobs` it takes its `engine_logprobs` (the policy
    that sampled it); with neither it is an error.

    Args:
        responses: the step's responses.
        carried: `BudgetPlan.carried`.
        max_age: the oldest a response may be when it is trained on.
    """
    out = []
    for i in carried:
        r = responses[i]
        if r.age + 1 > max_age:
            continue
        old = r.old_logprobs if r.old_logprobs is not None else r.engine_logprobs
        if old is None:
            raise ValueError(f"carry_over: response {i} (prompt_id={r.prompt_id!r}) has neither "
                             "old_logprobs nor engine_logprobs; a carried response needs the "
                             "logprobs of the policy that sampled it")
        out.append(r.replace(age=r.age + 1, old_logprobs=old))
    return tuple(out)
