"""Router auxiliary losses and expert-load metrics: hand-computed values, response to imbalance, HF MoE
models (Qwen3-MoE), dense models, masks."""

from __future__ import annotations

import math

import pytest
import torch

from ring_lightning.models.loading import load_policy
from ring_lightning.models.router_losses import (expert_load, load_balance_loss, load_imbalance,
                                                 router_aux_losses, router_z_loss)


def test_load_balance_is_one_when_uniform_and_e_over_k_when_collapsed():
    uniform = [torch.zeros(6, 4)]  # every prob 1/4; top-2 of ties picks experts 0, 1 for all tokens
    # f = [1/2, 1/2, 0, 0], P = 1/4 each -> 4 * (1/2 * 1/4 * 2) = 1
    torch.testing.assert_close(load_balance_loss(uniform, top_k=2), torch.tensor(1.0))
    collapsed = torch.full((6, 4), -30.0)
    collapsed[:, :2] = 0.0  # P = [1/2, 1/2, ~0, ~0], f = [1/2, 1/2, 0, 0] -> 4 * 1/2 = 2 = E/K
    torch.testing.assert_close(load_balance_loss([collapsed], top_k=2), torch.tensor(2.0))


def test_load_balance_hand_value_and_mask():
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(3.0)], [math.log(3.0), 0.0]])
    # top-1: f = [2/3, 1/3]; P = mean([.75,.25],[.25,.75],[.75,.25]) = [7/12, 5/12]
    expected = 2 * (2 / 3 * 7 / 12 + 1 / 3 * 5 / 12)
    torch.testing.assert_close(load_balance_loss([logits], top_k=1), torch.tensor(expected))
    mask = torch.tensor([[1, 1, 0]])  # drop the last token: f = [1/2, 1/2], P = [1/2, 1/2] -> 1
    torch.testing.assert_close(load_balance_loss([logits], top_k=1, token_mask=mask), torch.tensor(1.0))
    with pytest.raises(ValueError, match="token_mask has 2 entries"):
        load_balance_loss([logits], top_k=1, token_mask=torch.ones(1, 2))


def test_z_loss_hand_value_and_layer_average():
    a = torch.zeros(3, 4)  # logsumexp = log 4
    b = torch.full((3, 4), 1.0)  # logsumexp = 1 + log 4
    expected = (math.log(4) ** 2 + (1 + math.log(4)) ** 2) / 2
    torch.testing.assert_close(router_z_loss([a, b]), torch.tensor(expected))


def test_expert_load_counts_and_imbalance_ratio():
    logits = torch.tensor([[5.0, 1.0, 0.0], [5.0, 0.0, 1.0], [0.0, 5.0, 1.0], [5.0, 1.0, 0.0]])
    load = expert_load([logits, logits.flip(-1)], top_k=1)
    assert torch.equal(load, torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 3.0]]))
    assert torch.equal(load_imbalance(load), torch.tensor([3.0, 3.0]))  # min clamped to 1 token
    masked = expert_load([logits], top_k=1, token_mask=torch.tensor([[1, 0, 1, 0]]))
    assert torch.equal(masked, torch.tensor([[1.0, 1.0, 0.0]]))


def test_bailing_aux_losses_match_model_outputs_and_rise_when_the_router_collapses():
    model, _ = load_policy("bailing-tiny", seed=0)
    model.train()
    ids = torch.randint(3, 1105, (2, 12), generator=torch.Generator().manual_seed(0))
    out = model(ids)
    aux = router_aux_losses(out, model)
    torch.testing.assert_close(aux["load_balance_loss_unscaled"], out.aux_loss.detach())
    torch.testing.assert_close(aux["z_loss_unscaled"], out.z_loss.detach())
    torch.testing.assert_close(aux["loss"], 1e-5 * out.aux_loss + 1e-7 * out.z_loss)
    assert all(torch.isfinite(v) for v in aux.values())
    assert aux["loss"].requires_grad and not aux["load_balance_loss_unscaled"].requires_grad
    before = load_balance_loss(out.router_logits[:1], top_k=2).item()
    assert before < 1.6

    # Bias the first MoE layer's router to expert 0: solve gate row 0 so every token's logit is 10.
    block = model.model.layers[1].mlp
    captured = {}
    handle = block.gate.register_forward_hook(lambda mod, args, res: captured.update(x=args[0].detach()))
    with torch.no_grad():
        model(ids)
        handle.remove()
        x = captured["x"]  # [24, 64]
        block.gate.weight[0] = torch.linalg.lstsq(x, torch.full((x.shape[0], 1), 10.0)).solution[:, 0]
    out = model(ids)
    after = load_balance_loss(out.router_logits[:1], top_k=2).item()
    assert after > 3.5  # expert 0 takes half of all slots with prob ~1: 8 * 1/2 * 1 = 4
    assert expert_load(out.router_logits[:1], top_k=2)[0, 0] == 24
    assert router_aux_losses(out, model)["load_balance_loss_unscaled"] > aux["load_balance_loss_unscaled"]
    custom = router_aux_losses(out, model, aux_loss_coef=0.5, z_loss_coef=0.0)
    torch.testing.assert_close(custom["loss"], 0.5 * out.aux_loss)


def test_hf_qwen3_moe_router_logits_are_supported():
    model, _ = load_policy("qwen3-moe-tiny", seed=0)
    ids = torch.randint(3, 1105, (2, 10), generator=torch.Generator().manual_seed(1))
    out = model(ids, output_router_logits=True)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 7:] = 0
    aux = router_aux_losses(out, model, token_mask=mask)
    assert set(aux) == {"loss", "load_balance_loss", "z_loss", "load_balance_loss_unscaled", "z_loss_unscaled"}
    lb = load_balance_loss(out.router_logits, top_k=2, token_mask=mask)
    torch.testing.assert_close(aux["load_balance_loss"], 1e-5 * lb)  # the preset's router_aux_loss_coef
    assert 0.9 < aux["load_balance_loss_unscaled"] < 4.0
    load = expert_load(out.router_logits, top_k=2, token_mask=mask)
    assert load.shape == (2, 8) and torch.equal(load.sum(-1), torch.tensor([34.0, 34.0]))  # 17 tokens x 2
    with pytest.raises(ValueError, match="output_router_logits=True"):
        router_aux_losses(model(ids, output_router_logits=False), model)


def test_dense_model_gives_no_router_losses():
    model, _ = load_policy("qwen3-tiny", seed=0)
    out = model(torch.randint(3, 1105, (1, 6)))
    assert router_aux_losses(out, model) == {}
