"""C3POModule: GRPO / C3PO reinforcement learning of an MoE policy with an embedded rollout engine.

What the Ring-lite report says (arXiv 2506.14731, §3.1–3.2, Eq. 1–6): the GRPO objective — K
responses per prompt, group-normalised advantages, token-level PPO ratio clipped at ε = 0.2, a
token-level KL penalty to the frozen reference policy (β = 1e-3) and an entropy bonus (5e-4) —
plus the MoE router load-balance (1e-5) and z-loss (1e-7). C3PO fixes the *training tokens* per
optimizer step: exactly Φ response tokens enter the loss (the last response truncated at token
level, after the advantages were computed) and the summed token loss is divided by the constant Φ.
Reported: L = 512 prompts × K = 16, lr 3e-6 constant after warm-up, Φ = 409,600, responses up to
24,576 then 32,768 tokens.

One Lightning batch is one optimizer step (manual optimisation):

1. `RolloutDataModule.next_rollout()` samples, scores and budgets this step's data *now* — after
   the previous step's weight sync (on-policy; see data/rollouts/datamodule.py for fill order, drops,
   carry-over, refills and how Φ is split over data-parallel ranks: each rank trains exactly Φ/W
   tokens of its own prompts; its loss is divided by Φ/W and the strategy's gradient average over
   W ranks yields the gradient of (sum of all Φ token losses) / Φ).
2. π_ref logprobs from a frozen copy of the starting policy (not built when kl_coef == 0).
3. π_old: with one epoch (the report's setting) the behaviour policy *is* the current policy, so
   π_old = the current logprobs detached — bit-identical to a separate no-grad recompute, which we
   therefore skip unless `recompute_old_logprobs` (or `ppo_epochs` > 1, which needs it).
   Carried-over and stale responses bring their own stored π_old.
4. Micro-batch gradient accumulation: every micro-batch backpropagates Σ token losses / (Φ/W), so
   any split over micro-batches and ranks gives exactly the single-batch gradient. DDP: all but the
   last micro-batch run under `no_sync` (one all-reduce per step). FSDP2 (ModelParallelStrategy,
   `fully_shard` per decoder layer): every backward reduce-scatters (sums of exact pieces, still
   exact); every rank runs the same number of micro-batches (empty ones are padded in). DDP with
   an MoE policy needs `strategy: ddp_find_unused_parameters_true` (an expert that receives no
   token in a step has no gradient on that rank).
   Router aux losses are added per micro-batch weighted by its share of the rank's real tokens (a
   token-weighted mean over the step: exact for the z-loss, whose value is a token mean; the
   load-balance loss is a product of batch statistics, so its split over micro-batches and ranks
   is an approximation — it is a 1e-5 regulariser). Metrics come from the first PPO epoch.
5. Gradient clipping (norm), optimizer step, LR scheduler (linear warm-up, then constant).
6. Weight sync into the engine (`engine.update_weights(policy.named_parameters())`; the vLLM engine
   gathers FSDP2 shards one decoder layer at a time, `rollout/weight_sync.py`) and, on the probe's
   schedule, the engine-vs-trainer logprob parity check (`rollout/parity.py`).
7. Non-finite guard (`modules/nonfinite.py`): a step with a NaN/Inf loss or gradient norm on any rank
   drops its gradients before `opt.step()` (parameters and AdamW moments unchanged, the LR schedule
   advances), is counted (`train/nonfinite_skipped`) and leaves the engine's weights alone;
   `max_nonfinite_steps` such steps in a row abort.
8. Held-out evaluation (`validate` / `test`, and every `val_check_interval` steps of `fit`): the data
   module's `val_sources` / `test_sources`, sampled by the engine and scored by the training reward
   (`eval/rollout_eval.py`): `val/pass@1` (mean over n samples), `val/pass@k`, `val/<domain>/pass@1`.
   The engine is first synced when its weight version is not ours or a checkpoint was loaded since
   (`validate --ckpt_path` restores weights after the engine may exist); hooks in `modules/c3po_eval.py`.
9. Exact resume: checkpoints also hold the RNG states (restored just before the first resumed step)
   and the guard's counters; the data module's state holds stream position, stage, carried responses.

Choices where the report is silent: trainer logprobs / entropy are of the untempered policy (what
the engine reports in `Completion.logprobs`; Ring-lite samples at temperature 1); AdamW betas
(0.9, 0.999), weight decay 0.0 (not stated); grad-clip 1.0 (not stated). `loss_mode: grpo` is the
plain GRPO baseline (all responses, per-sequence token mean, mean over sequences).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from ring_lightning.data.rollouts.stats import all_reduce_max_int
from ring_lightning.data.rollouts.datamodule import BudgetSpec, RolloutDataModule
from ring_lightning.eval.rollout_eval import RolloutEvaluator
from ring_lightning.models.loading import build_config, load_policy, load_tokenizer, to_dtype
from ring_lightning.models.router_losses import num_experts, router_aux_losses
from ring_lightning.modules import c3po_steps as steps
from ring_lightning.modules.c3po_eval import RolloutEvalHooks
from ring_lightning.models.export import export_policy, read_sft_tokens
from ring_lightning.modules.nonfinite import NonFiniteGuard
from ring_lightning.modules.optim import decay_groups, default_adamw
from ring_lightning.modules.rng_state import KEY as RNG_KEY, collect_rng_states, restore_rng_states
from ring_lightning.rl.budget import FillOrder, Overflow
from ring_lightning.rl.losses import policy_loss, token_logprobs_and_entropy
from ring_lightning.rollout.parity import SyncParityProbe


class C3POModule(RolloutEvalHooks, L.LightningModule):
    """C3PO (or plain GRPO) RL on `RolloutDataModule` rollouts.

    Args:
        model: a preset name or a local HF-format directory (e.g. the SFT export).
        tokenizer: tokenizer directory; None = the checkpoint's own, else the shipped one.
        dtype: parameter dtype ("float32", "bfloat16", "float64" for exactness tests).
        model_overrides: config fields to override.
        seed: seed of a preset's random initialisation (policy and reference are identical).
        loss_mode: "c3po" (exactly Φ tokens, Σ/Φ) or "grpo" (all responses, mean of sequence means).
        token_budget: Φ, global loss tokens per optimizer step (c3po); divisible by the DP ranks.
        fill_order: budget fill order: "batch" (default), "random", "shortest_first".
        overflow: responses past the budget: "drop" (default) or "carry" into the next step.
        max_carry_age: the oldest (in steps) a carried response may be when trained on.
        micro_batch_tokens: cap on rows × longest row per micro-batch; None = one micro-batch.
        clip_eps_low: lower PPO clip ε (ratios below 1 − ε are clipped for A < 0).
        clip_eps_high: upper PPO clip ε (DAPO clip-higher when > clip_eps_low).
        kl_coef: β of the k3 KL penalty to the frozen reference; 0 = no reference model.
        entropy_coef: entropy bonus coefficient.
        router_aux_loss_coef: router load-balance coefficient; None = model config's (else 1e-5).
        router_z_loss_coef: router z-loss coefficient; None = model config's (else 1e-7).
        tis_cap: truncated importance sampling cap C on π_old/π_engine (None = off).
        icepop_range: IcePop (low, high) bounds on π_old/π_engine; tokens outside are masked.
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
        loss_mode: Literal["c3po", "grpo"] = "c3po",
        token_budget: int = 409_600,
        fill_order: FillOrder = "batch",
        overflow: Overflow = "drop",
        max_carry_age: int = 1,
        micro_batch_tokens: int | None = None,
        clip_eps_low: float = 0.2,
        clip_eps_high: float = 0.2,
        kl_coef: float = 1e-3,
        entropy_coef: float = 5e-4,
        router_aux_loss_coef: float | None = 1e-5,
        router_z_loss_coef: float | None = 1e-7,
        tis_cap: float | None = None,
        icepop_range: tuple[float, float] | None = None,
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
        if loss_mode not in ("c3po", "grpo"):
            raise ValueError(f"loss_mode must be 'c3po' or 'grpo', got {loss_mode!r}")
        if loss_mode == "c3po" and token_budget < 1:
            raise ValueError(f"token_budget (Φ) must be >= 1, got {token_budget}")
        if ppo_epochs < 1 or warmup_steps < 0:
            raise ValueError(f"need ppo_epochs >= 1 and warmup_steps >= 0; got {ppo_epochs}, {warmup_steps}")
        to_dtype(dtype)
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "parity"])
        self.automatic_optimization = False
        self.model_name, self.dtype_name, self.seed = str(model), dtype, seed
        self.model_overrides = dict(model_overrides or {})
        path = Path(self.model_name)
        has_tok = path.is_dir() and any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
        self.tokenizer = load_tokenizer(tokenizer if tokenizer is not None else (path if has_tok else None))
        self.budget = BudgetSpec(mode=loss_mode, token_budget=token_budget, fill_order=fill_order,
                                 overflow=overflow, max_carry_age=max_carry_age, micro_batch_tokens=micro_batch_tokens)
        self.loss_kwargs = dict(clip_eps_low=clip_eps_low, clip_eps_high=clip_eps_high, kl_coef=kl_coef,
                                entropy_coef=entropy_coef, tis_cap=tis_cap,
                                icepop_range=tuple(icepop_range) if icepop_range is not None else None)
        self.aux_coefs = (router_aux_loss_coef, router_z_loss_coef)
        self.ppo_epochs, self.recompute_old = ppo_epochs, recompute_old_logprobs or ppo_epochs > 1
        self.lr, self.weight_decay, self.betas, self.warmup_steps = lr, weight_decay, tuple(betas), warmup_steps
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.grad_clip = grad_clip
        self.parity = SyncParityProbe() if parity is True else (parity or None)
        self.mixed_precision, self.activation_checkpointing = mixed_precision, activation_checkpointing
        self.policy = None
        self._ref: list[torch.nn.Module] = []  # a list keeps the reference out of state_dict / DDP
        self.rl_tokens_trained = 0  # loss tokens, all ranks
        self.rl_tokens_generated = 0
        self.engine_weight_version = 0  # optimizer steps whose weights the engine holds
        self.sft_tokens = read_sft_tokens(path)
        self._bind_parity: dict[str, float] = {}
        self.guard = NonFiniteGuard(max_nonfinite_steps, where="C3POModule")
        self._weights_loaded = False  # a checkpoint replaced the weights since the last engine sync
        self._pending_rng: dict[str, Any] | None = None
        self._evaluator: list[RolloutEvaluator] = []  # a list keeps it out of the module tree

    # ----------------------------------------------------------------------------------- model
    def _build(self) -> torch.nn.Module:
        mesh = getattr(self, "_device_mesh", None)
        make = lambda: load_policy(self.model_name, dtype=self.dtype_name, seed=self.seed,  # noqa: E731
                                   **self.model_overrides)[0]
        if mesh is None:
            return make()
        if mesh.ndim > 1 and mesh["tensor_parallel"].size() > 1:
            raise ValueError("C3POModule supports data parallelism only (ModelParallelStrategy with "
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
        if self.loss_kwargs["kl_coef"] > 0:
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
            raise TypeError(f"C3POModule needs a RolloutDataModule as `data`, got {type(dm).__name__}")
        return dm

    def _bind(self, dm: RolloutDataModule) -> None:
        """Hand the (restored, wrapped) policy to the data module: build the engine (once) and sync the
        weights unless the engine already holds exactly these (same version, no checkpoint since)."""
        if self._ref:
            self._ref[0].to(self.device)
        rank, world = self._dp()
        current = dm.bound and not self._weights_loaded and dm.weight_version == self.engine_weight_version
        dm.bind(self.policy, self.tokenizer, self.budget, rank=rank, world_size=world,
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
        kwargs: dict[str, Any] = dict(input_ids=mb.input_ids, attention_mask=mb.attention_mask,
                                      position_ids=mb.position_ids, use_cache=False)
        if with_aux and num_experts(model) > 0:
            kwargs["output_router_logits"] = True
        out = model(**kwargs)
        logp, ent = token_logprobs_and_entropy(out.logits, mb.target_ids)
        return out, logp, ent

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
        t0 = time.perf_counter()
        dm: RolloutDataModule = self.trainer.datamodule
        rollout = dm.next_rollout()
        t1 = time.perf_counter()
        mbs = [mb.to(self.device) for mb in rollout.micro_batches]
        ref = self._logprobs(self._ref[0], mbs) if self._ref else [None] * len(mbs)
        old = self._logprobs(self.policy, mbs) if self.recompute_old else [None] * len(mbs)
        acc = steps.MetricAccumulator()
        opt, sched = self.optimizers(), self.lr_schedulers()
        block = getattr(self.trainer.strategy, "block_backward_sync", None)
        aux_masks = [mb.attention_mask * (mb.sample_index >= 0).unsqueeze(-1).to(mb.attention_mask) for mb in mbs]
        aux_total = max(sum(int(m.sum()) for m in aux_masks), 1)
        applied = False
        for epoch in range(self.ppo_epochs):
            step_loss = 0.0  # this rank's summed objective (the guard's loss)
            for i, mb in enumerate(mbs):
                last = i == len(mbs) - 1
                with (block() if block is not None and not last else nullcontext()):
                    out, logp, ent = self._forward(self.policy, mb, with_aux=True)
                    stored = mb.old_logprobs_for(logp if old[i] is None else old[i])
                    loss, m = policy_loss(logp, stored, mb.advantages, mb.loss_mask, mb.normalizer,
                                          loss_agg=mb.loss_agg, ref_logprobs=ref[i], entropy=ent,
                                          engine_logprobs=mb.engine_logprobs, **self.loss_kwargs)
                    weight = float(aux_masks[i].sum()) / aux_total  # token-weighted mean over the step
                    aux = router_aux_losses(out, self.policy, token_mask=aux_masks[i],
                                            aux_loss_coef=self.aux_coefs[0], z_loss_coef=self.aux_coefs[1])
                    if aux and weight > 0:
                        loss = loss + weight * aux["loss"]
                    self.manual_backward(loss)
                    step_loss += float(loss.detach())
                if epoch == 0:
                    acc.add(m, aux, mb, logp.detach(), weight)
            grad_norm = steps.clip_and_norm(self.policy, self.grad_clip)
            if self.guard.step_ok(step_loss, grad_norm, step=self.global_step, device=self.device):
                applied = True
            else:  # skipped: no gradient, so the optimizer leaves parameters and moments alone
                self.guard.drop_grads(self.policy)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        t2 = time.perf_counter()
        if applied:
            self.engine_weight_version = self.global_step
            dm.sync_weights(steps.named_weights(self.policy), self.engine_weight_version)
            if self.parity is not None:
                with dm.exclusive_engine() as engine:
                    acc.extra.update(self.parity.after_sync(engine, self.policy, self.global_step) or {})
        else:  # the weights did not change: the engine keeps its copy
            dm.keep_weights(steps.named_weights(self.policy))
        t3 = time.perf_counter()
        metrics = acc.finalize(self.device)
        metrics.update(rollout.metrics)
        metrics.update(self._bind_parity)
        metrics.update(self.guard.metrics("train"))
        self._bind_parity = {}
        loss_tokens = metrics["train/loss_tokens"]
        self.rl_tokens_trained += int(loss_tokens) if applied else 0
        self.rl_tokens_generated += int(rollout.metrics["rollout/generated_tokens"])
        gen = rollout.metrics["rollout/generated_tokens"]
        metrics.update({
            "train/grad_norm": float(grad_norm), "train/lr": opt.param_groups[0]["lr"],
            "train/budget": float(rollout.budget), "train/micro_batches": float(len(mbs)),
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

    # ------------------------------------------------------------------------------ optimizer
    def configure_optimizers(self) -> dict:
        if self.optimizer_factory is not None:
            groups = decay_groups(self.policy, self.weight_decay)
            groups[0].pop("weight_decay")
            optimizer = self.optimizer_factory(groups)
        else:
            optimizer = default_adamw(decay_groups(self.policy, self.weight_decay), self.lr, self.weight_decay,
                                      self.betas)
        if self.scheduler_factory is not None:
            scheduler = self.scheduler_factory(optimizer)
        else:
            w = self.warmup_steps
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / w) if w else 1.0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["c3po"] = {"rl_tokens_trained": self.rl_tokens_trained,
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
        """Write the policy as an HF checkpoint plus `ring_lightning_meta.json` (SFT and RL token counts)
        for the next stage (`models/export.py`). Collective under FSDP2; rank 0 writes and returns
        the directory (None elsewhere).

        Args:
            directory: output directory (created).
            dtype: dtype of the saved weights; None = the parameter dtype.
        """
        return export_policy(self, directory, dtype)
