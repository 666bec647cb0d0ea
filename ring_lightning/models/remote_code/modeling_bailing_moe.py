"""BailingMoe (Ling / Ring architecture) as a transformers PreTrainedModel, for training and HF generate.

Standalone (imports torch and transformers only, plus its two sibling files): ring_lightning trains
with these classes and copies the three files into every export, so
`AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True)` runs this same code anywhere.

Ring-lite (arXiv 2506.14731) is Ling-lite (16.8B total / 2.75B active: 28 layers, hidden 2048, GQA
16/4 heads, 64 routed experts top-6 + 2 shared experts, softmax router) trained by distillation + RL.
The architecture here is the one of the published checkpoints as served by vLLM
(`vllm/model_executor/models/bailing_moe.py`): parameter names, config field names and the math
(fused `query_key_value` with GQA and neox RoPE on the first `rotary_dim` dims, `dense` output,
RMSNorm, top-k softmax router renormalised when `norm_topk_prob`, `routed_scaling_factor` on the
routed sum, one shared-expert MLP of width `num_shared_experts * moe_intermediate_size`, dense MLPs
for the first `first_k_dense_replace` layers, NormHead).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask, find_packed_sequence_indices, packed_sequence_mask_function
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen3_moe.modeling_qwen3_moe import apply_rotary_pos_emb, eager_attention_forward

from .configuration_bailing_moe import BailingMoeConfig
from .routing_bailing_moe import EXPERT_IMPLEMENTATIONS, load_balance_loss, router_z_loss

__all__ = ["BailingMoeConfig", "BailingMoeModel", "BailingMoeForCausalLM", "BailingMoeCausalLMOutput"]


class BailingMoeRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


class BailingMoeRotaryEmbedding(nn.Module):
    """cos/sin tables for neox-style RoPE over the first `config.rotary_dim_resolved` dims of each head."""

    def __init__(self, config: BailingMoeConfig):
        super().__init__()
        self.config = config
        self.max_seq_len_cached = self.original_max_seq_len = config.max_position_embeddings
        self.rope_type = config.rope_parameters.get("rope_type", "default")
        init_fn = self.compute_default_rope_parameters if self.rope_type == "default" else ROPE_INIT_FUNCTIONS[
            self.rope_type]
        inv_freq, self.attention_scaling = init_fn(config)
        if 2 * inv_freq.numel() != config.rotary_dim_resolved:
            raise ValueError(f"rope_parameters {config.rope_parameters} give {2 * inv_freq.numel()} rotary dims "
                             f"but the config asks for {config.rotary_dim_resolved}; "
                             "set partial_rotary_factor consistently")
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)
        self.original_inv_freq = nn.Buffer(inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: BailingMoeConfig, device=None, **kwargs) -> tuple[torch.Tensor, float]:
        dim = config.rotary_dim_resolved
        base = config.rope_parameters["rope_theta"]
        return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float, device=device) / dim)), 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(x.device)  # [B, T, R/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, R]
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


class BailingMoeAttention(nn.Module):
    """GQA attention with a fused `query_key_value` projection and a `dense` output projection."""

    def __init__(self, config: BailingMoeConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.head_dim = config.head_dim
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_kv_heads
        self.rotary_dim = config.rotary_dim_resolved
        self.scaling = self.head_dim ** -0.5
        self.is_causal = True
        self.query_key_value = nn.Linear(config.hidden_size, (self.num_heads + 2 * self.num_kv_heads) * self.head_dim,
                                         bias=config.use_bias or config.use_qkv_bias)
        self.dense = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.use_bias)

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                attention_mask: torch.Tensor | None, past_key_values: Cache | None = None, **kwargs) -> torch.Tensor:
        b, t, _ = hidden_states.shape
        qkv = self.query_key_value(hidden_states).view(b, t, self.num_heads + 2 * self.num_kv_heads, self.head_dim)
        q, k, v = qkv.split([self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, T, D]
        cos, sin = position_embeddings  # [B, T, R]
        r = self.rotary_dim
        q_rot, k_rot = apply_rotary_pos_emb(q[..., :r], k[..., :r], cos, sin)
        q = torch.cat((q_rot, q[..., r:]), dim=-1) if r < self.head_dim else q_rot
        k = torch.cat((k_rot, k[..., r:]), dim=-1) if r < self.head_dim else k_rot
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation,
                                                                    eager_attention_forward)
        out, _ = attention(self, q, k, v, attention_mask, scaling=self.scaling,
                           dropout=self.config.attention_dropout if self.training else 0.0, **kwargs)
        return self.dense(out.reshape(b, t, -1).contiguous())


class BailingMoeMLP(nn.Module):
    """SwiGLU MLP: `down_proj(act(gate_proj(x)) * up_proj(x))`."""

    def __init__(self, config: BailingMoeConfig, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, intermediate_size, bias=config.use_bias)
        self.up_proj = nn.Linear(config.hidden_size, intermediate_size, bias=config.use_bias)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=config.use_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class BailingMoeGate(nn.Module):
    """Router: logits = x @ weight.T; fp32 softmax; top-k; renormalised when `norm_topk_prob`."""

    def __init__(self, config: BailingMoeConfig):
        super().__init__()
        self.top_k, self.norm_topk_prob = config.num_experts_per_tok, config.norm_topk_prob
        self.fp32_logits = config.router_dtype == "fp32"
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.fp32_logits:
            logits = F.linear(x.float(), self.weight.float())  # [N, E]
        else:
            logits = F.linear(x, self.weight)  # [N, E]
        probs = torch.softmax(logits.float(), dim=-1)  # [N, E]
        topk_weight, topk_idx = torch.topk(probs, self.top_k, dim=-1)  # [N, K]
        if self.norm_topk_prob:
            topk_weight = topk_weight / topk_weight.sum(dim=-1, keepdim=True)
        return logits, topk_idx, topk_weight


class BailingMoeSparseMoeBlock(nn.Module):
    """Routed experts (`experts.{i}`) + optional shared experts (`shared_experts`), router at `gate`."""

    def __init__(self, config: BailingMoeConfig):
        super().__init__()
        self.config = config
        self.gate = BailingMoeGate(config)
        self.experts = nn.ModuleList(BailingMoeMLP(config, config.moe_intermediate_size)
                                     for _ in range(config.num_experts))
        self.shared_experts = None
        if config.num_shared_experts > 0:
            width = getattr(config, "moe_shared_expert_intermediate_size", None) or config.moe_intermediate_size
            self.shared_experts = BailingMoeMLP(config, width * config.num_shared_experts)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])  # [N, H]
        logits, topk_idx, topk_weight = self.gate(x)
        routed = EXPERT_IMPLEMENTATIONS[self.config.moe_implementation](x, topk_idx, topk_weight, self.experts)
        if self.config.routed_scaling_factor != 1.0:
            routed = routed * self.config.routed_scaling_factor
        if self.shared_experts is not None:
            routed = routed + self.shared_experts(x)
        return routed.reshape(shape), logits


class BailingMoeDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: BailingMoeConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = BailingMoeRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attention = BailingMoeAttention(config, layer_idx)
        self.post_attention_layernorm = BailingMoeRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.is_moe = layer_idx >= config.first_k_dense_replace
        self.mlp = BailingMoeSparseMoeBlock(config) if self.is_moe else BailingMoeMLP(config, config.intermediate_size)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                past_key_values: Cache | None = None, use_cache: bool | None = False,
                position_ids: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        residual = hidden_states
        hidden_states = self.attention(self.input_layernorm(hidden_states), position_embeddings, attention_mask,
                                       past_key_values=past_key_values, position_ids=position_ids, **kwargs)
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        router_logits = None
        if self.is_moe:
            hidden_states, router_logits = self.mlp(hidden_states)
        else:
            hidden_states = self.mlp(hidden_states)
        return residual + hidden_states, router_logits


class BailingMoePreTrainedModel(PreTrainedModel):
    config_class = BailingMoeConfig
    config: BailingMoeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BailingMoeDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, BailingMoeGate):
            module.weight.normal_(mean=0.0, std=self.config.initializer_range)


class BailingMoeModel(BailingMoePreTrainedModel):
    def __init__(self, config: BailingMoeConfig):
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        self.layers = nn.ModuleList(BailingMoeDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = BailingMoeRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = BailingMoeRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.word_embeddings

    def set_input_embeddings(self, value):
        self.word_embeddings = value

    def _mask(self, inputs_embeds, attention_mask, past_key_values, position_ids):
        if attention_mask is not None and attention_mask.ndim == 4:
            if attention_mask.dtype == torch.bool and self.config._attn_implementation == "eager":
                neg = torch.finfo(inputs_embeds.dtype).min
                attention_mask = torch.zeros(attention_mask.shape, dtype=inputs_embeds.dtype,
                                             device=inputs_embeds.device).masked_fill(~attention_mask, neg)
            return attention_mask
        and_fn = None
        if past_key_values is None or past_key_values.get_seq_length() == 0:
            docs = find_packed_sequence_indices(position_ids.expand(inputs_embeds.shape[0], -1))
            and_fn = packed_sequence_mask_function(docs) if docs is not None else None
        return create_causal_mask(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  past_key_values=past_key_values, position_ids=position_ids,
                                  and_mask_function=and_fn)

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values: Cache | None = None,
                inputs_embeds: torch.FloatTensor | None = None, use_cache: bool | None = None,
                output_router_logits: bool = False, output_hidden_states: bool | None = None,
                **kwargs) -> MoeModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if kwargs.pop("output_attentions", False):
            raise ValueError("BailingMoeModel does not return attention weights; call it without output_attentions")
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        if position_ids is None:
            past = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past).unsqueeze(0)
        mask = self._mask(inputs_embeds, attention_mask, past_key_values, position_ids)
        hidden_states = self.embedding_dropout(inputs_embeds)
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        all_router_logits, all_hidden = [], []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden_states)
            hidden_states, router_logits = layer(hidden_states, attention_mask=mask,
                                                 position_embeddings=position_embeddings, position_ids=position_ids,
                                                 past_key_values=past_key_values, use_cache=use_cache, **kwargs)
            if router_logits is not None and output_router_logits:
                all_router_logits.append(router_logits)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden.append(hidden_states)
        return MoeModelOutputWithPast(last_hidden_state=hidden_states, past_key_values=past_key_values,
                                      hidden_states=tuple(all_hidden) if output_hidden_states else None,
                                      router_logits=tuple(all_router_logits) if output_router_logits else None)


@dataclass
class BailingMoeCausalLMOutput(MoeCausalLMOutputWithPast):
    """`MoeCausalLMOutputWithPast` plus `z_loss`. `aux_loss` / `z_loss` are unscaled; `loss` (when labels are
    given) = CE + router_aux_loss_coef * aux_loss + router_z_loss_coef * z_loss."""

    z_loss: torch.FloatTensor | None = None


class BailingMoeForCausalLM(BailingMoePreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.word_embeddings.weight"}

    def __init__(self, config: BailingMoeConfig):
        super().__init__(config)
        self.model = BailingMoeModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def head_weight(self) -> torch.Tensor:
        """The effective output matrix [V, H]: NormHead (L2 over the vocab dim, norm detached) or raw."""
        weight = self.lm_head.weight
        if not self.config.norm_head:
            return weight
        norm = weight.detach().float().norm(p=2, dim=0, keepdim=True).clamp_min(1e-7)  # [1, H]
        return (weight.float() / norm).to(weight.dtype)

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values: Cache | None = None,
                inputs_embeds: torch.FloatTensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, output_router_logits: bool | None = None,
                logits_to_keep: int | torch.Tensor = 0, **kwargs) -> BailingMoeCausalLMOutput:
        """Standard HF causal-LM forward. `output_router_logits` (None) = `config.output_router_logits or
        self.training`; with router logits the unscaled `aux_loss` / `z_loss` are returned and, with
        `labels`, added to `loss` scaled by `router_aux_loss_coef` / `router_z_loss_coef`. A 2D
        `attention_mask` covering exactly the input tokens excludes padding from the router losses."""
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits or self.training
        return_dict = kwargs.pop("return_dict", None)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                         output_router_logits=output_router_logits, **kwargs)
        hidden = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = F.linear(hidden[:, keep, :], self.head_weight())
        loss = aux_loss = z_loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config.vocab_size, **kwargs)
        if output_router_logits and out.router_logits:
            token_mask = None
            if attention_mask is not None and attention_mask.ndim == 2 and attention_mask.shape[1] == hidden.shape[1]:
                token_mask = attention_mask
            aux_loss = load_balance_loss(out.router_logits, self.config.num_experts_per_tok, token_mask)
            z_loss = router_z_loss(out.router_logits, token_mask)
            if loss is not None:
                loss = loss + self.config.router_aux_loss_coef * aux_loss + self.config.router_z_loss_coef * z_loss
        result = BailingMoeCausalLMOutput(loss=loss, aux_loss=aux_loss, z_loss=z_loss, logits=logits,
                                          past_key_values=out.past_key_values, hidden_states=out.hidden_states,
                                          router_logits=out.router_logits)
        return result.to_tuple() if return_dict is False else result
