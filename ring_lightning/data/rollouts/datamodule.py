"""RolloutDataModule: prompts -> on-policy samples -> rewards -> advantages -> the objective's token plan
-> micro-batches, one optimizer step at a time.

Ring-lite (arXiv 2506.14731, §3.1–3.2): each RL step samples K responses for each of L prompts (L=512,
K=16), scores them with verifiable rewards and normalises rewards within each prompt's group; C3PO
then selects exactly Φ training tokens (the last response truncated, after the advantages).
Ours: the DataLoader yields a ticket per step and `RLModule.training_step` calls `next_rollout()`
after the previous weight sync (on-policy; `max_staleness` >= 1 samples ahead in a thread);
ranks draw the same global prompt stream and each samples its own slice; a rank short of its
budget triggers refill rounds on every rank; stages are named source mixtures (`set_stage`).
One step's sampling and planning: `sampler.py`; the engine: `engine_slot.py`; held-out sets:
`heldout.py`. The full list of choices: docs/design.md#rollouts.
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
from ring_lightning.data.rollouts.engine_slot import EngineFactory, EngineSlot
from ring_lightning.data.rollouts.heldout import EvalSpec, HeldOutSets, validate_rows
from ring_lightning.data.rollouts.spec import RequestStream, RolloutRequest
from ring_lightning.data.rollouts.sampler import RolloutSampler, SamplerKnobs, SamplerState
from ring_lightning.data.rollouts.updates import pending_from_state, pending_to_state
from ring_lightning.eval.rollout_eval import RolloutEvaluator
from ring_lightning.rewards.base import Reward
from ring_lightning.rl.batch import Response, RolloutBatch
from ring_lightning.rl.objectives.base import Objective
from ring_lightning.rollout.engine import RolloutEngine, SamplingConfig

__all__ = ["EngineFactory", "RolloutDataModule", "RolloutRequest"]


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
        updates_per_rollout: N optimizer steps per rollout, each on its own disjoint selection of the
            objective's budget (C3PO: exactly Φ tokens each) against π_old = the sampling policy
            (`updates.py`; our reading of the report's "minibatch size of 2"). 1 = one update per rollout.
        min_used_token_fraction: warn (once) when a step trains on less than this fraction of the
            tokens it sampled (`budget/used_token_fraction`): the budget discards most of the rollout.
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
        updates_per_rollout: int = 1,
        min_used_token_fraction: float = 0.5,
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
        _check_at_least(prompts_per_step=(prompts_per_step, 1), samples_per_prompt=(samples_per_prompt, 1),
                        updates_per_rollout=(updates_per_rollout, 1), max_staleness=(max_staleness, 0))
        self.sources = {k: (v if isinstance(v, PromptSource) else PromptSource(**v)) for k, v in sources.items()}
        self.stages = stages or {"default": dict.fromkeys(self.sources, 1.0)}
        self.initial_stage = stage or next(iter(self.stages))
        self.slot = EngineSlot(engine)
        self.reward = reward
        self.stage_rewards = dict(stage_rewards or {})
        self.knobs = SamplerKnobs(  # every sampling knob lives here (RolloutSampler reads them)
            prompts_per_step=prompts_per_step, samples_per_prompt=samples_per_prompt,
            refill_prompts=refill_prompts or prompts_per_step, max_refill_rounds=max_refill_rounds,
            max_staleness=max_staleness,
            max_prompt_tokens=max_prompt_tokens, seed=seed, advantage_scale=advantage_scale,
            advantage_baseline=advantage_baseline, min_used_token_fraction=min_used_token_fraction,
            updates_per_rollout=updates_per_rollout,
            sampling=SamplingConfig(temperature=temperature, top_p=top_p, max_tokens=max_response_tokens))
        self.stream: PromptStream | None = None
        self._pending_state: dict[str, Any] | None = None
        self.sampler_state = SamplerState()  # groups drawn, carried responses: checkpointed
        self.sampler: RolloutSampler | None = None  # built by bind
        self._lock = self.slot.lock  # engine + stream
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
        self.stream = PromptStream(rows, self.stages, self.initial_stage, seed=self.knobs.seed)
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
        return self._stage_reward(self.stage)

    def set_stage(self, name: str) -> None:
        """Switch the prompt mixture and reward (e.g. from a stage-transition callback)."""
        if self.stream is None:
            raise RuntimeError("set_stage before setup(): call trainer.fit or datamodule.setup first")
        self._stop_worker()  # batches sampled ahead belong to the old stage: discarded
        with self._lock:
            self.stream.set_stage(name)
            self.sampler_state.carried = ()  # so do responses carried over from its last step
            self.sampler_state.pending = ()  # and its rollout's later updates

    def next_rollout(self) -> RolloutBatch:
        """Sample, score and plan one optimizer step's data for this rank (collective; see sampler.py)."""
        if self.sampler is None:
            raise RuntimeError("RolloutDataModule.next_rollout before bind(): the LightningModule must "
                               "hand over its policy (RLModule does this in on_train_start)")
        return self.sampler.next_rollout()

    def _stop_worker(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()

    @property
    def stage(self) -> str:
        if self.stream is not None:
            return self.stream.stage
        return (self._pending_state or {}).get("stage", self.initial_stage)

    @property
    def pending_updates(self) -> int:
        """Later updates of the current rollout still to train (0 at a rollout boundary)."""
        return len(self.sampler_state.pending)

    @property
    def bound(self) -> bool:
        """An engine is built and attached to a policy (`bind`)."""
        return self.sampler is not None and self.slot.engine is not None

    @property
    def engine(self) -> RolloutEngine | None:
        return self.slot.engine

    @property
    def weight_version(self) -> int:
        """The optimizer step whose weights the engine holds."""
        return self.slot.version

    # ---------------------------------------------------------------- engine
    def bind(self, policy: Any, tokenizer: Any, objective: Objective, *, micro_batch_tokens: int | None = None,
             rank: int = 0, world_size: int = 1, weights: Iterable[tuple[str, torch.Tensor]] | None = None,
             version: int = 0,
             logprob_fn: Callable[[Sequence[Response]], list[torch.Tensor]] | None = None,
             device: torch.device | str = "cpu") -> None:
        """Attach the trainer's policy: build the engine (once) and load `weights` into it.

        Args:
            policy: the trainer's policy (handed to the engine factory).
            tokenizer: its tokenizer (chat template, pad id).
            objective: plans which response tokens enter each step (`rl/objectives/`).
            micro_batch_tokens: cap on rows × longest row of one micro-batch (None = one micro-batch).
            rank: this data-parallel rank.
            world_size: number of data-parallel ranks.
            weights: named tensors of the policy to sync into the engine now (None = skip; also
                skipped when the engine is built here from `policy`, which already holds them).
            version: the weight version those weights are (optimizer steps taken).
            logprob_fn: trainer logprobs of responses, for carried responses' π_old (collective:
                called on every rank, possibly with an empty list).
            device: device of the collective tensors (the policy's device).
        """
        k = self.knobs
        if k.prompts_per_step % world_size or k.refill_prompts % world_size:
            raise ValueError(f"prompts_per_step={k.prompts_per_step} and refill_prompts="
                             f"{k.refill_prompts} must be divisible by the {world_size} data-parallel ranks")
        objective.check(world_size)
        if k.updates_per_rollout > 1 and objective.carry_age:
            raise ValueError(f"updates_per_rollout={k.updates_per_rollout} splits each rollout over several updates; "
                             "carrying leftovers into the next rollout on top is not supported: set the "
                             "objective's overflow: drop, or updates_per_rollout: 1")
        if self.reward is None and not self.stage_rewards:
            raise ValueError("RolloutDataModule needs a `reward` (e.g. ring_lightning.rewards.router.RewardRouter)")
        if self.stream is None:
            self.setup("fit")
        self._stop_worker()
        self.sampler = RolloutSampler(self.knobs, self.stream, self.slot, self._stage_reward, objective,
                                      micro_batch_tokens=micro_batch_tokens, tokenizer=tokenizer, rank=rank,
                                      world_size=world_size, logprob_fn=logprob_fn, device=device,
                                      state=self.sampler_state, lock=self._lock)
        if self.slot.build(policy, tokenizer):
            weights = None  # an engine built from `policy` already holds its weights
        if k.max_staleness and getattr(self.slot.engine, "shares_trainer_model", False):
            raise ValueError(
                f"max_staleness={k.max_staleness} samples in a background thread while the trainer updates its "
                f"weights, but {type(self.slot.engine).__name__} generates with the trainer's own model; give it a "
                "private copy (HFEngine init_args: copy_model: true), use VLLMEngine, or set max_staleness: 0")
        if weights is not None:
            self.slot.sync(weights, version)
        self.slot.version = version

    def _stage_reward(self, stage: str) -> Reward:
        return self.stage_rewards.get(stage, self.reward)

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
        self.sampler = None

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Stream position (of the oldest prompt not yet trained on), stage, carried responses and the
        rollout's later updates."""
        if self.stream is None:
            return dict(self._pending_state or {})
        ahead = self.sampler.ahead if self.sampler is not None else None
        oldest = ahead.oldest_state() if ahead is not None else None
        with self._lock:
            stream = oldest or self.stream.state_dict()
        st = self.sampler_state
        return {"stream": stream, "stage": self.stream.stage, "groups": st.groups,
                "carried": [{f.name: getattr(r, f.name) for f in fields(Response)} for r in st.carried],
                "pending": pending_to_state(st.pending)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.stream is None:  # restored before setup: apply once the sources are loaded
            self._pending_state = dict(state)
            return
        self._stop_worker()
        with self._lock:
            self.stream.load_state_dict(state["stream"])
            self.stream.set_stage(state["stage"])
        self.sampler_state.groups = int(state.get("groups", 0))
        self.sampler_state.carried = tuple(Response(**d) for d in state.get("carried", []))
        self.sampler_state.pending = pending_from_state(state.get("pending", []))
        self._pending_state = None


def _check_at_least(**knobs: tuple[int, int]) -> None:
    """Each knob's value must be >= its floor: name=(value, floor)."""
    for name, (value, floor) in knobs.items():
        if value < floor:
            raise ValueError(f"{name} must be >= {floor}, got {value}")
