"""SFTModule: long chain-of-thought supervised fine-tuning of an MoE policy.

Ring-lite (arXiv 2506.14731, §3 "Long-CoT SFT"): AdamW, weight decay 0.1, lr 3e-4, cosine decay
with 1% linear warm-up, 32k context (defaults here; schedule details in modules/optim.py). Where
the report is silent we chose:

* loss = token-mean cross entropy over the assistant tokens of the whole optimizer step: each
  micro-batch backpropagates its *summed* token loss, and before the optimizer step the gradients
  are multiplied by accumulate × data-parallel-size / (all-reduced number of loss tokens in the
  step), undoing Lightning's 1/accumulate and DDP/FSDP's 1/world averaging. The gradient is thus
  exactly that of one batch holding the whole step, whatever the split over micro-batches and ranks
  (short and long samples weigh per token, not per micro-batch).
* a parameter without gradient in a step (an expert no token was routed to) gets a zero
  gradient, so AdamW treats it the same on one device, under DDP and under FSDP2 (which must
  reduce zeros for it to keep the ranks' collectives aligned): its moments decay and weight
  decay applies.
* router regularisers (models/router_losses.py: load balance 1e-5, z-loss 1e-7 unless overridden)
  are computed per micro-batch and weighted by its loss-token count, i.e. a token-weighted mean.
* the policy is built in `configure_model`: with ModelParallelStrategy (FSDP2) it is created on
  the meta device, `fully_shard`-ed per decoder layer then at the root, and its weights are
  broadcast from rank 0 (which builds / loads the full model on CPU), so no other rank ever holds
  the full model; with DDP or one device it is built directly.
* non-finite steps (modules/nonfinite.py; not in the report): a step whose token-mean loss or
  gradient norm is NaN/Inf is skipped (no update: parameters and AdamW moments unchanged, the
  schedule still advances, its tokens not added to `sft_tokens_seen`), counted as
  `train/nonfinite_skipped`; `max_nonfinite_steps` in a row abort with NonFiniteError.
* exact resume: checkpoints carry the token and guard counters and the RNG states (restored when
  training starts, after Lightning built the data iterator, as in the uninterrupted run);
  SFTDataModule restores the data-stream position, Lightning optimizer, scheduler and loops.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from ring_lightning.data.sft.packing import IGNORE_INDEX, PackedBatch, block_diagonal_mask
from ring_lightning.models.loading import build_config, checkpoint_tokenizer, load_policy, load_tokenizer, to_dtype
from ring_lightning.models.router_losses import expert_load, load_imbalance, num_experts, router_aux_losses, top_k
from ring_lightning.modules.nonfinite import NonFiniteGuard
from ring_lightning.modules.optim import decay_groups, default_adamw, warmup_cosine
from ring_lightning.modules.rng_state import KEY as RNG_KEY
from ring_lightning.modules.rng_state import collect_rng_states, restore_rng_states
from ring_lightning.rl.logits import (check_supported, chunked_cross_entropy_sum, forward_hidden,
                                      head_cross_entropy_sum, output_head)
from ring_lightning.models.sharding import build_sharded_policy, gather_full_state_dict

# per-step accumulator slots (summed over micro-batches, then over ranks)
_CE, _LOSS_TOKENS, _TOKENS, _PAD, _LB, _Z = range(6)
from ring_lightning.models.export import META_FILE  # noqa: E402  token counters of an export (one definition)


class SFTModule(L.LightningModule):
    """Supervised fine-tuning on packed chat data (`SFTDataModule` batches).

    Args:
        model: a preset name (models/presets.py, e.g. "bailing-tiny", "ring-lite-2507") or a local
            HF-format checkpoint directory.
        tokenizer: tokenizer directory; None = the checkpoint's own, else the shipped tokenizer.
            `SFTDataModule(tokenizer=None)` encodes with this one (one tokenizer per run).
        dtype: parameter dtype ("float32", "bfloat16"). With FSDP2 keep float32 and set
            `mixed_precision: bf16`.
        model_overrides: config fields to override (e.g. {"attn_implementation": "sdpa"}).
        seed: seed of the random initialisation of a preset.
        lr: peak learning rate of the default AdamW.
        weight_decay: AdamW weight decay (not applied to 1-D parameters: biases, norms).
        betas: AdamW betas.
        warmup_ratio: fraction of the schedule spent in linear warm-up.
        min_lr_ratio: cosine floor as a fraction of `lr`.
        schedule_steps: optimizer steps of the cosine schedule; None = the trainer's
            estimated_stepping_batches (needs trainer.max_steps with a streaming dataset).
        optimizer: replaces the default AdamW (class_path/init_args of a torch optimizer; receives
            parameter groups with weight decay disabled for 1-D parameters).
        scheduler: replaces the default warm-up + cosine schedule (stepped every optimizer step).
        router_aux_loss_coef: load-balance loss coefficient; None = the model config's (else 1e-5).
        router_z_loss_coef: router z-loss coefficient; None = the model config's (else 1e-7).
        mixed_precision: FSDP2 only: "bf16" computes in bfloat16 with float32 master weights and
            float32 gradient reduction (use on GPU); "none" computes in the parameter dtype. For DDP
            or one device use the Trainer's `precision: bf16-mixed` instead.
        activation_checkpointing: recompute each decoder layer in backward (needed at 32k context).
        attention_mask: how packed documents are kept apart: "position_ids" (restarting position ids;
            transformers builds the block-diagonal mask, or uses varlen flash-attention) or
            "block_diagonal" (an explicit [1, 1, T, T] mask; eager/sdpa only, O(T²) memory; for models
            that accept a 4-D mask, such as BailingMoe and dense HF models — HF MoE models like
            Qwen3-MoE compute their own router loss from a 2-D mask and need "position_ids").
        loss_chunk_tokens: the cross entropy upcasts logits to float32 this many positions at a time
            (recomputed in backward), so a float32 copy of all [tokens, vocab] logits never exists
            (at 32k tokens and a 126k vocabulary that copy alone would take 16 GB).
        head_chunk_tokens: None = the head runs once over all target positions: one [n, V] logits tensor
            plus its full-size gradient (≈ 23 GiB bf16 at 32k targets and a 126k vocabulary). An int =
            the forward keeps the last position's logits only and the head + float32 cross entropy run
            over this many target rows at a time under checkpointing (rl/logits.py), so one [chunk, V]
            logits and its gradient are live at most; same loss, gradients and router losses. Use it for
            long contexts with a large vocabulary (Ring-lite at 32k: 4096); `loss_chunk_tokens` is then
            unused. Heads of BailingMoe and rl/logits.py's PLAIN_HEAD_TYPES only (others refused by name).
        max_nonfinite_steps: abort (NonFiniteError) after this many optimizer steps in a row whose loss
            or gradient norm was NaN/Inf (each is skipped: no update); 0 = no guard (NaNs are applied).
    """

    def __init__(
        self,
        model: str = "bailing-tiny",
        tokenizer: str | None = None,
        dtype: str = "float32",
        model_overrides: dict[str, Any] | None = None,
        seed: int = 0,
        lr: float = 3e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_ratio: float = 0.01,
        min_lr_ratio: float = 0.1,
        schedule_steps: int | None = None,
        optimizer: OptimizerCallable | None = None,
        scheduler: LRSchedulerCallable | None = None,
        router_aux_loss_coef: float | None = None,
        router_z_loss_coef: float | None = None,
        mixed_precision: Literal["none", "bf16"] = "none",
        activation_checkpointing: bool = False,
        attention_mask: Literal["position_ids", "block_diagonal"] = "position_ids",
        loss_chunk_tokens: int = 4096,
        head_chunk_tokens: int | None = None,
        max_nonfinite_steps: int = 3,
    ) -> None:
        super().__init__()
        if mixed_precision not in ("none", "bf16"):
            raise ValueError(f"mixed_precision must be 'none' or 'bf16', got {mixed_precision!r}")
        if attention_mask not in ("position_ids", "block_diagonal"):
            raise ValueError(f"attention_mask must be 'position_ids' or 'block_diagonal', got {attention_mask!r}")
        if not 0.0 <= warmup_ratio < 1.0 or not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"warmup_ratio ({warmup_ratio}) must be in [0, 1) and min_lr_ratio ({min_lr_ratio}) "
                             "in [0, 1]")
        to_dtype(dtype)  # fail early on an unknown dtype or model
        build_config(model, **(model_overrides or {}))
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.model_name, self.dtype_name, self.seed = str(model), dtype, seed
        self.model_overrides = dict(model_overrides or {})
        self.tokenizer_path = tokenizer if tokenizer is not None else _checkpoint_tokenizer(model)
        self.tokenizer = load_tokenizer(self.tokenizer_path)
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.warmup_ratio, self.min_lr_ratio, self.schedule_steps = warmup_ratio, min_lr_ratio, schedule_steps
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.aux_coefs = (router_aux_loss_coef, router_z_loss_coef)
        self.mixed_precision, self.activation_checkpointing = mixed_precision, activation_checkpointing
        self.attention_mode = attention_mask
        if loss_chunk_tokens < 1:
            raise ValueError(f"loss_chunk_tokens must be >= 1, got {loss_chunk_tokens}")
        if head_chunk_tokens is not None and (isinstance(head_chunk_tokens, bool) or head_chunk_tokens < 1):
            raise ValueError(f"head_chunk_tokens must be >= 1 or None, got {head_chunk_tokens!r}")
        self.loss_chunk_tokens, self.head_chunk_tokens = loss_chunk_tokens, head_chunk_tokens
        self.nonfinite = NonFiniteGuard(max_nonfinite_steps, where="SFTModule")
        self._rng_to_restore: dict[str, Any] | None = None
        self.policy = None
        self.sft_tokens_seen = 0  # non-padding tokens trained on, all ranks (token efficiency denominator)
        self.sft_loss_tokens_seen = 0  # assistant (loss) tokens trained on, all ranks
        self._step_acc: torch.Tensor | None = None
        self._step_load: torch.Tensor | None = None
        self._val_acc: torch.Tensor | None = None
        self._last_stats: torch.Tensor | None = None
        self.last_step_metrics: dict[str, float] = {}  # the metrics of the latest optimizer step (all ranks)
        self._step_started = time.perf_counter()

    # ----------------------------------------------------------------------------------- model
    def configure_model(self) -> None:
        if self.policy is not None:
            return
        mesh = getattr(self, "_device_mesh", None)
        if mesh is not None:
            policy = build_sharded_policy(
                lambda: load_policy(self.model_name, dtype=self.dtype_name, tokenizer=self.tokenizer_path,
                                    seed=self.seed, **self.model_overrides)[0],
                build_config(self.model_name, **self.model_overrides), to_dtype(self.dtype_name), mesh,
                device=self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu"),
                mixed_precision=self.mixed_precision)
        else:
            if self.mixed_precision != "none":
                raise ValueError("mixed_precision='bf16' is the FSDP2 (ModelParallelStrategy) setting; with DDP or "
                                 "one device set the Trainer's precision='bf16-mixed' and mixed_precision='none'")
            policy, _ = load_policy(self.model_name, dtype=self.dtype_name, tokenizer=self.tokenizer_path,
                                    seed=self.seed, **self.model_overrides)
        if self.head_chunk_tokens is not None:
            try:
                check_supported(policy)
            except ValueError as err:
                raise ValueError(f"SFTModule(head_chunk_tokens={self.head_chunk_tokens}): {err}; or set "
                                 "head_chunk_tokens: null (the full-logits head)") from err
        if self.activation_checkpointing:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.policy = policy.train()  # from_pretrained returns eval mode (a loaded checkpoint would train without dropout)

    def _forward(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor, dict, torch.Tensor | None]:
        """Summed CE over the batch's targets, its count, router aux losses and expert load [L, E]."""
        targets = batch.targets[0]  # [T]
        keep = (targets != IGNORE_INDEX).nonzero().squeeze(-1)  # [n] positions with a target
        kwargs: dict[str, Any] = dict(input_ids=batch.input_ids, position_ids=batch.position_ids,
                                      use_cache=False)
        moe = num_experts(self.policy) > 0
        if moe:
            kwargs["output_router_logits"] = True
        if self.attention_mode == "block_diagonal":
            impl = self.policy.config._attn_implementation
            if impl not in ("eager", "sdpa"):
                raise ValueError(f"attention_mask='block_diagonal' needs eager or sdpa attention, the policy uses "
                                 f"{impl!r}; use attention_mask='position_ids'")
            dtype = next(self.policy.parameters()).dtype if impl == "eager" else None
            kwargs["attention_mask"] = block_diagonal_mask(batch.doc_ids, dtype)
        if self.head_chunk_tokens is None:
            out = self.policy(**kwargs, logits_to_keep=keep)
            ce_sum = chunked_cross_entropy_sum(out.logits[0], targets[keep], self.loss_chunk_tokens)  # logits [n, V]
        else:  # out.logits: the last position only; the head runs over the target rows chunk by chunk
            out, hidden = forward_hidden(self.policy, **kwargs)  # hidden [1, T, H]
            weight, bias = output_head(self.policy)
            ce_sum = head_cross_entropy_sum(hidden[0].index_select(0, keep), weight, bias, targets[keep],
                                            self.head_chunk_tokens)
        aux, load = {}, None
        if moe:
            aux = router_aux_losses(out, self.policy, token_mask=batch.token_mask,
                                    aux_loss_coef=self.aux_coefs[0], z_loss_coef=self.aux_coefs[1])
            load = expert_load(out.router_logits, top_k(self.policy), batch.token_mask)
        return ce_sum, batch.num_loss_tokens.to(ce_sum.device, torch.float32), aux, load

    # ------------------------------------------------------------------------------ training
    def training_step(self, batch: PackedBatch, batch_idx: int) -> torch.Tensor:
        ce_sum, n_loss, aux, load = self._forward(batch)
        loss = ce_sum + n_loss * aux["loss"] if aux else ce_sum
        if self._step_acc is None:
            self._step_acc = torch.zeros(6, device=ce_sum.device, dtype=torch.float64)
        acc = self._step_acc
        acc[_CE] += ce_sum.detach().double()
        acc[_LOSS_TOKENS] += n_loss.double()
        acc[_TOKENS] += batch.num_tokens.double()
        acc[_PAD] += batch.num_padding.double()
        if aux:
            acc[_LB] += n_loss.double() * aux["load_balance_loss_unscaled"].double()
            acc[_Z] += n_loss.double() * aux["z_loss_unscaled"].double()
        if load is not None:
            self._step_load = load if self._step_load is None else self._step_load + load
        self._last_stats = batch.stats
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Turn the summed micro-batch losses into the token mean of the whole step, then log the step."""
        acc = self._step_acc if self._step_acc is not None else torch.zeros(6, device=self.device, dtype=torch.float64)
        load = self._step_load
        flat = torch.cat([acc, load.flatten().double()]) if load is not None else acc
        totals = self.trainer.strategy.reduce(flat.clone(), reduce_op="sum")
        n_total = float(totals[_LOSS_TOKENS].clamp_min(1.0))
        dp_size = (self.trainer.distributed_sampler_kwargs or {}).get("num_replicas", 1)
        scale = self.trainer.accumulate_grad_batches * dp_size / n_total
        for p in self.policy.parameters():
            if p.requires_grad and p.grad is None:  # idle experts: a zero gradient, as under FSDP2
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in self.policy.parameters() if p.grad is not None]
        for g in grads:
            g.mul_(scale)
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        loss = float(totals[_CE]) / n_total
        applied = self.nonfinite.step_ok(loss, grad_norm, step=self.global_step, device=self.device)
        if not applied:
            NonFiniteGuard.drop_grads(self.policy)  # AdamW skips parameters without a gradient
        now = time.perf_counter()
        elapsed, self._step_started = max(now - self._step_started, 1e-9), now
        tokens, pad = float(totals[_TOKENS]), float(totals[_PAD])
        if applied:
            self.sft_tokens_seen += int(tokens)
            self.sft_loss_tokens_seen += int(totals[_LOSS_TOKENS])
        metrics = {
            "train/loss": loss,
            "train/loss_tokens": float(totals[_LOSS_TOKENS]),
            "train/grad_norm": float(grad_norm),
            "train/lr": optimizer.param_groups[0]["lr"],
            "train/tokens_per_s": tokens / elapsed,
            "train/padding_fraction": pad / max(tokens + pad, 1.0),
            "train/sft_tokens_seen": float(self.sft_tokens_seen),
            **self.nonfinite.metrics("train"),
        }
        if load is not None:
            metrics["train/aux/load_balance"] = float(totals[_LB]) / n_total
            metrics["train/aux/z_loss"] = float(totals[_Z]) / n_total
            ratios = load_imbalance(totals[6:].view_as(load).float())
            metrics["train/expert_load_max_min"] = float(ratios.max())
            for i, r in enumerate(ratios.tolist()):
                metrics[f"train/expert_load_max_min/moe_layer_{i}"] = r
        if self._last_stats is not None:
            for name, value in zip(PackedBatch.STAT_NAMES, self._last_stats.tolist()):
                metrics[f"data/{name}"] = float(value)
        self.last_step_metrics = metrics
        self.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=False)
        self.log("loss", metrics["train/loss"], on_step=True, on_epoch=False, prog_bar=True, logger=False)
        self._step_acc, self._step_load = None, None

    def on_train_epoch_start(self) -> None:
        self._step_started = time.perf_counter()

    # ---------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val_acc = torch.zeros(2, device=self.device, dtype=torch.float64)

    def validation_step(self, batch: PackedBatch, batch_idx: int) -> None:
        ce_sum, n_loss, _, _ = self._forward(batch)
        self._val_acc[0] += ce_sum.double()
        self._val_acc[1] += n_loss.double()

    def on_validation_epoch_end(self) -> None:
        self._step_started = time.perf_counter()  # tokens/s measures training, not validation
        totals = self.trainer.strategy.reduce(self._val_acc.clone(), reduce_op="sum")
        # already summed over ranks: sync_dist averages identical values (and keeps Lightning quiet)
        self.log("val/loss", float(totals[0] / totals[1].clamp_min(1.0)), prog_bar=True, sync_dist=True)
        self.log("val/loss_tokens", float(totals[1]), sync_dist=True)

    # ------------------------------------------------------------------------------ optimizer
    def configure_optimizers(self) -> dict:
        if self.optimizer_factory is not None:
            groups = decay_groups(self.policy, self.weight_decay)
            groups[0].pop("weight_decay")  # matrices: the injected optimizer's own weight_decay
            optimizer = self.optimizer_factory(groups)
        else:
            optimizer = default_adamw(decay_groups(self.policy, self.weight_decay), self.lr, self.weight_decay,
                                      self.betas)
        if self.scheduler_factory is not None:
            scheduler = self.scheduler_factory(optimizer)
        else:
            total = self.schedule_steps or self.trainer.estimated_stepping_batches
            if total in (None, float("inf")) or total <= 0:
                raise ValueError("the cosine schedule needs a length: set trainer.max_steps or "
                                 "model.init_args.schedule_steps (the SFT data stream has no known length)")
            scheduler = warmup_cosine(optimizer, int(total), self.warmup_ratio, self.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["sft_tokens_seen"] = int(self.sft_tokens_seen)
        checkpoint["sft_loss_tokens_seen"] = int(self.sft_loss_tokens_seen)
        checkpoint["sft_nonfinite"] = self.nonfinite.state_dict()
        checkpoint[RNG_KEY] = collect_rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.sft_tokens_seen = int(checkpoint.get("sft_tokens_seen", 0))
        self.sft_loss_tokens_seen = int(checkpoint.get("sft_loss_tokens_seen", 0))
        self.nonfinite.load_state_dict(checkpoint.get("sft_nonfinite", {}))
        self._rng_to_restore = checkpoint.get(RNG_KEY)

    def on_train_start(self) -> None:  # after Lightning built the data iterator (it draws from torch's RNG)
        restore_rng_states(self._rng_to_restore)
        self._rng_to_restore = None
        self._step_started = time.perf_counter()

    def export_hf(self, directory: str | Path, dtype: str | None = None) -> Path | None:
        """Write the policy as an HF checkpoint (weights, config, tokenizer) that `load_policy` and vLLM load,
        plus `ring_lightning_meta.json` with the SFT token counters (`sft_tokens_seen`: the token-efficiency
        denominator RLModule and TokenEfficiency read; `sft_loss_tokens_seen`).

        Collective under FSDP2 (call it on every rank); rank 0 writes. Returns the directory on the
        writing rank, None elsewhere.

        Args:
            directory: output directory (created).
            dtype: dtype of the saved weights; None = the parameter dtype.
        """
        if self.policy is None:
            raise RuntimeError("export_hf: the policy is not built yet (configure_model has not run)")
        state = gather_full_state_dict(self.policy)  # {} on ranks other than 0 under FSDP2
        rank = self.trainer.global_rank if self._trainer is not None else 0
        out = None
        if rank == 0:
            from transformers import AutoModelForCausalLM

            config = self.policy.config
            cpu = AutoModelForCausalLM.from_config(config, dtype=to_dtype(dtype) if dtype else None)
            cpu.load_state_dict(state, strict=True)
            if dtype:
                cpu = cpu.to(to_dtype(dtype))
            out = Path(directory)
            out.mkdir(parents=True, exist_ok=True)
            cpu.save_pretrained(str(out))
            self.tokenizer.save_pretrained(str(out))
            meta = {"sft_tokens_seen": int(self.sft_tokens_seen), "sft_loss_tokens_seen": int(self.sft_loss_tokens_seen)}
            tmp = out / f".tmp-{META_FILE}"
            tmp.write_text(json.dumps(meta) + "\n")
            os.replace(tmp, out / META_FILE)
        if self._trainer is not None:
            self.trainer.strategy.barrier("export_hf")
        return out


def _checkpoint_tokenizer(model: str) -> str | None:
    path = checkpoint_tokenizer(model)
    return None if path is None else str(path)
