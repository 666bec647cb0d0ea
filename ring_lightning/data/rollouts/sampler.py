"""One optimizer step's rollout data: sample (on-policy, or ahead in a background thread), score,
apply the token budget and build this rank's micro-batches. A mixin of `RolloutDataModule`
(`data/rollouts/datamodule.py`), whose module docstring states the paper basis (Ring-lite, arXiv 2506.14731,
§3.1–3.2, Eq. 1–6: K samples per prompt, group-normalised advantages, C3PO's greedy fill of exactly
Φ tokens with the last response truncated) and the choices where the report is silent (on-policy
timing, overlap, Φ per rank, refill rounds, carry-over).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from ring_lightning.data.rollouts import stats
from ring_lightning.rows import PromptRow
from ring_lightning.data.rollouts.ahead import AheadSampler
from ring_lightning.data.rollouts.spec import Sampled
from ring_lightning.data.rollouts.scoring import check_completions, scored_responses
from ring_lightning.rewards.base import Reward
from ring_lightning.rl.batch import Response, RolloutBatch, build_rank_batch, carry_over, collate
from ring_lightning.rl.budget import BudgetPlan, select_all, select_budget, split_plan
from ring_lightning.rollout.engine import EngineError

__all__ = ["RolloutSteps"]


class RolloutSteps:
    """`next_rollout` and its sampling helpers. Uses the data module's state: `stream`, `slot` /
    `engine` / `weight_version`, `sampling`, `budget`, `rank` / `world_size`, `reward` /
    `stage_rewards`, `prompts_per_step`, `samples_per_prompt`, `refill_prompts`,
    `max_refill_rounds`, `max_staleness`, `seed`, `logprob_fn`, `device`, `pad_id` and the private
    `_lock`, `_tokens`, `_groups`, `_carried`, `_ahead`, `_bound`.
    """

    # -------------------------------------------------------------- sampling
    def _prompt_tokens(self, row: PromptRow) -> torch.Tensor:
        key = (row.id, row.prompt_text)
        ids = self._tokens.get(key)
        if ids is None:
            out = self.tokenizer.apply_chat_template(list(row.messages), add_generation_prompt=True,
                                                     tokenize=True, return_dict=False)
            if len(out) > self.max_prompt_tokens:
                raise ValueError(f"prompt {row.id!r} ({row.domain}) has {len(out)} tokens > max_prompt_tokens="
                                 f"{self.max_prompt_tokens}; filter long prompts or raise the limit")
            self._tokens[key] = ids = torch.tensor(out, dtype=torch.long)
        return ids

    def _reward_fn(self) -> Reward:
        return self.stage_rewards.get(self.stream.stage, self.reward)

    def _sample(self, n_global: int, on_draw: Callable[[dict[str, Any]], None] | None = None) -> Sampled:
        """Draw `n_global` prompts from the stream, keep this rank's slice, generate K each, score.

        `on_draw` receives the stream position before the draw (see `AheadSampler`)."""
        with self._lock:
            state = self.stream.state_dict()
            if on_draw is not None:
                on_draw(state)
            rows = self.stream.draw(n_global)
            per = n_global // self.world_size
            rows = rows[self.rank * per:(self.rank + 1) * per]
            prompts = [self._prompt_tokens(r) for r in rows]
            sampling = replace(self.sampling, seed=(self.seed * 1_000_003 + self.stream.draws * 131 + self.rank) % 2**31)
            version, t0 = self.weight_version, time.perf_counter()
            self.slot.wake()
            try:
                comps = self.engine.generate([p.tolist() for p in prompts], self.samples_per_prompt, sampling)
            except EngineError as e:
                raise EngineError(f"{type(self.engine).__name__} failed while sampling the rollouts of RL step "
                                  f"{version + 1} (stage {self.stream.stage!r}): {e}") from e
            t1 = time.perf_counter()
            reward, first_group = self._reward_fn(), self._groups
            self._groups += len(rows)
        check_completions(comps, len(rows), self.samples_per_prompt, type(self.engine).__name__)
        results = reward([r for r, cs in zip(rows, comps) for _ in cs], [c.text for cs in comps for c in cs])
        t2 = time.perf_counter()
        errors = sum(1 for r in results if r.info.get("reward_error"))
        responses = scored_responses(rows, prompts, comps, results, first_group, scale=self.advantage_scale,
                                     baseline=self.advantage_baseline)
        return Sampled(responses, version, len(rows), errors, t1 - t0, t2 - t1, state)

    # ------------------------------------------------------------ background
    def _next_sampled(self) -> Sampled:
        if not self.max_staleness:
            return self._sample(self.prompts_per_step)
        if self._ahead is None:
            self._ahead = AheadSampler(lambda on_draw: self._sample(self.prompts_per_step, on_draw),
                                       self.max_staleness)
        return self._ahead.next()

    def _stop_worker(self) -> None:
        if self._ahead is not None:
            self._ahead.stop()
            self._ahead = None

    # ------------------------------------------------------------------ step
    def next_rollout(self) -> RolloutBatch:
        """Sample, score and budget one optimizer step's data for this rank (collective)."""
        if not self._bound:
            raise RuntimeError("RolloutDataModule.next_rollout before bind(): the LightningModule must "
                               "hand over its policy (C3POModule does this in on_train_start)")
        if self.stream is None:
            self.setup("fit")
        sums, maxes = stats.empty_stats()
        carried, fresh, rounds = list(self._carried), [], 0
        sampled = [self._next_sampled()]
        while True:
            s = sampled[-1]
            stale = self.weight_version - s.version
            maxes["staleness_max"] = max(maxes["staleness_max"], stale)
            rs = s.responses if stale == 0 else [
                r.replace(age=stale, old_logprobs=r.engine_logprobs) for r in s.responses]
            fresh.extend(rs)
            stats.count_responses(sums, maxes, rs, s.n_prompts, s.errors)
            maxes["time_rollout"] += s.t_rollout
            maxes["time_reward"] += s.t_reward
            responses = carried + fresh
            lengths, eligible = [r.length for r in responses], [r.valid for r in responses]
            plan = self._select(lengths, eligible, len(carried))
            if not stats.all_reduce_max_int(int(plan is None or plan.need_more), self.device):
                break
            rounds += 1
            if rounds > self.max_refill_rounds:
                have = sum(n for n, e in zip(lengths, eligible) if e)
                raise RuntimeError(
                    f"step short of its token budget after {self.max_refill_rounds} extra sampling rounds "
                    f"(rank {self.rank} has {have} eligible tokens, needs {self.budget.token_budget // self.world_size}); "
                    "raise prompts_per_step / max_refill_rounds or lower the model's token_budget")
            sampled.append(self._sample(self.refill_prompts))
        maxes["refill_rounds"] = rounds
        if plan.loss_agg == "seq_mean_token_mean":  # GRPO: global number of sequences
            n_seq = stats.all_reduce_sum_float(len(plan.pieces), self.device)
            plan = replace(plan, normalizer=n_seq / self.world_size)
        self._carried = self._carry([responses[i] for i in plan.carried])
        stats.count_plan(sums, plan, lengths, len(self._carried))
        step_plan = split_plan(plan, 1, [r.prompt_ids.numel() for r in responses], self.budget.micro_batch_tokens)
        batch = build_rank_batch(responses, step_plan, 0, pad_id=self.pad_id)
        n_micro = stats.all_reduce_max_int(len(batch.micro_batches), self.device)
        pad = tuple(collate(responses, [], step_plan.normalizer, step_plan.loss_agg, self.pad_id)
                    for _ in range(n_micro - len(batch.micro_batches)))
        if not self.max_staleness:  # free the engine's accelerator memory while the trainer runs
            self.slot.sleep()
        sums, maxes = stats.all_reduce_stats(sums, maxes, self.device)
        metrics = stats.finalize(sums, maxes)
        metrics["rollout/weight_version"] = float(min(s.version for s in sampled))
        return replace(batch, micro_batches=batch.micro_batches + pad, rank=self.rank,
                       world_size=self.world_size, budget=self.budget.token_budget if plan.loss_agg != "seq_mean_token_mean"
                       else int(sums["loss_tokens"]), metrics=metrics)

    def _select(self, lengths: list[int], eligible: list[bool], n_carried: int) -> BudgetPlan | None:
        """This rank's plan (Φ/W tokens, or every response in GRPO mode); None = nothing eligible."""
        if self.budget.mode == "c3po":
            return select_budget(lengths, self.budget.token_budget // self.world_size, order=self.budget.fill_order,
                                 seed=self.seed + self.stream.draws, overflow=self.budget.overflow,
                                 eligible=eligible, n_carried_in=n_carried)
        if not any(e and n > 0 for e, n in zip(eligible, lengths)):
            return None
        return select_all(lengths, eligible=eligible)

    def _carry(self, todo: list[Response]) -> tuple[Response, ...]:
        """Responses for the next step, with trainer π_old logprobs (a collective on every rank)."""
        if self.budget.overflow == "carry" and self.logprob_fn is not None:
            lps = iter(self.logprob_fn([r for r in todo if r.old_logprobs is None]))
            todo = [r if r.old_logprobs is not None else r.replace(old_logprobs=next(lps)) for r in todo]
        return carry_over(todo, range(len(todo)), self.budget.max_carry_age) if todo else ()
