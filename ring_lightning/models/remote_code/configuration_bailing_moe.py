"""BailingMoeConfig: the config of the Ling / Ring MoE checkpoints (`model_type: "bailing_moe"`).

Standalone (imports only transformers): ring_lightning copies this file into every BailingMoe export
(config.json `auto_map`), so `AutoConfig.from_pretrained(export, trust_remote_code=True)` needs no
ring_lightning. Field names are those of the published `config.json` files (inclusionAI/Ling-lite-1.5,
Ring-lite, Ring-lite-2507) and of the fields vLLM's `BailingMoeForCausalLM` reads; the defaults
reproduce the Ling-lite-1.5 / Ring-lite architecture (16.8B total, 2.75B active), so
`BailingMoeConfig()` is that shape. Fields ring_lightning adds (`router_z_loss_coef`,
`moe_implementation`) are ignored by vLLM. See `modeling_bailing_moe.py` for the model.
"""

from __future__ import annotations

from transformers import PretrainedConfig
from transformers.modeling_rope_utils import RopeParameters

MOE_IMPLEMENTATIONS = ("grouped", "grouped_mm", "naive")


class BailingMoeConfig(PretrainedConfig):
    """Config of a BailingMoe causal LM.

    Args:
        vocab_size: vocabulary size (embedding and lm_head rows).
        hidden_size: model width H.
        intermediate_size: SwiGLU width of the dense MLPs of the first `first_k_dense_replace` layers.
        moe_intermediate_size: SwiGLU width of each routed expert.
        num_hidden_layers: decoder layers.
        num_attention_heads: query heads.
        num_key_value_heads: key/value heads (GQA); None = num_attention_heads.
        head_dim: per-head width; None = hidden_size // num_attention_heads.
        hidden_act: MLP activation (SwiGLU gate).
        use_qkv_bias: bias on `attention.query_key_value` (also on when `use_bias`).
        use_bias: bias on `attention.dense` and on every MLP projection (vLLM's reading of the field).
        rms_norm_eps: RMSNorm epsilon.
        norm_head: NormHead — lm_head weight L2-normalised over the vocab dim at every forward.
        tie_word_embeddings: tie lm_head to the input embedding.
        embedding_dropout: dropout after the embedding (training only).
        attention_dropout: attention-probability dropout (training only).
        output_dropout: kept for checkpoint compatibility; unused (as in vLLM).
        initializer_range: std of the normal init of linear, embedding and router weights.
        max_position_embeddings: longest sequence the RoPE tables are sized for.
        rope_parameters: RoPE settings ({"rope_type", "rope_theta", ...}); a legacy `rope_theta` /
            `rope_scaling` key is converted into it. Default theta 600000 (Ling-lite).
        partial_rotary_factor: fraction of head_dim that is rotated (when `rotary_dim` is None).
        rotary_dim: rotated dims per head; None = int(head_dim * partial_rotary_factor).
        use_cache: return a KV cache at inference (generation).
        num_experts: routed experts per MoE layer.
        num_shared_experts: shared experts, fused as one MLP of width
            num_shared_experts * moe_intermediate_size; 0 = none. (A checkpoint may carry an extra
            `moe_shared_expert_intermediate_size` key, which then replaces moe_intermediate_size here; it
            is not a declared field because vLLM tests for the attribute's presence, not its value.)
        num_experts_per_tok: experts each token is routed to (top-k).
        norm_topk_prob: renormalise the top-k softmax probabilities to sum to 1.
        first_k_dense_replace: the first k layers use a dense MLP instead of MoE.
        score_function: router scoring; only "softmax" (Ling-lite / Ring-lite) is supported.
        routed_scaling_factor: multiplier on the routed-expert sum (not on shared experts).
        router_dtype: None = router matmul in the model dtype; "fp32" = in fp32 (as vLLM).
        n_group: grouped top-k (BailingMoeV2); must be None.
        topk_group: grouped top-k (BailingMoeV2); must be None.
        moe_router_enable_expert_bias: sigmoid-router expert bias (BailingMoeV2); must be False.
        use_qk_norm: q/k norms (BailingMoeV2); must be False.
        output_router_logits: always return router logits (else only in training mode).
        router_aux_loss_coef: coefficient of the load-balance loss added to `loss`.
        router_z_loss_coef: coefficient of the router z-loss added to `loss`.
        moe_implementation: routed-expert compute: "grouped" (sort by expert, default), "grouped_mm"
            (torch._grouped_mm; bias-free experts only) or "naive" (every expert on every token).
        pad_token_id: padding token id.
        bos_token_id: beginning-of-sequence id (None = none).
        eos_token_id: end-of-sequence id(s).
    """

    model_type = "bailing_moe"
    keys_to_ignore_at_inference = ["past_key_values"]
    default_theta = 600_000.0

    vocab_size: int = 126464
    hidden_size: int = 2048
    intermediate_size: int = 1408
    moe_intermediate_size: int = 1408
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int | None = 4
    head_dim: int | None = None
    hidden_act: str = "silu"
    use_qkv_bias: bool = False
    use_bias: bool = False
    rms_norm_eps: float = 1e-6
    norm_head: bool = False
    tie_word_embeddings: bool = False
    embedding_dropout: float = 0.0
    attention_dropout: float = 0.0
    output_dropout: float = 0.0
    initializer_range: float = 0.006
    max_position_embeddings: int = 32768
    rope_parameters: RopeParameters | dict | None = None
    partial_rotary_factor: float = 1.0
    rotary_dim: int | None = None
    use_cache: bool = True
    num_experts: int = 64
    num_shared_experts: int = 2
    num_experts_per_tok: int = 6
    norm_topk_prob: bool = True
    first_k_dense_replace: int = 0
    score_function: str = "softmax"
    routed_scaling_factor: float = 1.0
    router_dtype: str | None = None
    n_group: int | None = None
    topk_group: int | None = None
    moe_router_enable_expert_bias: bool = False
    use_qk_norm: bool = False
    output_router_logits: bool = False
    router_aux_loss_coef: float = 1e-5
    router_z_loss_coef: float = 1e-7
    moe_implementation: str = "grouped"
    pad_token_id: int | None = 126081
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = 126081

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.num_shared_experts = self.num_shared_experts or 0
        super().__post_init__(**kwargs)
        self._check()

    @property
    def rotary_dim_resolved(self) -> int:
        """Rotated dims per head, as vLLM computes them."""
        if self.rotary_dim is not None:
            return int(self.rotary_dim)
        return int(self.head_dim * (self.partial_rotary_factor or 1.0))

    def _check(self) -> None:
        def bad(field: str, why: str):
            raise ValueError(f"BailingMoeConfig.{field}={getattr(self, field)!r}: {why}")

        if self.score_function not in (None, "softmax"):
            bad("score_function", "only the softmax router of Ling-lite / Ring-lite is supported")
        if self.n_group is not None or self.topk_group is not None:
            bad("n_group", "grouped top-k routing (BailingMoeV2) is not supported; leave n_group/topk_group unset")
        if self.moe_router_enable_expert_bias:
            bad("moe_router_enable_expert_bias", "expert-bias routing (BailingMoeV2) is not supported")
        if self.use_qk_norm:
            bad("use_qk_norm", "q/k norms (BailingMoeV2) are not supported")
        if self.router_dtype not in (None, "fp32"):
            bad("router_dtype", "expected None or 'fp32'")
        if self.moe_implementation not in MOE_IMPLEMENTATIONS:
            bad("moe_implementation", f"expected one of {MOE_IMPLEMENTATIONS}")
        if self.num_attention_heads % self.num_key_value_heads:
            bad("num_key_value_heads", f"must divide num_attention_heads={self.num_attention_heads}")
        if not 0 < self.num_experts_per_tok <= self.num_experts:
            bad("num_experts_per_tok", f"must be in [1, num_experts={self.num_experts}]")
        if not 0 < self.rotary_dim_resolved <= self.head_dim or self.rotary_dim_resolved % 2:
            bad("rotary_dim", f"resolved to {self.rotary_dim_resolved}; must be even and <= head_dim={self.head_dim}")
        if not 0 <= self.first_k_dense_replace <= self.num_hidden_layers:
            bad("first_k_dense_replace", f"must be in [0, num_hidden_layers={self.num_hidden_layers}]")
