"""HFEngine: batched `transformers.generate` behind the `RolloutEngine` protocol.

Paper: Ring-lite (arXiv 2506.14731), RL section (C3PO): on-policy rollouts with the behaviour
policy's per-token log-probabilities. The report uses a dedicated inference engine; this engine is
our fallback where vLLM is not installed (or cannot run the model) and the reference in tests. It
samples from the trainer's own model object, so it is on-policy by construction.

Choices:
- Prompts are left-padded into batches of at most `max_batch_size` rows (each prompt repeated n
  times). Seeded calls fork the global RNG (`torch.random.fork_rng`), seed it once per call, and
  leave the trainer's RNG untouched; the same prompts, n and seed give the same completions.
- Logprobs of the sampled tokens come from the raw (untempered, unfiltered) logits
  (`output_logits=True`), like vLLM's `raw_logprobs`.
- Finish reason: the completion is cut after the first EOS ("stop"; the EOS token is kept in
  `token_ids` but not in `text`, as in vLLM), or after the token that
  completes the first stop string ("stop"; the text is cut before the stop string, like vLLM), else
  "length". Generation's own `stop_strings` criterion ends a row early.
- `update_weights`: the engine holds the trainer's model object, so new weights are already there;
  tensors that are not the model's own parameters are copied in (by name), the model's own are skipped.
- `copy_model=True` samples from a private copy of the policy instead (twice the model's memory),
  updated by `update_weights` (an exact copy by name). Only then can rollouts run in a background
  thread while the trainer updates its weights (`RolloutDataModule(max_staleness>=1)`, which refuses
  an engine that shares the trainer's model: it would sample from half-updated weights and flip the
  trainer's train/eval mode from another thread). Note: `transformers.generate` samples from torch's
  global RNG, which the two threads share; a seeded call forks it (`fork_rng`), so a background
  rollout is reproducible only if the training step draws no torch random numbers meanwhile
  (RLModule draws none when the policy's dropout is 0, as in the shipped presets; the budget's
  random fill order uses `random.Random`).
- A failure inside `generate` is an `EngineError` naming the batch and, for out-of-memory, the knob
  (`max_batch_size`); the original exception is chained.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from ring_lightning.rollout.engine import Completion, EngineError, FinishReason, SamplingConfig
from ring_lightning.rollout.weight_sync import clean_name

__all__ = ["HFEngine", "eos_token_ids", "no_router_logits"]


def eos_token_ids(tokenizer, config=None) -> tuple[int, ...]:
    """Token ids that end a completion: the tokenizer's eos plus the model config's `eos_token_id`(s)."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    cfg_eos = getattr(config, "eos_token_id", None) if config is not None else None
    for t in cfg_eos if isinstance(cfg_eos, (list, tuple)) else [cfg_eos]:
        if t is not None and int(t) not in ids:
            ids.append(int(t))
    if not ids:
        raise ValueError("no EOS token: neither the tokenizer nor the model config defines eos_token_id")
    return tuple(ids)


def no_router_logits(model: nn.Module) -> dict:
    """MoE models' router logits (for aux losses) are not needed for sampling or scoring; transformers'
    Qwen3-MoE even fails to compute its aux loss inside `generate` (mask / step length mismatch)."""
    return {"output_router_logits": False} if hasattr(getattr(model, "config", None), "output_router_logits") else {}


def _private_copy(model: nn.Module) -> nn.Module:
    """An independent, gradient-free copy of an unsharded model in eval mode (for `copy_model=True`)."""
    import copy

    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in model.parameters()):
        raise ValueError("HFEngine(copy_model=True) needs an unsharded policy (found FSDP2 DTensor parameters); "
                         "use VLLMEngine for sharded policies")
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    for p in model.parameters():
        p.grad = None  # not copied
    try:
        clone = copy.deepcopy(model)
    finally:
        for n, p in model.named_parameters():
            p.grad = grads.get(n)
    clone.requires_grad_(False)
    return clone.eval()


class HFEngine:
    """A `RolloutEngine` running `model.generate` on the given (usually the trainer's) model.

    Args:
        model: a transformers `*ForCausalLM` (shared with the trainer unless `copy_model`) or a directory /
            preset name loaded with `ring_lightning.models.loading.load_policy`.
        tokenizer: its tokenizer (object or directory); required with a model object; with a name, None
            means the checkpoint's own tokenizer (or the shipped one for a preset).
        max_batch_size: rows (prompt x sample) generated together.
        copy_model: sample from a private copy of an in-memory `model` (kept in sync by
            `update_weights`) instead of the model itself; needed for background rollouts
            (`max_staleness >= 1`). Not for FSDP2-sharded policies (use VLLMEngine there).
    """

    def __init__(self, model: nn.Module | str | Path, tokenizer=None, *, max_batch_size: int = 64,
                 copy_model: bool = False):
        from ring_lightning.models.loading import load_policy, load_tokenizer

        tok_path = tokenizer if isinstance(tokenizer, (str, Path)) else None
        loaded_here = isinstance(model, (str, Path))
        if loaded_here:
            model, loaded = load_policy(model, tokenizer=tok_path)
            tokenizer = loaded if tokenizer is None or tok_path is not None else tokenizer
        elif tokenizer is None:
            raise ValueError("HFEngine(model=<nn.Module>) needs its tokenizer (object or directory)")
        elif tok_path is not None:
            tokenizer = load_tokenizer(tok_path)
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        #: True when generation runs on the caller's (the trainer's) model object itself.
        self.shares_trainer_model = isinstance(model, nn.Module) and not copy_model and not loaded_here
        if copy_model and not loaded_here:
            model = _private_copy(model)
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.eos_ids = eos_token_ids(tokenizer, getattr(model, "config", None))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    # ------------------------------------------------------------------ RolloutEngine
    def generate(
        self, prompts: Sequence[Sequence[int]], n: int, sampling: SamplingConfig
    ) -> list[list[Completion]]:
        """Sample `n` completions per prompt; see `RolloutEngine.generate`."""
        from torch.distributed.tensor import DTensor

        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if any(isinstance(p, DTensor) for p in self.model.parameters()):
            raise ValueError("HFEngine needs an unsharded model (found DTensor parameters): ranks would stop "
                             "generating at different steps; use VLLMEngine or give HFEngine a full copy")
        rows = [[int(t) for t in p] for p in prompts for _ in range(n)]
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError(f"HFEngine.generate: prompt {i} is empty")
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed)
                flat: list[Completion] = []
                for start in range(0, len(rows), self.max_batch_size):
                    flat.extend(self._generate_batch(rows[start:start + self.max_batch_size], sampling))
        except (torch.OutOfMemoryError, MemoryError) as e:
            raise EngineError(
                f"HFEngine.generate: out of memory on a batch of up to {self.max_batch_size} rows x "
                f"{max(len(r) for r in rows)} prompt tokens + max_tokens={sampling.max_tokens} ({type(e).__name__}); "
                "lower max_batch_size (HFEngine init args) or the rollout size (max_response_tokens)") from e
        except Exception as e:
            raise EngineError(f"HFEngine.generate failed on {len(rows)} rows (max_tokens={sampling.max_tokens}): "
                              f"{type(e).__name__}: {e}") from e
        finally:
            self.model.train(was_training)
        return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _generate_batch(self, rows: list[list[int]], sampling: SamplingConfig) -> list[Completion]:
        from transformers import GenerationConfig

        device = next(self.model.parameters()).device
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding
            input_ids[i, width - len(r):] = torch.tensor(r)
            attention_mask[i, width - len(r):] = 1
        greedy = sampling.temperature <= 0
        config = GenerationConfig(
            do_sample=not greedy, temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p, top_k=0, max_new_tokens=sampling.max_tokens,
            eos_token_id=list(self.eos_ids), pad_token_id=self.pad_id, output_logits=True,
            return_dict_in_generate=True, stop_strings=list(sampling.stop) or None,
        )
        out = self.model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config,
            tokenizer=self.tokenizer if sampling.stop else None, **no_router_logits(self.model),
        )
        generated = out.sequences[:, width:].cpu()  # [B, T]
        logprobs = torch.stack([  # [B, T]: log p(sampled token) under the raw logits
            torch.log_softmax(step.float(), dim=-1).gather(-1, generated[:, t:t + 1].to(step.device))[:, 0].cpu()
            for t, step in enumerate(out.logits)
        ], dim=1) if out.logits else torch.zeros(len(rows), 0)
        return [self._completion(generated[i].tolist(), logprobs[i].tolist(), sampling) for i in range(len(rows))]

    def _completion(self, ids: list[int], logprobs: list[float], sampling: SamplingConfig) -> Completion:
        end, reason = len(ids), "length"
        for k, t in enumerate(ids):
            if t in self.eos_ids:
                end, reason = k + 1, "stop"
                break
        # like vLLM: an EOS id ends the text without appearing in it (even if it is not a special token)
        text = self.tokenizer.decode(ids[:end - 1] if reason == "stop" else ids[:end], skip_special_tokens=True)
        cut = self._stop_cut(ids[:end], text, sampling.stop)
        if cut is not None:
            end, text, reason = cut[0], cut[1], "stop"
        elif reason == "length" and end < sampling.max_tokens:
            raise RuntimeError(f"HFEngine: a row ended after {end} < max_tokens={sampling.max_tokens} tokens "
                               "without EOS or a stop string")
        finish: FinishReason = reason
        return Completion(token_ids=tuple(ids[:end]), logprobs=tuple(logprobs[:end]), text=text,
                          finish_reason=finish)

    def _stop_cut(self, ids: list[int], text: str, stops: tuple[str, ...]) -> tuple[int, str] | None:
        """(tokens to keep, text before the stop string) for the earliest stop string, if any."""
        hits = [(text.find(s), s) for s in stops if s and s in text]
        if not hits:
            return None
        pos = min(h[0] for h in hits)
        stop = min((s for p, s in hits if p == pos), key=len)

        def contains(k: int) -> bool:
            return stop in self.tokenizer.decode(ids[:k], skip_special_tokens=True)

        lo, hi = 1, len(ids)  # smallest prefix whose text contains the stop string
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if contains(mid) else (mid + 1, hi)
        return lo, text[:pos]

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy weights into the engine's model by name (exact); tensors that are the model's own
        parameters (the engine shares the trainer's model) are skipped."""
        # remove_duplicate=False: a tied head's name (`lm_head.weight`, as in state_dict()) is accepted too
        params = {clean_name(k): p for k, p in self.model.named_parameters(remove_duplicate=False)}
        with torch.no_grad():
            for name, tensor in named_tensors:
                key = clean_name(name)
                if key not in params:
                    raise KeyError(f"HFEngine.update_weights: {name!r} is not a parameter of "
                                   f"{type(self.model).__name__}")
                param = params[key]
                if tensor is param or tensor.data_ptr() == param.data_ptr():
                    continue
                param.copy_(tensor.detach().to(param.dtype))

    def diagnose_sync(self, model: nn.Module) -> list[str]:
        """Where the engine's weights differ from `model`'s (tie status and parameter groups)."""
        from ring_lightning.rollout.sync_diagnosis import compare_tensors, format_groups, tie_status

        if self.model is model:
            return [f"{tie_status(model)}; the engine samples from the trainer's model object itself"]
        mine = {clean_name(k): p.data for k, p in self.model.named_parameters(remove_duplicate=False)}
        theirs = {clean_name(k): p.data for k, p in model.named_parameters(remove_duplicate=False)}
        return [f"{tie_status(model)}; engine copy: {tie_status(self.model).removeprefix('trainer ')}",
                format_groups(compare_tensors(mine, theirs))]

    def sleep(self) -> None:
        """No-op (the model stays where it is)."""

    def wake(self) -> None:
        """No-op (the model stays where it is)."""

    def close(self) -> None:
        """Drop the reference to the model (the trainer keeps its own; a private copy is freed)."""
        self.model = None
