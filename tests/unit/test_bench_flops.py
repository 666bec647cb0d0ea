"""benchmarks/flops.py: parameter counts (total / active), training FLOPs, MFU and the GPU peak table."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.flops import (  # noqa: E402
    ParamCount, count_params, is_routed_expert, meta_model, mfu, peak_tflops, preset_params, train_flops,
)
from ring_lightning.models.loading import load_policy  # noqa: E402


def test_ring_lite_2507_counts_match_the_report_and_the_hand_formula():
    c = preset_params("ring-lite-2507")
    # Ring-lite report: 16.8B total, 2.75B activated.
    assert c.total == pytest.approx(16.8e9, rel=0.005)
    assert c.active == pytest.approx(2.75e9, rel=0.005)
    # By hand from the preset: per layer 64 routed experts (3 x 2048 x 1408 each), 2 shared (fused,
    # 3 x 2048 x 2816), qkv 2048 x (16 + 2 x 4) x 128, dense 2048 x 2048, router 64 x 2048, two norms.
    h, layers, vocab = 2048, 28, 126464
    expert, shared = 3 * h * 1408, 3 * h * 2816
    attn = h * (16 + 8) * 128 + 2048 * h
    per_layer_fixed = shared + attn + 64 * h + 2 * h
    total = layers * (64 * expert + per_layer_fixed) + 2 * vocab * h + h
    active = layers * (6 * expert + per_layer_fixed) + 2 * vocab * h + h
    assert (c.total, c.active) == (total, active)
    assert c.routed_experts == layers * 64 * expert
    assert c.input_embedding == vocab * h
    assert c.active_matmul == active - vocab * h


def test_fewer_layers_scale_the_layer_part_only():
    full, two = preset_params("ring-lite-2507"), preset_params("ring-lite-2507", num_hidden_layers=2)
    emb_and_norm = 2 * 126464 * 2048 + 2048
    assert (two.total - emb_and_norm) * 14 == full.total - emb_and_norm
    assert (two.active - emb_and_norm) * 14 == full.active - emb_and_norm


@pytest.mark.parametrize("preset", ["bailing-tiny", "qwen3-moe-tiny", "qwen3-tiny"])
def test_counts_of_real_models_equal_their_parameters(preset):
    model, _ = load_policy(preset, seed=0)
    c = count_params(model)
    assert c.total == sum(p.numel() for p in model.parameters())
    assert preset_params(preset) == c  # the meta-device count is the real one
    routed = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n or n.endswith(".experts.down_proj")
                 or n.endswith(".experts.gate_up_proj"))
    assert c.routed_experts == routed
    cfg = model.config
    if routed:
        assert c.active == c.total - routed + routed * cfg.num_experts_per_tok // cfg.num_experts
    else:
        assert c.active == c.total
    assert c.input_embedding == model.get_input_embeddings().weight.numel()


def test_meta_model_allocates_nothing():
    model = meta_model("ring-lite-2507", num_hidden_layers=1)
    assert all(p.device == torch.device("meta") for p in model.parameters())


def test_routed_expert_names():
    assert is_routed_expert("model.layers.1.mlp.experts.3.up_proj.weight")
    assert is_routed_expert("model.layers.1.mlp.experts.gate_up_proj")
    assert not is_routed_expert("model.layers.1.mlp.shared_experts.up_proj.weight")
    assert not is_routed_expert("model.layers.1.mlp.gate.weight")


def test_train_flops_and_mfu_by_hand():
    c = ParamCount(total=10, active=7, routed_experts=4, input_embedding=2)
    assert c.active_matmul == 5
    assert train_flops(c, 1000) == 6 * 5 * 1000
    # 1e15 FLOPs in 2 s on 2 GPUs of 1000 TFLOP/s peak -> 25%.
    assert mfu(1e15, 2.0, 1000.0, devices=2) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="seconds > 0"):
        mfu(1.0, 0.0, 989.0)


def test_peak_table_picks_the_specific_name():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("NVIDIA A10G") == 70.0
    assert peak_tflops("NVIDIA L40S") == 362.0
    assert peak_tflops("Some Unknown GPU") is None
