"""Logprobs and entropy at the RL loss positions only: the full [B, T, V] logits never exist.

The RL loss (Ring-lite, arXiv 2506.14731, Eq. 1–6) reads the target logprob and the entropy at the
positions of `MicroBatch.loss_mask` only; `model(...).logits` would build [B, T, V] for prompt and
padding positions too (32k tokens × 126k vocab ≈ 8 GB bf16, plus its gradient). Here the model's
own forward runs with `logits_to_keep=1` (so FSDP2's root hooks, router logits and aux outputs are
those of a plain call), a forward hook takes the decoder's last hidden state, the loss rows are
gathered, and the output head + log-softmax run over `chunk_tokens` rows at a time under
activation checkpointing: at most one chunk's [chunk, V] logits (and their gradient) are live,
in forward and backward. Values at non-loss positions are 0 and must not be used.
Heads: BailingMoe (`head_weight()`, NormHead included) and the HF types in `PLAIN_HEAD_TYPES`,
whose logits are exactly `lm_head(hidden)`; other types, or a config that declares a logit
scaling / soft-capping, are refused by name (their head would need its own rule here).
SFT (`modules/sft.py`, `head_chunk_tokens`) uses the same forward and head with a CE-only chunk
(`head_cross_entropy_sum`); `chunked_cross_entropy_sum` is its float32 CE over given logits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ring_lightning.models.router_losses import num_experts
from ring_lightning.rl.losses import token_logprobs_and_entropy

__all__ = ["PLAIN_HEAD_TYPES", "check_supported", "chunked_cross_entropy_sum", "forward_hidden",
           "head_cross_entropy_sum", "head_logprobs_and_entropy", "masked_logprobs_and_entropy", "output_head"]

# model types whose causal-LM forward computes logits = lm_head(final_norm(hidden)), nothing more
PLAIN_HEAD_TYPES = ("bailing_moe", "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3",
                    "qwen3_moe")
# config fields that change the logits after the head in some HF families (Gemma, Granite, Cohere...)
_LOGIT_TRANSFORM_FIELDS = ("final_logit_softcapping", "logit_softcapping", "logits_scaling",
                           "logit_scale", "output_multiplier_scale")


def check_supported(model: torch.nn.Module) -> None:
    """Raise unless the model's logits are exactly its head applied to the decoder's output."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", type(model).__name__)
    if model_type not in PLAIN_HEAD_TYPES:
        raise ValueError(f"rl/logits.py: model_type {model_type!r} is not supported by the masked-logits "
                         f"path (supported: {', '.join(PLAIN_HEAD_TYPES)}); its forward may transform the "
                         "logits after the head. Add its head rule to rl/logits.py")
    declared = [f for f in _LOGIT_TRANSFORM_FIELDS if getattr(config, f, None) not in (None, 1, 1.0)]
    if declared:
        raise ValueError(f"rl/logits.py: the {model_type!r} config declares {declared}; the masked-logits "
                         "path applies the plain head only; unset it or add the transform to rl/logits.py")


def output_head(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [V, H], bias [V] or None) of the output head, read after the forward (FSDP2 has
    unsharded the root's parameters by then)."""
    if hasattr(model, "head_weight"):  # BailingMoe: NormHead (or the raw lm_head weight)
        return model.head_weight(), None
    head = model.get_output_embeddings()
    return head.weight, getattr(head, "bias", None)


def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    if body is None or body is model:
        raise ValueError(f"rl/logits.py: {type(model).__name__}.get_decoder() gives no decoder body "
                         "(expected the base model, e.g. `model.model`)")
    return body


def forward_hidden(model: torch.nn.Module, **kwargs: Any) -> tuple[Any, torch.Tensor]:
    """`model(**kwargs, logits_to_keep=1)` and the decoder's last hidden state [B, T, H]."""
    captured: list[torch.Tensor] = []

    def grab(_module, _args, output) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    handle = _decoder(model).register_forward_hook(grab)
    try:
        out = model(**kwargs, logits_to_keep=1)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"rl/logits.py: the decoder of {type(model).__name__} ran {len(captured)} times "
                           "in one forward; expected once")
    return out, captured[0]


def _chunk(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
           temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp [n], entropy [n]) of rows h [n, H]; the [n, V] logits live only inside this call."""
    logits = F.linear(h, weight, bias)  # [n, V]
    logp, ent = token_logprobs_and_entropy(logits.unsqueeze(0), targets.unsqueeze(0), temperature)
    return logp[0], ent[0]  # [n], [n]


def head_logprobs_and_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                              targets: torch.Tensor, chunk_tokens: int = 4096, temperature: float = 1.0
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logprob of each target and entropy of each row, `chunk_tokens` rows at a time.

    Args:
        hidden: [N, H] final hidden states of the rows (N may be 0).
        weight: [V, H] output head; bias: [V] or None.
        targets: [N] long, the token each row predicts.
        chunk_tokens: rows per chunk; with autograd on, each chunk is checkpointed, so its backward
            recomputes the [chunk, V] logits instead of keeping every chunk's.
        temperature: divide the logits by this before the softmax.

    Returns:
        (logprobs [N], entropy [N]) in float32 (float64 for float64 weights).
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
    lps, ents = [], []
    for s in range(0, max(hidden.shape[0], 1), chunk_tokens):  # one (maybe empty) chunk at least
        h, t = hidden[s:s + chunk_tokens], targets[s:s + chunk_tokens]
        if torch.is_grad_enabled():
            lp, ent = checkpoint(_chunk, h, weight, bias, t, temperature, use_reentrant=False)
        else:
            lp, ent = _chunk(h, weight, bias, t, temperature)
        lps.append(lp)
        ents.append(ent)
    return torch.cat(lps), torch.cat(ents)  # [N], [N]


def _chunk_ce(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              targets: torch.Tensor) -> torch.Tensor:
    """Summed float32 cross entropy of rows h [n, H]; the [n, V] logits live only inside this call."""
    return _ce_sum(F.linear(h, weight, bias), targets)  # logits [n, V]


def head_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                           targets: torch.Tensor, chunk_tokens: int = 4096) -> torch.Tensor:
    """Summed token cross entropy of `F.linear(hidden, weight, bias)` against `targets`, `chunk_tokens`
    rows at a time (no entropy); with autograd on each chunk is checkpointed, so at most one
    [chunk, V] logits (and its gradient) is live in forward and backward.

    Args:
        hidden: [N, H] final hidden states of the target rows (N may be 0).
        weight: [V, H] output head; bias: [V] or None.
        targets: [N] long, the token each row predicts.
        chunk_tokens: rows per chunk.

    Returns:
        a float32 scalar, as `F.cross_entropy(logits.float(), targets, reduction="sum")`.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
    total = None
    for s in range(0, max(hidden.shape[0], 1), chunk_tokens):  # one (maybe empty) chunk at least
        h, t = hidden[s:s + chunk_tokens], targets[s:s + chunk_tokens]
        if torch.is_grad_enabled():
            ce = checkpoint(_chunk_ce, h, weight, bias, t, use_reentrant=False)
        else:
            ce = _chunk_ce(h, weight, bias, t)
        total = ce if total is None else total + ce
    return total


def _ce_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def chunked_cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
    """Summed token cross entropy of `logits` [n, V] (any dtype) against `targets` [n], in float32,
    `chunk_tokens` rows at a time; each chunk's float32 copy is recomputed in backward."""
    if logits.shape[0] <= chunk_tokens:
        return _ce_sum(logits, targets)
    total = logits.new_zeros((), dtype=torch.float32)
    for start in range(0, logits.shape[0], chunk_tokens):
        end = start + chunk_tokens
        total = total + checkpoint(_ce_sum, logits[start:end], targets[start:end], use_reentrant=False)
    return total


def masked_logprobs_and_entropy(model: torch.nn.Module, mb: Any, *, with_aux: bool = False,
                                chunk_tokens: int = 4096, temperature: float = 1.0
                                ) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Forward one micro-batch; logprobs and entropy at its loss positions (0 elsewhere).

    Args:
        model: a causal LM (BailingMoe or an HF type of `PLAIN_HEAD_TYPES`), FSDP2-sharded or not.
        mb: a `MicroBatch` (`rl/batch.py`): input/target ids, attention mask, position ids, loss mask.
        with_aux: pass `output_router_logits=True` to a MoE model (for `router_aux_losses(out, ...)`).
        chunk_tokens: loss rows per head chunk (memory: one [chunk, V] logits + gradient at a time).
        temperature: as `token_logprobs_and_entropy`.

    Returns:
        (out, logprobs [B, T], entropy [B, T]): `out` is the model's output (router logits, aux
        losses) with `out.logits` only the last position's [B, 1, V]; logprobs / entropy are those of
        `token_logprobs_and_entropy(full_logits, mb.target_ids)` where `mb.loss_mask`, else 0.
    """
    check_supported(model)
    kwargs: dict[str, Any] = dict(input_ids=mb.input_ids, attention_mask=mb.attention_mask,
                                  position_ids=mb.position_ids, use_cache=False)
    if with_aux and num_experts(model) > 0:
        kwargs["output_router_logits"] = True
    out, hidden = forward_hidden(model, **kwargs)  # hidden [B, T, H]
    B, T, H = hidden.shape
    idx = mb.loss_mask.reshape(-1).to(hidden.device).nonzero().squeeze(-1)  # [N]
    rows = hidden.reshape(B * T, H).index_select(0, idx)  # [N, H]
    targets = mb.target_ids.reshape(-1).to(hidden.device).index_select(0, idx)  # [N]
    weight, bias = output_head(model)
    lp, ent = head_logprobs_and_entropy(rows, weight, bias, targets, chunk_tokens, temperature)
    zeros = lp.new_zeros(B * T)  # [B*T]
    logp = zeros.index_put((idx,), lp).reshape(B, T)  # [B, T]
    entropy = zeros.index_put((idx,), ent).reshape(B, T)  # [B, T]
    return out, logp, entropy
