"""RLModule: GRPO-family RL of an MoE policy with an embedded rollout engine; the objective is injected.

Ring-lite (arXiv 2506.14731, §3.1–3.2, Eq. 1–6): K responses per prompt, group-normalised
advantages, a clipped token-level surrogate with KL and entropy terms, MoE router load-balance
(1e-5) and z-loss (1e-7); C3PO fixes the training tokens per step at Φ (`rl/objectives/c3po.py`).
One Lightning batch is one update (manual optimisation): sample after the last weight sync
(on-policy), π_ref / π_old logprobs, gradients accumulated over micro-batches (each backpropagates its
exact share of the step's loss), `ppo_epochs` optimizer steps, weight sync into the engine and the
parity probe, metrics. With the data module's `updates_per_rollout` = N one rollout feeds N
batches (disjoint Φ selections, π_old = the sampling policy, so the clip acts). π_old of a fresh
response is the current policy detached (bit-identical to a separate pass, which
`recompute_old_logprobs` forces). Non-finite steps are skipped
(`modules/nonfinite.py`); checkpoints hold RNG states for exact resume. Held-out evaluation:
`modules/rl_eval.py`. Choices where the report is silent: docs/design.md#rl-module.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from dataclasses import asdict, is_dataclass
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from ring_lightning.data.rollouts.stats import all_reduce_max_int
from ring_lightning.data.rollouts.datamodule import RolloutDataModule
from ring_lightning.models.loading import build_config, checkpoint_tokenizer, load_policy, load_tokenizer, to_dtype
from ring_lightning.models.router_losses import num_experts, router_aux_losses
from ring_lightning.modules import rl_steps as steps
from ring_lightning.modules.rl_eval import HeldOutEval
from ring_lightning.models.export import export_policy, read_sft_tokens
from ring_lightning.modules.nonfinite import NonFiniteGuard
from ring_lightning.modules.optim import build_optimizer, warmup_constant
from ring_lightning.modules.rng_state import KEY as RNG_KEY, collect_rng_states, restore_rng_states
from ring_lightning.rl.logits import masked_logprobs_and_entropy
from ring_lightning.rl.objectives import C3PO, Objective
from ring_lightning.rollout.parity import SyncParityProbe


class RLModule(L.LightningModule):
    """RL of a causal LM on `RolloutDataModule` rollouts with an injected objective (C3PO, GRPO, yours).

    Args:
        model: a preset name or a local HF-format directory (e.g. the SFT export).
        tokenizer: tokenizer directory; None = the checkpoint's own, else the shipped one.
        dtype: parameter dtype ("float32", "bfloat16", "float64" for exactness tests).
        model_overrides: config fields to override.
        seed: seed of a preset's random initialisation (policy and reference are identical).
        objective: which tokens enter each step and their loss (`rl/objectives/`; class_path /
            init_args); None = `C3PO()` with the report's settings.
        micro_batch_tokens: cap on rows × longest row per micro-batch; None = one micro-batch.
        router_aux_loss_coef: router load-balance coefficient; None = model config's (else 1e-5).
        router_z_loss_coef: router z-loss coefficient; None = model config's (else 1e-7).
        ppo_epochs: optimizer steps per rollout batch (1 in the report).
        recompute_old_logprobs: run a separate no-grad π_old pass even with one epoch.
        lr: learning rate of the default AdamW.
        weight_decay: AdamW weight decay (not on 1-D parameters).
        betas: AdamW betas.
        warmup_steps: linear warm-up steps of the default schedule (then constant).
        optimizer: replaces the default AdamW (class_path/init_args; receives parameter groups).
        scheduler: replaces the default warm-up + constant schedule.
        grad_clip: max gradient norm (None or 0 = no clipping; the norm is logged either way).
        parity: the engine-vs-trainer logprob check after weight syncs (`rollout/parity.py`
            `SyncParityProbe`, with its own schedule and thresholds); True = its defaults, False = off.
        mixed_precision: FSDP2 only: "bf16" compute with float32 master weights, or "none".
        activation_checkpointing: recompute each decoder layer in backward.
        max_nonfinite_steps: abort (NonFiniteError) after this many optimizer steps in a row with a
            NaN/Inf loss or gradient norm (each one is skipped); 0 = no guard.
    """

    def __init__(
        self,
        model: str = "bailing-tiny",
        tokenizer: str | None = None,
        dtype: str = "float32",
        model_overrides: dict[str, Any] | None = None,
        seed: int = 0,
        objective: Objective | None = None,
        micro_batch_tokens: int | None = None,
        router_aux_loss_coef: float | None = 1e-5,
        router_z_loss_coef: float | None = 1e-7,
        ppo_epochs: int = 1,
        recompute_old_logprobs: bool = False,
        lr: float = 3e-6,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
        grad_clip: float | None = 1.0,
        parity: SyncParityProbe | bool = True,
        mixed_precision: Literal["none", "bf16"] = "none",
        activation_checkpointing: bool = False,
        max_nonfinite_steps: int = 3,
    ) -> None:
        super().__init__()
        if ppo_epochs < 1 or warmup_steps < 0:
            raise ValueError(f"need ppo_epochs >= 1 and warmup_steps >= 0; got {ppo_epochs}, {warmup_steps}")
        if micro_batch_tokens is not None and micro_batch_tokens < 1:
            raise ValueError(f"micro_batch_tokens must be positive or null, got {micro_batch_tokens}")
        self.objective, self.micro_batch_tokens = _checked_objective(objective), micro_batch_tokens
        to_dtype(dtype)
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "parity", "objective"])
        self.hparams["objective"] = _describe(self.objective)
        self.automatic_optimization = False
        self.model_name, self.dtype_name, self.seed = str(model), dtype, seed
        self.model_overrides = dict(model_overrides or {})
        path = Path(self.model_name)
        self.tokenizer = load_tokenizer(tokenizer if tokenizer is not None else checkpoint_tokenizer(path))
        self.aux_coefs = (router_aux_loss_coef, router_z_loss_coef)
        self.ppo_epochs, self.recompute_old = ppo_epochs, recompute_old_logprobs or ppo_epochs > 1
        self.lr, self.weight_decay, self.betas, self.warmup_steps = lr, weight_decay, tuple(betas), warmup_steps
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.grad_clip = grad_clip
        self.parity = SyncParityProbe() if parity is True else (parity or None)
        self.mixed_precision, self.activation_checkpointing = mixed_precision, activation_checkpointing
        self.policy = None
        self._ref: list[torch.nn.Module] = []  # a list keeps the reference out of state_dict / DDP
        self.rl_tokens_trained = self.rl_tokens_generated = 0  # loss / sampled tokens, all ranks
        self.engine_weight_version = 0  # optimizer steps whose weights the engine holds
        self.sft_tokens = read_sft_tokens(path)
        self._bind_parity: dict[str, float] = {}
        self.guard = NonFiniteGuard(max_nonfinite_steps, where="RLModule")
        self._weights_loaded = False  # a checkpoint replaced the weights since the last engine sync
        self._pending_rng: dict[str, Any] | None = None
        self.heldout = HeldOutEval()

    # ----------------------------------------------------------------------------------- model
    def _build(self) -> torch.nn.Module:
        mesh = getattr(self, "_device_mesh", None)
        make = lambda: load_policy(self.model_name, dtype=self.dtype_name, seed=self.seed,  # noqa: E731
                                   **self.model_overrides)[0]
        if mesh is None:
            return make()
        if mesh.ndim > 1 and mesh["tensor_parallel"].size() > 1:
            raise ValueError("RLModule supports data parallelism only (ModelParallelStrategy with "
                             "tensor_parallel_size=1); got a tensor-parallel mesh")
        from ring_lightning.models.sharding import build_sharded_policy

        return build_sharded_policy(make, build_config(self.model_name, **self.model_overrides),
                                    to_dtype(self.dtype_name), mesh, device=self.trainer.strategy.root_device,
                                    mixed_precision=self.mixed_precision)

    def configure_model(self) -> None:
        if self.policy is not None:
            return
        policy = self._build()
        if self.activation_checkpointing:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy.config.use_cache = False
        self.policy = policy.train()  # from_pretrained returns eval mode
        if self.objective.kl_coef > 0:
            ref = self._build().eval()
            ref.requires_grad_(False)
            self._ref = [ref]

    def _dp(self) -> tuple[int, int]:
        mesh = getattr(self, "_device_mesh", None)
        if mesh is not None:
            dp = mesh["data_parallel"] if mesh.ndim > 1 else mesh
            return dp.get_local_rank(), dp.size()
        return self.trainer.global_rank, self.trainer.world_size

    def _rollout_dm(self) -> RolloutDataModule:
        dm = self.trainer.datamodule
        if not isinstance(dm, RolloutDataModule):
            raise TypeError(f"RLModule needs a RolloutDataModule as `data`, got {type(dm).__name__}")
        return dm

    def _bind(self, dm: RolloutDataModule) -> None:
        """Hand the (restored, wrapped) policy to the data module: build the engine (once) and sync the
        weights unless the engine already holds exactly these (same version, no checkpoint since)."""
        if self._ref:
            self._ref[0].to(self.device)
        rank, world = self._dp()
        current = dm.bound and not self._weights_loaded and dm.weight_version == self.engine_weight_version
        dm.bind(self.policy, self.tokenizer, self.objective, micro_batch_tokens=self.micro_batch_tokens,
                rank=rank, world_size=world,
                weights=None if current else steps.named_weights(self.policy), version=self.engine_weight_version,
                logprob_fn=self._carry_logprobs, device=self.device)
        self._weights_loaded = False

    def on_train_start(self) -> None:
        """Bind the engine to the policy (see `_bind`) and check its starting weights."""
        dm = self._rollout_dm()
        self.engine_weight_version = self.global_step
        self._bind(dm)
        self._bind_parity = {}
        if self.parity is not None:  # the engine's starting weights are checked too (logged at step 1)
            with dm.exclusive_engine() as engine:
                found = self.parity.check(engine, self.policy, self.global_step)
            self._bind_parity = {k.replace("sync_", "bind_sync_"): v for k, v in found.items()}

    # ------------------------------------------------------------------------------ training
    def _forward(self, model: torch.nn.Module, mb, with_aux: bool = False):
        """Logprobs / entropy at the loss positions (0 elsewhere), head applied in chunks: no [B, T, V]
        logits (`rl/logits.py`); `out` carries the router logits for the aux losses when with_aux."""
        return masked_logprobs_and_entropy(model, mb, with_aux=with_aux)

    @torch.no_grad()
    def _logprobs(self, model: torch.nn.Module, mbs) -> list[torch.Tensor]:
        return [self._forward(model, mb)[1] for mb in mbs]

    def _carry_logprobs(self, responses) -> list[torch.Tensor]:
        """Trainer logprobs of whole responses (π_old of carried ones); collective-safe."""
        mbs = steps.response_micro_batches(responses, self.tokenizer.pad_token_id or 0)
        n = all_reduce_max_int(len(mbs), self.device)
        mbs += [steps.dummy_micro_batch(self.tokenizer.pad_token_id or 0)] * (n - len(mbs))
        lps = self._logprobs(self.policy, [mb.to(self.device) for mb in mbs])
        return steps.split_response_logprobs(mbs, lps, len(responses))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Lightning re-logs a step metric's last value at every later step of an epoch (ours is one
        # endless epoch): hide last step's values, so a metric this step does not log (parity probe,
        # train-vs-inference mismatch without fresh tokens) stays absent instead of repeating stale.
        results = getattr(self.trainer, "_results", None)
        if results is not None:
            results.reset(metrics=False, fx="training_step")
        if self._pending_rng is not None:  # resumed: the RNG exactly as it was after the saved step
            restore_rng_states(self._pending_rng)
            self._pending_rng = None

    def training_step(self, request, batch_idx: int) -> None:
        """One rollout: sample → π_ref / π_old → loss per micro-batch → optimizer step(s) → sync → log."""
        t0 = time.perf_counter()
        dm = self._rollout_dm()
        rollout = dm.next_rollout()
        t1 = time.perf_counter()
        mbs = [mb.to(self.device) for mb in rollout.micro_batches]
        ref = self._logprobs(self._ref[0], mbs) if self._ref else [None] * len(mbs)
        old = self._logprobs(self.policy, mbs) if self.recompute_old else [None] * len(mbs)
        acc, applied = steps.MetricAccumulator(), False
        for epoch in range(self.ppo_epochs):  # metrics come from the first epoch
            step_loss = self._accumulate_gradients(mbs, ref, old, acc if epoch == 0 else None)
            grad_norm, ok = self._optimizer_step(step_loss)
            applied = applied or ok
        t2 = time.perf_counter()
        self._sync_engine(dm, applied, acc)
        t3 = time.perf_counter()
        self._log_step(acc.finalize(self.device), rollout, applied, grad_norm, len(mbs), (t0, t1, t2, t3))

    def _accumulate_gradients(self, mbs, ref, old, acc: steps.MetricAccumulator | None) -> float:
        """Backpropagate every micro-batch's loss (the objective's + its token share of the router aux
        losses); DDP all-reduces once, after the last. Returns this rank's summed loss."""
        block = getattr(self.trainer.strategy, "block_backward_sync", None)
        aux_masks = [mb.attention_mask * (mb.sample_index >= 0).unsqueeze(-1).to(mb.attention_mask) for mb in mbs]
        aux_total = max(sum(int(m.sum()) for m in aux_masks), 1)
        step_loss = 0.0
        for i, mb in enumerate(mbs):
            with (block() if block is not None and i < len(mbs) - 1 else nullcontext()):
                out, logp, ent = self._forward(self.policy, mb, with_aux=True)
                stored = mb.old_logprobs_for(logp if old[i] is None else old[i])
                loss, m = self.objective.loss(logp, mb, old_logprobs=stored, ref_logprobs=ref[i], entropy=ent)
                weight = float(aux_masks[i].sum()) / aux_total  # token-weighted mean over the step
                aux = router_aux_losses(out, self.policy, token_mask=aux_masks[i],
                                        aux_loss_coef=self.aux_coefs[0], z_loss_coef=self.aux_coefs[1])
                if aux and weight > 0:
                    loss = loss + weight * aux["loss"]
                self.manual_backward(loss)
                step_loss += float(loss.detach())
            if acc is not None:
                acc.add(m, aux, mb, logp.detach(), weight)
        return step_loss

    def _optimizer_step(self, step_loss: float) -> tuple[float, bool]:
        """Clip, then step (a non-finite step drops its gradients first). Returns (norm, applied)."""
        opt, sched = self.optimizers(), self.lr_schedulers()
        grad_norm = steps.clip_and_norm(self.policy, self.grad_clip)
        ok = self.guard.step_ok(step_loss, grad_norm, step=self.global_step, device=self.device)
        if not ok:  # skipped: no gradient, so the optimizer leaves parameters and moments alone
            self.guard.drop_grads(self.policy)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        return grad_norm, ok

    def _sync_engine(self, dm: RolloutDataModule, applied: bool, acc: steps.MetricAccumulator) -> None:
        """New weights into the engine (and the parity probe on its schedule); none if nothing changed."""
        if not applied:  # the weights did not change: the engine keeps its copy
            dm.keep_weights(steps.named_weights(self.policy))
            return
        self.engine_weight_version = self.global_step
        dm.sync_weights(steps.named_weights(self.policy), self.engine_weight_version)
        if self.parity is not None:
            with dm.exclusive_engine() as engine:
                acc.extra.update(self.parity.after_sync(engine, self.policy, self.global_step) or {})

    def _log_step(self, metrics: dict[str, float], rollout, applied: bool, grad_norm: float, n_micro: int,
                  t: tuple[float, float, float, float]) -> None:
        t0, t1, t2, t3 = t
        metrics.update(rollout.metrics)
        metrics.update(self._bind_parity)
        metrics.update(self.guard.metrics("train"))
        self._bind_parity = {}
        loss_tokens, gen = metrics["train/loss_tokens"], rollout.metrics["rollout/generated_tokens"]
        self.rl_tokens_trained += int(loss_tokens) if applied else 0
        self.rl_tokens_generated += int(gen)
        metrics.update({
            "train/grad_norm": float(grad_norm), "train/lr": self.optimizers().param_groups[0]["lr"],
            "train/budget": float(rollout.budget), "train/micro_batches": float(n_micro),
            "time/produce": t1 - t0, "time/train": t2 - t1, "time/sync": t3 - t2, "time/step": t3 - t0,
            "throughput/generated_tokens_per_s": gen / max(metrics["time/rollout"], 1e-9),
            "throughput/trained_tokens_per_s": loss_tokens / max(t2 - t1, 1e-9),
            "throughput/step_tokens_per_s": (gen + loss_tokens) / max(t3 - t0, 1e-9),
            "tokens/rl_trained": float(self.rl_tokens_trained), "tokens/rl_generated": float(self.rl_tokens_generated),
            "tokens/sft": float(self.sft_tokens), "engine/weight_version": float(self.engine_weight_version),
        })
        if self.sft_tokens:
            metrics["tokens/rl_over_sft"] = self.rl_tokens_trained / self.sft_tokens
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
        self.log("reward", metrics["reward/mean"], on_step=True, prog_bar=True, logger=False, batch_size=1)

    # ------------------------------------------------------------------------------ evaluation
    def _engine_current(self) -> RolloutDataModule:
        """The engine must hold this module's current weights before it scores held-out prompts."""
        dm = self._rollout_dm()
        if not dm.bound:
            self._bind(dm)
        elif self._weights_loaded or dm.weight_version != self.engine_weight_version:
            dm.sync_weights(steps.named_weights(self.policy), self.engine_weight_version)
            self._weights_loaded = False
        return dm

    def on_validation_start(self) -> None:
        self.heldout.start(self._engine_current(), self.device)

    def on_test_start(self) -> None:
        self.heldout.start(self._engine_current(), self.device)

    def validation_step(self, batch, batch_idx: int) -> None:
        self.heldout.step(self._rollout_dm(), self.tokenizer, batch, batch_idx, rank=self._dp()[0])

    def test_step(self, batch, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.heldout.end("val"), batch_size=1)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.heldout.end("test"), batch_size=1)

    # ------------------------------------------------------------------------------ optimizer
    def configure_optimizers(self) -> dict:
        optimizer = build_optimizer(self.policy, self.optimizer_factory, self.lr, self.weight_decay, self.betas)
        scheduler = (self.scheduler_factory(optimizer) if self.scheduler_factory is not None
                     else warmup_constant(optimizer, self.warmup_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["c3po"] = {"rl_tokens_trained": self.rl_tokens_trained,  # key name predates RLModule
                              "rl_tokens_generated": self.rl_tokens_generated, "sft_tokens": self.sft_tokens,
                              "engine_weight_version": self.engine_weight_version,
                              "nonfinite": self.guard.state_dict()}
        checkpoint[RNG_KEY] = collect_rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("c3po", {})
        self.rl_tokens_trained = int(state.get("rl_tokens_trained", 0))
        self.rl_tokens_generated = int(state.get("rl_tokens_generated", 0))
        self.sft_tokens = int(state.get("sft_tokens", self.sft_tokens))
        self.engine_weight_version = int(state.get("engine_weight_version", 0))
        self.guard.load_state_dict(state.get("nonfinite", {}))
        self._pending_rng = checkpoint.get(RNG_KEY)
        self._weights_loaded = True

    def export_hf(self, directory: str | Path, dtype: str | None = None) -> Path | None:
        """The policy as an HF checkpoint in `directory` plus `ring_lightning_meta.json` (token counts),
        weights in `dtype` (None = as trained); `models/export.py`. Collective under FSDP2 (rank 0 writes)."""
        return export_policy(self, directory, dtype)


def _checked_objective(objective: Objective | None) -> Objective:
    objective = C3PO() if objective is None else objective
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must implement ring_lightning.rl.objectives.Objective (check, select, "
                        f"finalize, loss, kl_coef, carry_age); got {type(objective).__name__}")
    return objective


def _describe(objective: Objective) -> dict[str, Any]:
    """The objective as class_path / init_args, for hparams.yaml."""
    cls = type(objective)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}",
            "init_args": asdict(objective) if is_dataclass(objective) else {}}


C3POModule = RLModule  # the name before objectives were injected (C3PO is the default objective)
