"""Tiny policies with tied input/output embeddings (`tie_word_embeddings=True`), as most small real
chat models are (Qwen2.5-0.5B/1.5B, Qwen3-0.6B-4B, Llama-3.2-1B/3B): Qwen2 and Llama built from
config, Qwen3-MoE and BailingMoe (plain head; NormHead has no tied form) from their presets.
head_dim 32 (vLLM's CPU attention); the shipped tokenizer."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ring_lightning.models.loading import load_policy, load_tokenizer
from ring_lightning.models.presets import TINY_VOCAB

TIED = ("qwen2-tied", "qwen3-moe-tied", "llama-tied", "bailing-tied")
_DENSE = dict(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=2048,
              tie_word_embeddings=True, bos_token_id=None, eos_token_id=2, pad_token_id=0)


def tied_policy(kind: str, seed: int = 0):
    """(model, tokenizer) of a tied tiny policy; `kind` in `TIED`."""
    if kind in ("qwen3-moe-tied", "bailing-tied"):
        preset = "qwen3-moe-tiny" if kind == "qwen3-moe-tied" else "bailing-tiny-nonorm"
        model, tok = load_policy(preset, seed=seed, head_dim=32, tie_word_embeddings=True)
    else:
        config = AutoConfig.for_model(kind.removesuffix("-tied"), **_DENSE)
        torch.manual_seed(seed)
        model, tok = AutoModelForCausalLM.from_config(config, dtype=torch.float32), load_tokenizer()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert "lm_head.weight" not in dict(model.named_parameters())  # the trainer yields the embedding only
    return model, tok
