"""BailingMoe (native Ling / Ring architecture): training forward/backward, checkpoint names and round
trip, KV-cache generation, expert-compute paths, packed sequences, NormHead, config validation."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

from ring_lightning.models import BailingMoeConfig, BailingMoeForCausalLM
from ring_lightning.models.loading import build_config, load_policy

VOCAB = 1105  # real tokens of the shipped tokenizer


def tiny(seed: int = 0, **overrides) -> BailingMoeForCausalLM:
    model, _ = load_policy("bailing-tiny", seed=seed, **overrides)
    return model.eval()


def tokens(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def expected_checkpoint_names(config: BailingMoeConfig) -> set[str]:
    """The parameter names of the published Ling / Ring checkpoints (what vLLM's loader expects)."""
    names = {"model.word_embeddings.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}"
        names |= {f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight",
                  f"{p}.attention.query_key_value.weight", f"{p}.attention.dense.weight"}
        if i < config.first_k_dense_replace:
            names |= {f"{p}.mlp.{proj}.weight" for proj in ("gate_proj", "up_proj", "down_proj")}
            continue
        names.add(f"{p}.mlp.gate.weight")
        for e in range(config.num_experts):
            names |= {f"{p}.mlp.experts.{e}.{proj}.weight" for proj in ("gate_proj", "up_proj", "down_proj")}
        if config.num_shared_experts:
            names |= {f"{p}.mlp.shared_experts.{proj}.weight" for proj in ("gate_proj", "up_proj", "down_proj")}
    return names


def test_preset_is_registered_and_has_every_feature():
    config = build_config("bailing-tiny")
    assert isinstance(config, BailingMoeConfig) and config.model_type == "bailing_moe"
    assert AutoConfig.for_model("bailing_moe").__class__ is BailingMoeConfig
    assert config.norm_head and config.first_k_dense_replace == 1 and config.num_shared_experts == 1
    assert config.num_key_value_heads < config.num_attention_heads  # GQA
    assert (config.eos_token_id, config.pad_token_id, config.vocab_size) == (2, 0, 1152)
    model = tiny()
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    assert set(model.state_dict()) == expected_checkpoint_names(config)


def test_ring_lite_preset_matches_the_published_size():
    config = build_config("ring-lite-2507")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 1) == 16.8
    assert set(model.state_dict()) == expected_checkpoint_names(config)
    assert model.model.layers[0].attention.query_key_value.weight.shape == (3072, 2048)
    assert model.model.layers[0].mlp.shared_experts.gate_proj.weight.shape == (2816, 2048)


def test_training_forward_backward_reaches_router_experts_and_shared_experts():
    model = tiny().train()
    ids = tokens(2, 16)
    out = model(ids, labels=ids)
    assert out.router_logits is not None and len(out.router_logits) == 2  # the two MoE layers
    assert out.router_logits[0].shape == (32, 8)
    assert torch.isfinite(out.aux_loss) and torch.isfinite(out.z_loss)
    ce = model.loss_function(out.logits, ids, model.config.vocab_size)
    expected = ce + 1e-5 * out.aux_loss + 1e-7 * out.z_loss
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ("model.layers.1.mlp.gate.weight", "model.layers.2.mlp.shared_experts.down_proj.weight",
                 "model.layers.0.mlp.up_proj.weight", "lm_head.weight", "model.word_embeddings.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    routed = [n for n in grads if ".mlp.experts." in n]
    got_grad = [n for n in routed if grads[n] is not None and grads[n].abs().sum() > 0]
    assert len(got_grad) >= len(routed) // 2  # 32 tokens x top-2 over 8 experts: most experts are hit


def test_eval_forward_has_no_router_outputs_by_default():
    out = tiny()(tokens(1, 8))
    assert out.router_logits is None and out.aux_loss is None and out.loss is None


def test_save_pretrained_round_trip_is_exact_and_uses_checkpoint_names(tmp_path):
    model = tiny(seed=3)
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == expected_checkpoint_names(model.config)
    config_json = (tmp_path / "config.json").read_text()
    assert '"model_type": "bailing_moe"' in config_json and '"BailingMoeForCausalLM"' in config_json
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True).eval()
    assert isinstance(loaded, BailingMoeForCausalLM)
    saved, restored = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(saved[k], restored[k]) for k in saved)
    ids = tokens(2, 12)
    with torch.no_grad():
        # safetensors tensors are mmapped at unaligned addresses, which can select other BLAS kernels
        # (~3e-7 apart); in fresh memory the reloaded model reproduces the logits bit for bit.
        for p in loaded.parameters():
            p.data = p.data.clone()
        assert torch.equal(model(ids).logits, loaded(ids).logits)


@pytest.mark.parametrize("norm_head", [True, False])
def test_generate_with_cache_equals_without_cache(norm_head):
    model = tiny(seed=1, norm_head=norm_head)
    prompt = tokens(1, 6, seed=5)
    kwargs = dict(max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    cached = model.generate(prompt, use_cache=True, **kwargs)
    uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert cached.shape == (1, 18)
    assert torch.equal(cached, uncached)
    with torch.no_grad():  # and greedy decoding really is argmax of the full forward
        logits = model(cached).logits[0]
    assert torch.equal(logits[5:-1].argmax(-1), cached[0, 6:])


def test_left_padded_batch_generate_matches_single_prompts():
    model = tiny(seed=2)
    a, b = tokens(1, 7, seed=1), tokens(1, 4, seed=2)
    kwargs = dict(max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    batch = torch.cat([a, torch.cat([torch.zeros(1, 3, dtype=torch.long), b], dim=1)])
    mask = (torch.arange(7) >= torch.tensor([[0], [3]])).long()
    out = model.generate(batch, attention_mask=mask, **kwargs)
    assert torch.equal(out[0, 7:], model.generate(a, **kwargs)[0, 7:])
    assert torch.equal(out[1, 7:], model.generate(b, **kwargs)[0, 4:])


def test_grouped_grouped_mm_and_naive_expert_paths_agree():
    ids = tokens(2, 20)
    results = {}
    for impl in ("grouped", "grouped_mm", "naive"):
        model = tiny(seed=4, moe_implementation=impl).train()
        out = model(ids, labels=ids)
        out.loss.backward()
        results[impl] = (out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                               if p.grad is not None})
    ref_logits, ref_grads = results["naive"]
    for impl in ("grouped", "grouped_mm"):
        logits, grads = results[impl]
        torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
        assert set(grads) == set(ref_grads)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, ref_grads[name], atol=1e-5, rtol=1e-4, msg=f"{impl}: {name}")


def _two_docs():
    a, b = tokens(1, 5, seed=11), tokens(1, 7, seed=12)
    packed = torch.cat([a, b], dim=1)
    position_ids = torch.cat([torch.arange(5), torch.arange(7)]).unsqueeze(0)
    return a, b, packed, position_ids


def _block_causal(lengths: list[int]) -> torch.Tensor:
    doc = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    total = doc.numel()
    causal = torch.ones(total, total, dtype=torch.bool).tril()
    return (causal & (doc[:, None] == doc[None, :]))[None, None]  # [1, 1, T, T]


@pytest.mark.parametrize("norm_head", [True, False])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("convention", ["position_ids", "position_ids+2d_mask", "4d_bool", "4d_float"])
def test_packed_documents_match_separate_runs(norm_head, attn, convention):
    model = tiny(seed=6, norm_head=norm_head)
    model.config._attn_implementation = attn
    a, b, packed, position_ids = _two_docs()
    mask = None
    if convention == "position_ids+2d_mask":
        mask = torch.ones_like(packed)
    elif convention.startswith("4d"):
        mask = _block_causal([5, 7])
        if convention == "4d_float":
            mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    with torch.no_grad():
        got = model(packed, position_ids=position_ids, attention_mask=mask).logits[0]
        alone = torch.cat([model(a).logits[0], model(b).logits[0]])
    torch.testing.assert_close(got, alone, atol=2e-5, rtol=1e-5)
    with torch.no_grad():  # without the document boundary the second doc sees the first: logits differ
        crossed = model(packed).logits[0]
    assert (crossed[5:] - alone[5:]).abs().max() > 1e-3


def test_packed_row_with_padding_and_training_losses():
    model = tiny(seed=7).train()
    a, b, packed, position_ids = _two_docs()
    row = torch.cat([packed, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    pos = torch.cat([position_ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 12), torch.zeros(1, 3)], dim=1).long()
    out = model(row, position_ids=pos, attention_mask=mask)
    model.eval()
    with torch.no_grad():
        alone = torch.cat([model(a).logits[0], model(b).logits[0]])
    torch.testing.assert_close(out.logits[0, :12].detach(), alone, atol=2e-5, rtol=1e-5)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.aux_loss)


def test_norm_head_normalises_lm_head_over_the_vocab_dim():
    model = tiny(seed=8)
    hidden = torch.randn(1, 3, model.config.hidden_size)
    weight = model.lm_head.weight
    expected = hidden @ (weight / weight.norm(dim=0, keepdim=True)).T
    torch.testing.assert_close(torch.nn.functional.linear(hidden, model.head_weight()), expected)
    plain = tiny(seed=8, norm_head=False)
    assert torch.equal(plain.head_weight(), plain.lm_head.weight)
    with torch.no_grad():  # same weights, different head: different logits
        ids = tokens(1, 5)
        assert not torch.allclose(model(ids).logits, plain(ids).logits)


def test_partial_rotary_and_fp32_router_run():
    model = tiny(seed=9, partial_rotary_factor=0.5, router_dtype="fp32")
    assert model.model.layers[0].attention.rotary_dim == 16
    assert model.model.rotary_emb.inv_freq.numel() == 8
    out = model(tokens(1, 9))
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("field,value,needle", [
    ("score_function", "sigmoid", "score_function"),
    ("n_group", 4, "n_group"),
    ("moe_router_enable_expert_bias", True, "moe_router_enable_expert_bias"),
    ("use_qk_norm", True, "use_qk_norm"),
    ("moe_implementation", "loop", "moe_implementation"),
    ("num_key_value_heads", 3, "num_key_value_heads"),
    ("num_experts_per_tok", 9, "num_experts_per_tok"),
    ("router_dtype", "fp16", "router_dtype"),
])
def test_unsupported_config_is_rejected_with_the_field_name(field, value, needle):
    with pytest.raises(ValueError, match=needle):
        build_config("bailing-tiny", **{field: value})


def test_legacy_rope_theta_and_defaults_follow_ling_lite():
    config = BailingMoeConfig(rope_theta=10000.0)
    assert config.rope_parameters["rope_theta"] == 10000.0
    default = BailingMoeConfig()
    assert default.rope_parameters["rope_theta"] == 600000.0
    assert (default.head_dim, default.num_experts, default.num_experts_per_tok, default.num_shared_experts) == (
        128, 64, 6, 2)
