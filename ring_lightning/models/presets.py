"""Named model configs: tiny ones for tests and the quickstart (built from config, no download), and
the Ring-lite-2507 shape for GPU runs. Every entry names its `model_type`; the rest are config fields.
"""

from __future__ import annotations

from typing import Any

# vocab 1105 = the shipped tokenizer (ring_lightning/assets/tokenizer); rounded up to 1152.
TINY_VOCAB = 1152

_BAILING_TINY: dict[str, Any] = dict(
    model_type="bailing_moe", vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128,
    moe_intermediate_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
    head_dim=32, num_experts=8, num_experts_per_tok=2, num_shared_experts=1, norm_topk_prob=True,
    first_k_dense_replace=1, norm_head=True, rope_theta=600000.0, max_position_embeddings=2048,
    rms_norm_eps=1e-6, initializer_range=0.02, tie_word_embeddings=False, use_bias=False,
    use_qkv_bias=False, router_aux_loss_coef=1e-5, router_z_loss_coef=1e-7, bos_token_id=None,
    eos_token_id=2, pad_token_id=0,
)

PRESETS: dict[str, dict[str, Any]] = {
    # HF Qwen3-MoE, tiny: a non-native policy for tests (any HF causal LM works the same way).
    "qwen3-moe-tiny": dict(
        model_type="qwen3_moe", vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128,
        moe_intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1,
        max_position_embeddings=2048, tie_word_embeddings=False, output_router_logits=True,
        router_aux_loss_coef=1e-5, bos_token_id=None, eos_token_id=2, pad_token_id=0,
    ),
    # HF dense Qwen3, tiny.
    "qwen3-tiny": dict(
        model_type="qwen3", vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        max_position_embeddings=2048, tie_word_embeddings=False, bos_token_id=None, eos_token_id=2,
        pad_token_id=0,
    ),
    # Native BailingMoe (Ling / Ring architecture), tiny: every architectural feature on (GQA, shared
    # expert, a dense first layer, NormHead) at ~0.4M parameters. head_dim 32 because vLLM's CPU
    # attention supports head sizes 32, 64, 80, 96, 112, 128, ... only. Variants: pass overrides to
    # load_policy/build_config, e.g. norm_head=False, num_shared_experts=0, first_k_dense_replace=0.
    "bailing-tiny": dict(_BAILING_TINY),
    # bailing-tiny without NormHead (plain lm_head), for tests of both head variants.
    "bailing-tiny-nonorm": {**_BAILING_TINY, "norm_head": False},
    # The CPU quickstart's model (configs/quickstart): bailing-tiny at hidden size 128 (~1.0M parameters)
    # with a plain lm_head. Measured on the quickstart's synthetic SFT data: NormHead (unit-norm head
    # rows) caps the logit scale near |h| ~ sqrt(hidden), and at these sizes the model then stays close
    # to a unigram fit for hundreds of steps; without it the answer format is learned in ~100 steps,
    # and hidden 128 learns the addition task markedly faster per CPU-second than hidden 64.
    "bailing-quickstart": {**_BAILING_TINY, "hidden_size": 128, "intermediate_size": 256,
                           "moe_intermediate_size": 64, "norm_head": False},
    # BailingMoe for benchmarks: 8 layers, hidden 512, 32 experts top-2 (~65M parameters, ~14M active).
    "bailing-mid": {**_BAILING_TINY, "hidden_size": 512, "intermediate_size": 1408, "moe_intermediate_size": 160,
                    "num_hidden_layers": 8, "num_attention_heads": 8, "head_dim": 64, "num_experts": 32,
                    "max_position_embeddings": 4096},
    # Ring-lite-2507 = Ling-lite-1.5 architecture (16.8B total / 2.75B active), as in the published
    # Ling-lite-1.5 config.json: every layer is MoE (first_k_dense_replace=0), plain lm_head
    # (norm_head=False), 2 shared experts, 64 routed top-6. The parameter count checks out: 28 x
    # (64 x 3 x 2048 x 1408 + 3 x 2048 x 2816 + 2048 x 3072 + 2048 x 2048 + 64 x 2048) + 2 x 126464 x 2048
    # = 16.8B. Use with the real tokenizer (eos/pad 126081); build on GPU only.
    "ring-lite-2507": dict(
        model_type="bailing_moe", vocab_size=126464, hidden_size=2048, intermediate_size=1408,
        moe_intermediate_size=1408, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=4,
        head_dim=128, num_experts=64, num_experts_per_tok=6, num_shared_experts=2, norm_topk_prob=True,
        first_k_dense_replace=0, norm_head=False, rope_theta=600000.0, max_position_embeddings=32768,
        rms_norm_eps=1e-6, initializer_range=0.006, tie_word_embeddings=False, use_bias=False,
        use_qkv_bias=False, embedding_dropout=0.0, attention_dropout=0.0, output_dropout=0.0,
        router_aux_loss_coef=1e-5, router_z_loss_coef=1e-7, bos_token_id=None, eos_token_id=126081,
        pad_token_id=126081,
    ),
}
