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
* Overlap [max_staleness=k >= 1]: a background thread (`data/rollouts/ahead.py`) samples
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
* Stages: a stage is a named mixture of sources (`stages`) plus an optional reward override
  (`stage_rewards`); `set_stage(name)` switches at run time and the stage is checkpointed.
* Held-out evaluation (`val_sources` / `test_sources`, `data/rollouts/heldout.py`): pass@1 over n
  samples and unbiased pass@k per domain, sampled by this engine, scored by the current stage's reward.
* Sampling, scoring, budgeting and the micro-batches of one step: `data/rollouts/sampler.py` (a mixin).
* The engine, its weight version, lock and sleep state: `data/rollouts/engine_slot.py`. Colocation:
  with `max_staleness=0` the engine sleeps (a no-op unless it enables it) after each rollout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from typing import Any, Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
import torch
from torch.utils.data import DataLoader

from ring_lightning.data.rollouts.stream import PromptSource, PromptStream
from ring_lightning.data.rollouts.ahead import AheadSampler
from ring_lightning.data.rollouts.engine_slot import EngineFactory, EngineSlot
from ring_lightning.data.rollouts.heldout import EvalSpec, HeldOutSets, validate_rows
from ring_lightning.data.rollouts.spec import BudgetSpec, RequestStream, RolloutRequest
from ring_lightning.data.rollouts.sampler import RolloutSteps
from ring_lightning.eval.rollout_eval import RolloutEvaluator
from ring_lightning.rewards.base import Reward
from ring_lightning.rl.batch import Response
from ring_lightning.rollout.engine import RolloutEngine, SamplingConfig

__all__ = ["BudgetSpec", "EngineFactory", "RolloutDataModule", "RolloutRequest"]


class RolloutDataModule(RolloutSteps, L.LightningDataModule):
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
        seed: seed of the prompt stream and the sampling (also the held-out sampling seed).
        val_sources: name -> `PromptSource` of the held-out validation set (same schema as
            `sources`); None = no validation. Evaluated every `trainer.val_check_interval` steps during
            `fit` (an int; with `check_val_every_n_epoch: null`) and by `validate`.
        test_sources: name -> `PromptSource` of the held-out test set (`test`); None = none.
        eval_samples_per_prompt: n, held-out samples per prompt (pass@1 = mean over the n).
        eval_k: the k values of the reported unbiased pass@k (each <= eval_samples_per_prompt).
        eval_temperature: held-out sampling temperature.
        eval_top_p: held-out nucleus sampling mass.
        eval_max_response_tokens: held-out maximum response length; None = max_response_tokens.
        eval_batch_size: held-out prompts per validation / test step on each rank.
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
        val_sources: dict[str, PromptSource] | None = None,
        test_sources: dict[str, PromptSource] | None = None,
        eval_samples_per_prompt: int = 4,
        eval_k: Sequence[int] = (1, 4),
        eval_temperature: float = 1.0,
        eval_top_p: float = 1.0,
        eval_max_response_tokens: int | None = None,
        eval_batch_size: int = 16,
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
        self.slot = EngineSlot(engine)
        self.reward = reward
        self.stage_rewards = dict(stage_rewards or {})
        self.prompts_per_step, self.samples_per_prompt = prompts_per_step, samples_per_prompt
        self.sampling = SamplingConfig(temperature=temperature, top_p=top_p, max_tokens=max_response_tokens)
        self.max_prompt_tokens = max_prompt_tokens
        self.advantage_scale, self.advantage_baseline = advantage_scale, advantage_baseline
        self.refill_prompts = refill_prompts or prompts_per_step
        self.max_refill_rounds, self.max_staleness, self.seed = max_refill_rounds, max_staleness, seed
        self.stream: PromptStream | None = None
        self._pending_state: dict[str, Any] | None = None
        self._carried: tuple[Response, ...] = ()
        self._tokens: dict[tuple[str, str], torch.Tensor] = {}
        self._groups = 0
        self._lock = self.slot.lock  # engine + stream
        self._ahead: AheadSampler | None = None  # max_staleness >= 1
        self._bound = False
        self.heldout = HeldOutSets({"val": val_sources, "test": test_sources}, EvalSpec(
            samples_per_prompt=eval_samples_per_prompt, k=tuple(int(k) for k in eval_k),
            temperature=eval_temperature, top_p=eval_top_p, batch_size=eval_batch_size, seed=seed,
            max_tokens=eval_max_response_tokens if eval_max_response_tokens is not None else max_response_tokens))

    # ------------------------------------------------------------------ data
    def setup(self, stage: str | None = None) -> None:
        """Load and validate the sources `stage` needs (rows the reward router cannot score fail here):
        training sources + val set for "fit" (or None), the val set for "validate", the test set for
        "test" (and for None)."""
        if stage in (None, "fit", "validate"):
            self.heldout.load("val", self.eval_reward(), self.stage)
        if stage in (None, "test"):
            self.heldout.load("test", self.eval_reward(), self.stage)
        if self.stream is not None or stage not in (None, "fit"):
            return
        rows = {name: src.load(name) for name, src in self.sources.items()}
        for sname, mix in self.stages.items():
            router = self.stage_rewards.get(sname, self.reward)
            for src in (k for k, w in mix.items() if w > 0 and k in rows):
                validate_rows(rows[src], self.sources[src], src, f"stage {sname!r}", router)
        unknown = sorted(set(self.stage_rewards) - set(self.stages))
        if unknown:
            raise ValueError(f"stage_rewards names unknown stages {unknown}; stages: {sorted(self.stages)}")
        self.stream = PromptStream(rows, self.stages, self.initial_stage, seed=self.seed)
        train = [r for rs in rows.values() for r in rs]
        for split in ("val", "test"):
            if shared := self.heldout.overlap(split, train):
                rank_zero_warn(f"{len(shared)} of the {len(self.heldout.rows[split])} {split}_sources prompts are also "
                               f"training prompts (e.g. {shared[:3]}): they are not held out; change the held-out "
                               "sources (other files, or built-in task settings that produce other prompts)")
        if self._pending_state is not None:
            self.load_state_dict(self._pending_state)

    def train_dataloader(self) -> DataLoader:
        """One `RolloutRequest` per optimizer step (infinite; bound the run with max_steps)."""
        return DataLoader(RequestStream(), batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader | list:
        """Batches of held-out `val_sources` rows ([] = no validation when none are configured)."""
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list:
        """Batches of held-out `test_sources` rows."""
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader | list:
        self.heldout.load(split, self.eval_reward(), self.stage)
        fn = self.trainer.state.fn if self.trainer is not None else None
        return self.heldout.dataloader(split, None if fn is None else str(fn.value))

    def make_evaluator(self) -> RolloutEvaluator:
        """A fresh `RolloutEvaluator` with the `eval_*` settings (one per validation / test epoch)."""
        return self.heldout.evaluator()

    def eval_reward(self) -> Reward | None:
        """The reward that scores held-out samples: the current stage's (as in training)."""
        return self.stage_rewards.get(self.stage, self.reward)

    def set_stage(self, name: str) -> None:
        """Switch the prompt mixture and reward (e.g. from a stage-transition callback)."""
        if self.stream is None:
            raise RuntimeError("set_stage before setup(): call trainer.fit or datamodule.setup first")
        self._stop_worker()  # batches sampled ahead belong to the old stage: discarded
        with self._lock:
            self.stream.set_stage(name)

    @property
    def stage(self) -> str:
        if self.stream is not None:
            return self.stream.stage
        return (self._pending_state or {}).get("stage", self.initial_stage)

    @property
    def bound(self) -> bool:
        """An engine is built and attached to a policy (`bind`)."""
        return self._bound and self.slot.engine is not None

    @property
    def engine(self) -> RolloutEngine | None:
        return self.slot.engine

    @property
    def weight_version(self) -> int:
        """The optimizer step whose weights the engine holds."""
        return self.slot.version

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
        if self.slot.build(policy, tokenizer):
            weights = None  # an engine built from `policy` already holds its weights
        if self.max_staleness and getattr(self.slot.engine, "shares_trainer_model", False):
            raise ValueError(
                f"max_staleness={self.max_staleness} samples in a background thread while the trainer updates its "
                f"weights, but {type(self.slot.engine).__name__} generates with the trainer's own model; give it a "
                "private copy (HFEngine init_args: copy_model: true), use VLLMEngine, or set max_staleness: 0")
        if weights is not None:
            self.slot.sync(weights, version)
        self.slot.version = version
        self._bound = True

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Load new policy weights into the engine (waits for an in-flight background generation)."""
        self.slot.sync(named_tensors, version)

    def keep_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> bool:
        """The policy did not change (a skipped optimizer step): no weight transfer unless the engine's
        sleep discarded its weights (`EngineSlot.keep`). Returns whether it synced."""
        return self.slot.keep(named_tensors)

    @contextmanager
    def exclusive_engine(self) -> Iterator[RolloutEngine]:
        """The (awake) engine, for direct use (a parity probe, held-out evaluation) while no background
        generation runs."""
        with self.slot.exclusive() as engine:
            yield engine

    def teardown(self, stage: str | None = None) -> None:
        self._stop_worker()
        self.slot.close()
        self._bound = False

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

