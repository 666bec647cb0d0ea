"""Named model configs: tiny ones for tests and the quickstart (built from config, no download), and
the Ring-lite-2507 shape for GPU runs. Every entry names its `model_type`; the rest are config fields.
"""

from __future__ import annotations

from typing import Any

# vocab 1105 = the shipped tokenizer (ring_lightning/assets/tokenizer); rounded up to 1152.
TINY_VOCAB = 1152

PRESETS: dict[str, dict[str, Any]] = {
    # HF Qwen3-MoE, tiny: a non-native policy for tests (any HF causal LM works the same way).
    "qwen3-moe-tiny": dict(
        model_type="qwen3_moe", vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128,
        moe_intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1,
        max_position_embeddings=2048, tie_word_embeddings=False, output_router_logits=True,
        router_aux_loss_coef=1e-5, bos_token_id=None, eos_token_id=2, pad_token_id=0,
    ),
    # HF dense Qwen3, tiny.
    "qwen3-tiny": dict(
        model_type="qwen3", vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=2048, tie_word_embeddings=False, bos_token_id=None, eos_token_id=2,
        pad_token_id=0,
    ),
}
