"""RolloutDataModule: prompts -> on-policy samples -> rewards -> advantages -> C3PO token budget ->
token-budgeted micro-batches, one optimizer step at a time.

What the Ring-lite report says (arXiv 2506.14731, §3.1–3.2, Eq. 1–6): each RL step samples K
responses for each of L prompts (L=512, K=16), scores them with verifiable rewards, normalises the
rewards within each prompt's group (GRPO advantage), and — C3PO — selects responses greedily until
exactly Φ training tokens (Φ=409,600) are reached, the last response truncated at token level; the
truncation happens after the advantages are computed.

Where the report is silent or ambiguous, what we chose (knobs in brackets):

* On-policy timing. Lightning's data fetcher pulls the next batch one step early, so nothing is
  generated inside the DataLoader: it yields a `RolloutRequest` ticket per step, and
  `C3POModule.training_step` calls `next_rollout()` *after* the previous step's weight sync. Step t
  (1-based) is therefore sampled by the weights of update t−1 [max_staleness=0].
* Overlap [max_staleness=k >= 1]: a background thread (`data/rollout_ahead.py`) samples
  (generation + rewards) up to k batches ahead with the weights current at that time; a weight sync
  waits for an in-flight generation, so a batch used at step t was sampled with weights at most k
  updates old. Stale responses train with their engine logprobs as π_old (the behaviour policy;
  `age` = staleness; add `tis_cap` / `icepop_range` on the module to bound the correction). A
  stage switch discards the batches sampled ahead. On resume the queued / in-flight prompts are
  drawn again (none is skipped). `time/rollout` then counts background time; `time/produce` is
  what the step waited.
* Data parallelism. Φ is global per optimizer step. All ranks draw the same global stream of L
  prompts per step (`PromptStream`) and rank r keeps prompts [r·L/W, (r+1)·L/W): each rank samples
  its own prompts, groups never span ranks, and each rank applies the budget Φ/W to its own
  responses. Its summed token loss is divided by Φ/W, and the strategy's gradient *average* over W
  ranks makes that the gradient of (sum over all Φ tokens) / Φ. In GRPO mode the sequence count is
  all-reduced so the normaliser is global too.
* Too few tokens. When a rank has fewer than Φ/W eligible tokens, every rank samples another
  `refill_prompts` prompts from the stream (all ranks together, so the stream stays identical)
  and selects again [max_refill_rounds]; still short is an error that says what to change.
* Carry-over [BudgetSpec.overflow="carry"]: unused whole responses go first into the next step with
  their π_old logprobs computed by the trainer before this step's update (`logprob_fn`).
* Colocation: with `max_staleness=0` the engine is put to sleep (`RolloutEngine.sleep`, a no-op
  unless the engine enables it) after each rollout and woken for the next weight sync.
* Stages: a stage is a named mixture of sources (`stages`) plus an optional reward override
  (`stage_rewards`); `set_stage(name)` switches at run time and the stage is checkpointed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader

from ring_lightning.data import rollout_stats as stats
from ring_lightning.data.prompt_stream import PromptSource, PromptStream
from ring_lightning.data.rollout_ahead import AheadSampler
from ring_lightning.data.rollout_spec import BudgetSpec, RequestStream, RolloutRequest
from ring_lightning.data.scored_responses import check_completions, scored_responses
from ring_lightning.data.prompts import PromptRow
from ring_lightning.rewards.base import Reward
from ring_lightning.rl.batch import Response, RolloutBatch, build_rank_batch, carry_over, collate
from ring_lightning.rl.budget import BudgetPlan, select_all, select_budget, split_plan
from ring_lightning.rollout.engine import RolloutEngine, SamplingConfig

EngineFactory = Callable[[Any, Any], RolloutEngine]  # (policy, tokenizer) -> engine
__all__ = ["BudgetSpec", "EngineFactory", "RolloutDataModule", "RolloutRequest"]


@dataclass
class _Sampled:
    responses: list[Response]
    version: int
    n_prompts: int
    errors: int
    t_rollout: float
    t_reward: float
    stream_state: dict[str, Any]


class RolloutDataModule(L.LightningDataModule):
    """Prompt sources + rollout engine + reward router -> one `RolloutBatch` per optimizer step.

    Args:
        sources: name -> `PromptSource` (a prompt file or a built-in task).
        stages: stage name -> {source name: weight}. Default: one stage "default" mixing all
            sources with weight 1.
        stage: the starting stage (default: the first one).
        engine: the rollout engine: a factory `(policy, tokenizer) -> RolloutEngine` (give it by
            `class_path` / `init_args`, e.g. `ring_lightning.rollout.vllm_engine.VLLMEngine`), or an
            engine instance. Built lazily in `bind` from the module's policy.
        reward: the reward router scoring every stage (`rewards/router.py`).
        stage_rewards: stage name -> a reward router overriding `reward` in that stage.
        prompts_per_step: L, prompts per optimizer step over all ranks (divisible by the ranks).
        samples_per_prompt: K, responses per prompt (the GRPO group size).
        temperature: sampling temperature.
        top_p: nucleus sampling mass.
        max_response_tokens: the maximum response length in tokens.
        max_prompt_tokens: longer prompts are an error naming the row (filter the data first).
        advantage_scale: "std" (GRPO) or "none" (Dr. GRPO), see `rl/advantages.py`.
        advantage_baseline: "mean" or "leave_one_out".
        refill_prompts: prompts per extra sampling round when a step is short of Φ (default L).
        max_refill_rounds: extra rounds allowed per step before it is an error.
        max_staleness: 0 = strictly on-policy; k >= 1 = sample up to k steps ahead in a
            background thread (see module docstring).
        seed: seed of the prompt stream and the sampling.
    """

    def __init__(
        self,
        sources: dict[str, PromptSource],
        stages: dict[str, dict[str, float]] | None = None,
        stage: str | None = None,
        engine: EngineFactory | None = None,
        reward: Reward | None = None,
        stage_rewards: dict[str, Reward] | None = None,
        prompts_per_step: int = 512,
        samples_per_prompt: int = 16,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_response_tokens: int = 24_576,
        max_prompt_tokens: int = 4096,
        advantage_scale: Literal["std", "none"] = "std",
        advantage_baseline: Literal["mean", "leave_one_out"] = "mean",
        refill_prompts: int | None = None,
        max_refill_rounds: int = 4,
        max_staleness: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if prompts_per_step < 1 or samples_per_prompt < 1:
            raise ValueError(f"prompts_per_step and samples_per_prompt must be >= 1, got "
                             f"{prompts_per_step}, {samples_per_prompt}")
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        self.sources = {k: (v if isinstance(v, PromptSource) else PromptSource(**v)) for k, v in sources.items()}
        self.stages = stages or {"default": dict.fromkeys(self.sources, 1.0)}
        self.initial_stage = stage or next(iter(self.stages))
        self.engine_factory = engine
        self.reward = reward
        self.stage_rewards = dict(stage_rewards or {})
        self.prompts_per_step, self.samples_per_prompt = prompts_per_step, samples_per_prompt
        self.sampling = SamplingConfig(temperature=temperature, top_p=top_p, max_tokens=max_response_tokens)
        self.max_prompt_tokens = max_prompt_tokens
        self.advantage_scale, self.advantage_baseline = advantage_scale, advantage_baseline
        self.refill_prompts = refill_prompts or prompts_per_step
        self.max_refill_rounds, self.max_staleness, self.seed = max_refill_rounds, max_staleness, seed
        self.stream: PromptStream | None = None
        self.engine: RolloutEngine | None = None
        self.weight_version = 0
        self._pending_state: dict[str, Any] | None = None
        self._carried: tuple[Response, ...] = ()
        self._tokens: dict[tuple[str, str], torch.Tensor] = {}
        self._groups = 0
        self._lock = threading.Lock()  # engine + stream
        self._ahead: AheadSampler | None = None  # max_staleness >= 1
        self._bound = False
        self._owns_engine = False

    # ------------------------------------------------------------------ data
    def setup(self, stage: str | None = None) -> None:
        """Load and validate every source (rows the reward router cannot score fail here)."""
        if self.stream is not None:
            return
        rows = {name: src.load(name) for name, src in self.sources.items()}
        for sname, mix in self.stages.items():
            router = self.stage_rewards.get(sname, self.reward)
            validate = getattr(router, "validate", None)
            if validate is None:
                continue
            for src in (k for k, w in mix.items() if w > 0 and k in rows):
                where = self.sources[src].path or f"built-in task {self.sources[src].task!r}"
                for i, row in enumerate(rows[src]):
                    validate(row, f"{where} row {i} (source {src!r}, stage {sname!r})")
        unknown = sorted(set(self.stage_rewards) - set(self.stages))
        if unknown:
            raise ValueError(f"stage_rewards names unknown stages {unknown}; stages: {sorted(self.stages)}")
        self.stream = PromptStream(rows, self.stages, self.initial_stage, seed=self.seed)
        if self._pending_state is not None:
            self.load_state_dict(self._pending_state)

    def train_dataloader(self) -> DataLoader:
        """One `RolloutRequest` per optimizer step (infinite; bound the run with max_steps)."""
        return DataLoader(RequestStream(), batch_size=None, num_workers=0)

    def set_stage(self, name: str) -> None:
        """Switch the prompt mixture and reward (e.g. from a stage-transition callback)."""
        if self.stream is None:
            raise RuntimeError("set_stage before setup(): call trainer.fit or datamodule.setup first")
        self._stop_worker()  # batches sampled ahead belong to the old stage: discarded
        with self._lock:
            self.stream.set_stage(name)

    @property
    def stage(self) -> str:
        return self.stream.stage if self.stream is not None else self.initial_stage

    # ---------------------------------------------------------------- engine
    def bind(self, policy: Any, tokenizer: Any, budget: BudgetSpec, *, rank: int = 0, world_size: int = 1,
             weights: Iterable[tuple[str, torch.Tensor]] | None = None, version: int = 0,
             logprob_fn: Callable[[Sequence[Response]], list[torch.Tensor]] | None = None,
             device: torch.device | str = "cpu") -> None:
        """Attach the trainer's policy: build the engine (once) and load `weights` into it.

        Args:
            policy: the trainer's policy (handed to the engine factory).
            tokenizer: its tokenizer (chat template, pad id).
            budget: how responses become loss tokens.
            rank: this data-parallel rank.
            world_size: number of data-parallel ranks.
            weights: named tensors of the policy to sync into the engine now (None = skip; also
                skipped when the engine is built here from `policy`, which already holds them).
            version: the weight version those weights are (optimizer steps taken).
            logprob_fn: trainer logprobs of responses, for carried responses' π_old (collective:
                called on every rank, possibly with an empty list).
            device: device of the collective tensors (the policy's device).
        """
        if self.stream is None:
            self.setup("fit")
        if self.prompts_per_step % world_size or self.refill_prompts % world_size:
            raise ValueError(f"prompts_per_step={self.prompts_per_step} and refill_prompts="
                             f"{self.refill_prompts} must be divisible by the {world_size} data-parallel ranks")
        if budget.mode == "c3po" and budget.token_budget % world_size:
            raise ValueError(f"token_budget={budget.token_budget} must be divisible by the {world_size} "
                             "data-parallel ranks (each rank trains on exactly Φ/W tokens)")
        if self.reward is None and not self.stage_rewards:
            raise ValueError("RolloutDataModule needs a `reward` (e.g. ring_lightning.rewards.router.RewardRouter)")
        self.tokenizer, self.budget, self.rank, self.world_size = tokenizer, budget, rank, world_size
        self.logprob_fn, self.device = logprob_fn, device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        if self.engine is None:
            if self.engine_factory is None:
                raise ValueError("RolloutDataModule needs an `engine` (class_path of a RolloutEngine, e.g. "
                                 "ring_lightning.rollout.vllm_engine.VLLMEngine)")
            f = self.engine_factory
            self._owns_engine = not isinstance(f, RolloutEngine)
            self.engine = f(policy, tokenizer) if self._owns_engine else f
            if self._owns_engine:
                weights = None  # an engine built from `policy` already holds its weights
        if weights is not None:
            self.sync_weights(weights, version)
        self.weight_version = version
        self._bound = True

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Load new policy weights into the engine (waits for an in-flight background generation)."""
        with self._lock:
            self.engine.wake()  # no-op unless the engine sleeps between rollouts
            self.engine.update_weights(named_tensors)
            self.weight_version = version

    @contextmanager
    def exclusive_engine(self) -> Iterator[RolloutEngine]:
        """The engine, for direct use (e.g. a parity probe) while no background generation runs."""
        with self._lock:
            yield self.engine

    def teardown(self, stage: str | None = None) -> None:
        self._stop_worker()
        if self.engine is not None and self._owns_engine:
            self.engine.close()  # an engine handed in as an instance belongs to the caller
        self.engine, self._bound = None, False

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

    def _sample(self, n_global: int, on_draw: Callable[[dict[str, Any]], None] | None = None) -> _Sampled:
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
            comps = self.engine.generate([p.tolist() for p in prompts], self.samples_per_prompt, sampling)
            t1 = time.perf_counter()
            reward, first_group = self._reward_fn(), self._groups
            self._groups += len(rows)
        check_completions(comps, len(rows), self.samples_per_prompt, type(self.engine).__name__)
        results = reward([r for r, cs in zip(rows, comps) for _ in cs], [c.text for cs in comps for c in cs])
        t2 = time.perf_counter()
        errors = sum(1 for r in results if r.info.get("reward_error"))
        responses = scored_responses(rows, prompts, comps, results, first_group, scale=self.advantage_scale,
                                     baseline=self.advantage_baseline)
        return _Sampled(responses, version, len(rows), errors, t1 - t0, t2 - t1, state)

    # ------------------------------------------------------------ background
    def _next_sampled(self) -> _Sampled:
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
                               "hand over its policy (C3POModule does this in on_fit_start)")
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
            with self._lock:
                self.engine.sleep()
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

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Stream position (of the oldest prompt not yet trained on), stage, carried responses."""
        if self.stream is None:
            return dict(self._pending_state or {})
        oldest = self._ahead.oldest_state() if self._ahead is not None else None
        with self._lock:
            stream = oldest or self.stream.state_dict()
        return {"stream": stream, "stage": self.stream.stage, "groups": self._groups,
                "carried": [{f.name: getattr(r, f.name) for f in fields(Response)} for r in self._carried]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.stream is None:  # restored before setup: apply once the sources are loaded
            self._pending_state = dict(state)
            return
        self._stop_worker()
        with self._lock:
            self.stream.load_state_dict(state["stream"])
            self.stream.set_stage(state["stage"])
        self._groups = int(state.get("groups", 0))
        self._carried = tuple(Response(**d) for d in state.get("carried", []))
        self._pending_state = None

