"""One optimizer step's rollout data on this rank: draw prompts, generate K each (on-policy, or ahead
in a background thread), score, let the objective plan the step's tokens (refilling when short),
carry unused responses and build the micro-batches. `RolloutSampler` is built by
`RolloutDataModule.bind` (data/rollouts/datamodule.py states the paper basis and our choices).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn

from ring_lightning.data.rollouts import stats
from ring_lightning.data.rollouts.ahead import AheadSampler
from ring_lightning.data.rollouts.engine_slot import EngineSlot
from ring_lightning.data.rollouts.scoring import check_completions, scored_responses
from ring_lightning.data.rollouts.spec import Sampled
from ring_lightning.data.rollouts.stream import PromptStream
from ring_lightning.data.rollouts.updates import PendingUpdate, merged_plan, pending_updates, plan_updates
from ring_lightning.rewards.base import Reward
from ring_lightning.rl.batch import Response, RolloutBatch, build_rank_batch, carry_over, collate
from ring_lightning.rl.budget import BudgetPlan, split_plan
from ring_lightning.rl.objectives.base import Objective
from ring_lightning.rollout.engine import EngineError, SamplingConfig
from ring_lightning.rows import PromptRow

__all__ = ["RolloutSampler", "SamplerKnobs", "SamplerState"]


@dataclass(frozen=True)
class SamplerKnobs:
    """The data module's sampling knobs (see `RolloutDataModule`'s Args)."""

    prompts_per_step: int
    samples_per_prompt: int
    refill_prompts: int
    max_refill_rounds: int
    max_staleness: int
    max_prompt_tokens: int
    seed: int
    sampling: SamplingConfig
    advantage_scale: Literal["std", "none"] = "std"
    advantage_baseline: Literal["mean", "leave_one_out"] = "mean"
    min_used_token_fraction: float = 0.5
    updates_per_rollout: int = 1


@dataclass
class SamplerState:
    """What outlives one step. Checkpointed by the data module: groups drawn so far (the group id of
    the next prompt), the responses carried into the next step and the current rollout's later
    updates (`updates.py`). Not checkpointed: the prompt-token cache and whether the low-use warning
    was given."""

    groups: int = 0
    carried: tuple[Response, ...] = ()
    pending: tuple[PendingUpdate, ...] = ()
    tokens: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)  # prompt-token cache
    warned_low_use: bool = False


class RolloutSampler:
    """`next_rollout()`: this rank's `RolloutBatch` for one optimizer step (collective over ranks).

    Args:
        knobs: sampling knobs; stream: the prompt mixture; slot: the engine; rewards: stage -> reward;
        objective: plans the step's tokens; micro_batch_tokens: micro-batch cap; tokenizer: the
        policy's; rank / world_size: data parallelism; logprob_fn: trainer π_old of carried
        responses (collective); device: of the collectives; state: groups and carried responses.
    """

    def __init__(self, knobs: SamplerKnobs, stream: PromptStream, slot: EngineSlot, rewards: Callable[[str], Reward],
                 objective: Objective, *, micro_batch_tokens: int | None, tokenizer: Any, rank: int, world_size: int,
                 logprob_fn: Callable[[Sequence[Response]], list[torch.Tensor]] | None,
                 device: torch.device | str, state: SamplerState, lock: threading.Lock) -> None:
        self.knobs, self.stream, self.slot, self.rewards, self.objective = knobs, stream, slot, rewards, objective
        self.micro_batch_tokens, self.tokenizer = micro_batch_tokens, tokenizer
        self.rank, self.world_size, self.logprob_fn, self.device = rank, world_size, logprob_fn, device
        self.state, self.lock = state, lock
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.ahead: AheadSampler | None = None  # max_staleness >= 1

    # -------------------------------------------------------------- sampling
    def prompt_tokens(self, row: PromptRow) -> torch.Tensor:
        key = (row.id, row.prompt_text)
        ids = self.state.tokens.get(key)
        if ids is None:
            out = self.tokenizer.apply_chat_template(list(row.messages), add_generation_prompt=True,
                                                     tokenize=True, return_dict=False)
            if len(out) > self.knobs.max_prompt_tokens:
                raise ValueError(f"prompt {row.id!r} ({row.domain}) has {len(out)} tokens > max_prompt_tokens="
                                 f"{self.knobs.max_prompt_tokens}; filter long prompts or raise the limit")
            self.state.tokens[key] = ids = torch.tensor(out, dtype=torch.long)
        return ids

    def sample(self, n_global: int, on_draw: Callable[[dict[str, Any]], None] | None = None) -> Sampled:
        """Draw `n_global` prompts from the stream, keep this rank's slice, generate K each, score.

        `on_draw` receives the stream position before the draw (see `AheadSampler`)."""
        k = self.knobs
        with self.lock:
            state = self.stream.state_dict()
            if on_draw is not None:
                on_draw(state)
            per = n_global // self.world_size
            rows = self.stream.draw(n_global)[self.rank * per:(self.rank + 1) * per]
            prompts = [self.prompt_tokens(r) for r in rows]
            sampling = replace(k.sampling, seed=(k.seed * 1_000_003 + self.stream.draws * 131 + self.rank) % 2**31)
            version, t0 = self.slot.version, time.perf_counter()
            self.slot.wake()
            try:
                comps = self.slot.engine.generate([p.tolist() for p in prompts], k.samples_per_prompt, sampling)
            except EngineError as e:
                raise EngineError(f"{type(self.slot.engine).__name__} failed while sampling the rollouts of RL step "
                                  f"{version + 1} (stage {self.stream.stage!r}): {e}") from e
            t1 = time.perf_counter()
            reward, first_group = self.rewards(self.stream.stage), self.state.groups
            self.state.groups += len(rows)
        check_completions(comps, len(rows), k.samples_per_prompt, type(self.slot.engine).__name__)
        results = reward([r for r, cs in zip(rows, comps) for _ in cs], [c.text for cs in comps for c in cs])
        t2 = time.perf_counter()
        errors = sum(1 for r in results if r.info.get("reward_error"))
        responses = scored_responses(rows, prompts, comps, results, first_group, scale=k.advantage_scale,
                                     baseline=k.advantage_baseline)
        return Sampled(responses, version, len(rows), errors, t1 - t0, t2 - t1, state)

    def next_sampled(self) -> Sampled:
        """The next round: sampled now, or the oldest of those sampled ahead."""
        if not self.knobs.max_staleness:
            return self.sample(self.knobs.prompts_per_step)
        if self.ahead is None:
            self.ahead = AheadSampler(lambda on_draw: self.sample(self.knobs.prompts_per_step, on_draw),
                                      self.knobs.max_staleness)
        return self.ahead.next()

    def stop(self) -> None:
        """Stop the background sampler (its queued rounds are discarded)."""
        if self.ahead is not None:
            self.ahead.stop()
            self.ahead = None

    # ------------------------------------------------------------------ step
    def next_rollout(self) -> RolloutBatch:
        """Sample, score and plan one optimizer step's data for this rank (collective); with
        `updates_per_rollout` > 1 the later updates of a rollout come from `state.pending` first."""
        if self.state.pending:
            update, self.state.pending = self.state.pending[0], self.state.pending[1:]
            batch, budget = self._rank_batch(list(update.responses), update.plan)
            return replace(batch, budget=budget, metrics=dict(update.metrics))
        sums, maxes = stats.empty_stats()
        n_carried_in = len(self.state.carried)
        responses, plans, sampled = self._plan_step(sums, maxes)
        plans = [self.objective.finalize(p, lambda x: stats.all_reduce_sum_float(x, self.device), self.world_size)
                 for p in plans]
        plan = plans[0]
        self.state.carried = self._carry([responses[i] for i in plan.carried])
        rollout_plan = merged_plan(plans, responses) if len(plans) > 1 else plan
        stats.count_plan(sums, rollout_plan, responses, n_carried_in, len(self.state.carried))
        batch, budget = self._rank_batch(responses, plan)
        if not self.knobs.max_staleness:  # free the engine's accelerator memory while the trainer runs
            self.slot.sleep()
        sums, maxes = stats.all_reduce_stats(sums, maxes, self.device)
        metrics = stats.finalize(sums, maxes)
        metrics["rollout/weight_version"] = float(min(s.version for s in sampled))
        self._warn_low_use(metrics["budget/used_token_fraction"])
        if len(plans) > 1:
            metrics["rollout/update"] = 0.0
            self.state.pending = pending_updates(plans, responses, metrics, self._sampling_logprobs)
        return replace(batch, budget=budget, metrics=metrics)

    def _rank_batch(self, responses: list[Response], plan: BudgetPlan) -> tuple[RolloutBatch, int]:
        """This rank's micro-batches of `plan` (padded to every rank's count) and the plan's tokens
        over all ranks (collectives)."""
        step_plan = split_plan(plan, 1, [r.prompt_ids.numel() for r in responses], self.micro_batch_tokens)
        batch = build_rank_batch(responses, step_plan, 0, pad_id=self.pad_id)
        n_micro = stats.all_reduce_max_int(len(batch.micro_batches), self.device)
        pad = tuple(collate(responses, [], step_plan.normalizer, step_plan.loss_agg, self.pad_id)
                    for _ in range(n_micro - len(batch.micro_batches)))
        budget = int(round(stats.all_reduce_sum_float(plan.n_tokens, self.device)))
        return replace(batch, micro_batches=batch.micro_batches + pad, rank=self.rank,
                       world_size=self.world_size), budget

    def _sampling_logprobs(self, responses: Sequence[Response]) -> list[torch.Tensor]:
        """π_old of a rollout's later updates: the trainer's logprobs now, before update 1 (collective),
        or, without a trainer hook, the engine's."""
        if self.logprob_fn is not None:
            return self.logprob_fn(responses)
        if any(r.engine_logprobs is None for r in responses):
            raise ValueError("updates_per_rollout > 1 needs the sampling policy's logprobs of every response: "
                             "bind the data module with a logprob_fn (RLModule does) or use an engine that "
                             "returns logprobs")
        return [r.engine_logprobs for r in responses]

    def _warn_low_use(self, used: float) -> None:
        floor = self.knobs.min_used_token_fraction
        if used < floor and not self.state.warned_low_use:
            self.state.warned_low_use = True
            rank_zero_warn(f"this RL step trained on {used:.1%} of the tokens it sampled (< min_used_token_fraction="
                           f"{floor}): most of the rollout is budgeted away. Raise the objective's token_budget, "
                           "or lower the data module's prompts_per_step / samples_per_prompt / max_response_tokens")

    def _plan_step(self, sums: dict[str, float], maxes: dict[str, float]
                   ) -> tuple[list[Response], list[BudgetPlan], list[Sampled]]:
        """Sample until every rank's plans are complete (refill rounds); the responses and the plans
        (one per update of the rollout)."""
        carried, fresh, rounds = list(self.state.carried), [], 0
        sampled = [self.next_sampled()]
        while True:
            s = sampled[-1]
            stale = self.slot.version - s.version
            maxes["staleness_max"] = max(maxes["staleness_max"], stale)
            rs = s.responses if stale == 0 else [r.replace(age=stale, old_logprobs=r.engine_logprobs)
                                                 for r in s.responses]
            fresh.extend(rs)
            stats.count_responses(sums, maxes, rs, s.n_prompts, s.errors)
            maxes["time_rollout"] += s.t_rollout
            maxes["time_reward"] += s.t_reward
            responses = carried + fresh
            plans = plan_updates(self.objective, responses, n_updates=self.knobs.updates_per_rollout,
                                 n_carried=len(carried), world_size=self.world_size,
                                 seed=self.knobs.seed + self.stream.draws)
            short = len(plans) < self.knobs.updates_per_rollout or plans[-1] is None or plans[-1].need_more
            if not stats.all_reduce_max_int(int(short), self.device):
                maxes["refill_rounds"] = rounds
                return responses, plans, sampled
            rounds += 1
            if rounds > self.knobs.max_refill_rounds:
                self._raise_short(responses, plans)
            sampled.append(self.sample(self.knobs.refill_prompts))

    def _raise_short(self, responses: Sequence[Response], plans: list[BudgetPlan | None]) -> None:
        have = sum(r.length for r in responses if r.valid)
        n = self.knobs.updates_per_rollout
        need = plans[-1].budget if plans[-1] is not None else "some"
        per = f" for update {len(plans)} of the rollout's updates_per_rollout={n}" if n > 1 else ""
        raise RuntimeError(
            f"step short of its token budget after {self.knobs.max_refill_rounds} extra sampling rounds "
            f"(rank {self.rank} has {have} eligible tokens, needs {need}{per}); raise prompts_per_step / "
            "max_refill_rounds or lower the objective's token_budget"
            + (" or updates_per_rollout (an objective that trains every response, like GRPO, leaves nothing "
               "for a second update)" if n > 1 else ""))

    def _carry(self, todo: list[Response]) -> tuple[Response, ...]:
        """Responses for the next step, with trainer π_old logprobs (a collective on every rank)."""
        age = self.objective.carry_age
        if age and self.logprob_fn is not None:
            lps = iter(self.logprob_fn([r for r in todo if r.old_logprobs is None]))
            todo = [r if r.old_logprobs is not None else r.replace(old_logprobs=next(lps)) for r in todo]
        return carry_over(todo, range(len(todo)), age) if todo and age else ()
