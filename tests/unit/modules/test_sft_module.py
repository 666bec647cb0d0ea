"""SFTModule: packed documents stay isolated, step-level token-mean loss under accumulation,
SFT token counter in checkpoints, HF export, optimizer defaults."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from ring_lightning.data.sft.packing import IGNORE_INDEX, TokenizedDoc, block_diagonal_mask, collate_packed
from ring_lightning.data.sft.datamodule import SFTDataModule
from ring_lightning.models.loading import load_policy
from ring_lightning.models.router_losses import router_aux_losses
from ring_lightning.modules.optim import warmup_cosine_factor
from ring_lightning.modules.sft import SFTModule

MODELS = ["bailing-tiny", "qwen3-moe-tiny"]


def rand_doc(n: int, seed: int, assistant: bool = True) -> TokenizedDoc:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 1000, (n,), generator=g).tolist()
    mask = [assistant and i >= n // 3 for i in range(n)]
    return TokenizedDoc(tuple(ids), tuple(mask))


def built(model: str, **kwargs) -> SFTModule:
    module = SFTModule(model=model, seed=0, **kwargs)
    module.configure_model()
    return module


# HF MoE models (Qwen3-MoE, ...) compute their own load-balance loss from a 2-D attention mask, so the
# explicit 4-D mask is for models like BailingMoe and dense HF models; restarting position ids work for all.
@pytest.mark.parametrize("model, attention_mask", [("bailing-tiny", "position_ids"), ("bailing-tiny", "block_diagonal"),
                                                   ("qwen3-moe-tiny", "position_ids"), ("qwen3-tiny", "block_diagonal")])
def test_changing_one_packed_document_leaves_the_others_untouched(model, attention_mask):
    module = built(model, attention_mask=attention_mask)
    a, c = rand_doc(20, 1), rand_doc(15, 3)
    b, b_changed = rand_doc(12, 2, assistant=False), rand_doc(12, 99, assistant=False)  # no targets in b
    T = 64
    with torch.no_grad():
        ce, n, _, _ = module._forward(collate_packed([a, b, c], T, pad_id=0))
        ce_changed, _, _, _ = module._forward(collate_packed([a, b_changed, c], T, pad_id=0))
        ce_a = module._forward(collate_packed([a], T, pad_id=0))[0]
        ce_c = module._forward(collate_packed([c], T, pad_id=0))[0]
        # logits of c, read directly, do not depend on what sits before it in the row
        packed, packed_changed = collate_packed([a, b, c], T, 0), collate_packed([a, b_changed, c], T, 0)
        kw = {"use_cache": False}
        if attention_mask == "block_diagonal":
            kw["attention_mask"] = block_diagonal_mask(packed.doc_ids)
        logits = module.policy(input_ids=packed.input_ids, position_ids=packed.position_ids, **kw).logits
        logits_changed = module.policy(input_ids=packed_changed.input_ids,
                                       position_ids=packed_changed.position_ids, **kw).logits
    assert int(n) == a.num_loss_tokens + c.num_loss_tokens
    assert torch.allclose(ce, ce_changed, rtol=0, atol=1e-4)
    assert torch.allclose(ce, ce_a + ce_c, rtol=1e-5, atol=1e-4)
    c_slice = slice(32, 47)
    assert torch.allclose(logits[0, c_slice], logits_changed[0, c_slice], rtol=0, atol=1e-5)
    assert not torch.allclose(logits[0, 20:32], logits_changed[0, 20:32], atol=1e-3)  # b itself did change


def test_block_diagonal_mask_gives_the_position_ids_loss():
    batch = collate_packed([rand_doc(20, 1), rand_doc(12, 2), rand_doc(15, 3)], 64, pad_id=0)
    with torch.no_grad():
        ref = built("bailing-tiny", model_overrides={"attn_implementation": "eager"})._forward(batch)[0]
        for impl in ("eager", "sdpa"):
            got = built("bailing-tiny", attention_mask="block_diagonal",
                        model_overrides={"attn_implementation": impl})._forward(batch)[0]
            assert torch.allclose(got, ref, rtol=1e-5, atol=1e-4)


class GradCapture(SFTModule):
    """Stores the gradients the optimizer will see (after the step-level normalisation)."""

    def on_before_optimizer_step(self, optimizer):
        super().on_before_optimizer_step(optimizer)
        self.captured = {n: p.grad.detach().clone() for n, p in self.policy.named_parameters() if p.grad is not None}


def two_micro_batches(micro_batch_tokens: int = 128) -> tuple[SFTDataModule, list]:
    dm = SFTDataModule(train=["synthetic:mixed"], micro_batch_tokens=micro_batch_tokens, shuffle_buffer=0,
                       synthetic_train_rows=12)
    batches = list(dm.train_set)[:2]
    assert int(batches[0].num_loss_tokens) != int(batches[1].num_loss_tokens)  # unequal: the mean matters
    return dm, batches


@pytest.mark.parametrize("model", MODELS)
def test_accumulating_two_micro_batches_equals_one_batch_of_both(model):
    dm, batches = two_micro_batches()
    module = GradCapture(model=model, seed=0, optimizer=lambda p: torch.optim.SGD(p, lr=0.0),
                         scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, accumulate_grad_batches=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)

    # reference: one backward over both micro-batches, token mean over all their assistant tokens
    policy, _ = load_policy(model, seed=0)
    ce_total, aux_total, n_total = 0.0, 0.0, 0
    for b in batches:
        keep = (b.targets[0] != IGNORE_INDEX).nonzero().squeeze(-1)
        out = policy(input_ids=b.input_ids, position_ids=b.position_ids, use_cache=False,
                     output_router_logits=True)
        ce_total = ce_total + F.cross_entropy(out.logits[0, keep].float(), b.targets[0, keep], reduction="sum")
        n = int(b.num_loss_tokens)
        aux_total = aux_total + n * router_aux_losses(out, policy, token_mask=b.token_mask)["loss"]
        n_total += n
    loss = (ce_total + aux_total) / n_total
    loss.backward()
    for name, p in policy.named_parameters():
        assert torch.allclose(module.captured[name], p.grad, rtol=1e-4, atol=1e-6), name
    assert trainer.callback_metrics["train/loss"].item() == pytest.approx(ce_total.item() / n_total, rel=1e-6)
    assert trainer.callback_metrics["train/loss_tokens"].item() == n_total
    assert module.sft_tokens_seen == sum(int(b.num_tokens) for b in batches)
    padding = sum(int(b.num_padding) for b in batches) / (2 * 128)
    assert trainer.callback_metrics["train/padding_fraction"].item() == pytest.approx(padding)
    ratio = trainer.callback_metrics["train/expert_load_max_min"].item()
    assert ratio >= 1.0 and math.isfinite(ratio)


def test_sft_token_counter_is_saved_and_restored(tmp_path):
    dm = SFTDataModule(train=["synthetic:arithmetic"], micro_batch_tokens=128, shuffle_buffer=0,
                       synthetic_train_rows=16)
    module = SFTModule(model="qwen3-moe-tiny", seed=0)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    expected = sum(int(b.num_tokens) for b in list(dm.train_set)[:3])
    assert module.sft_tokens_seen == expected > 0
    trainer.save_checkpoint(str(tmp_path / "sft.ckpt"))
    ckpt = torch.load(tmp_path / "sft.ckpt", weights_only=False)
    assert ckpt["sft_tokens_seen"] == expected and ckpt["sft_loss_tokens_seen"] > 0
    fresh = SFTModule(model="qwen3-moe-tiny")
    fresh.on_load_checkpoint(ckpt)
    assert fresh.sft_tokens_seen == expected


def test_export_hf_writes_a_checkpoint_load_policy_reads(tmp_path):
    module = built("bailing-tiny")
    with torch.no_grad():
        for p in module.policy.parameters():
            p.add_(0.01)  # differ from the seeded init
    out = module.export_hf(tmp_path / "hf")
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    loaded, tok = load_policy(out)
    probe = torch.randint(3, 1000, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=probe).logits, module.policy(input_ids=probe).logits, atol=1e-6)
    assert tok.eos_token_id == module.tokenizer.eos_token_id


def test_default_schedule_warms_up_one_percent_then_cosine_to_the_floor():
    total = 200  # 1% = 2 warm-up steps
    factors = [warmup_cosine_factor(s, total, 0.01, 0.1) for s in range(total + 1)]
    assert factors[:4] == [0.5, 1.0, 1.0, pytest.approx(1.0 - 0.9 * (1 - math.cos(math.pi / 198)) / 2)]
    assert factors[101] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 99 / 198)))
    assert factors[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[1:], factors[2:]))


def test_default_optimizer_is_adamw_with_decay_on_matrices_only():
    module = built("bailing-tiny")
    trainer = L.Trainer(accelerator="cpu", max_steps=100, logger=False, enable_checkpointing=False)
    module.trainer = trainer
    config = module.configure_optimizers()
    opt = config["optimizer"]
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["lr"] == 3e-4 and opt.defaults["betas"] == (0.9, 0.95)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert config["lr_scheduler"]["interval"] == "step"


def test_bad_arguments_fail_at_construction():
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        SFTModule(model="no-such-model")
    with pytest.raises(ValueError, match="mixed_precision"):
        SFTModule(mixed_precision="fp8")
    with pytest.raises(ValueError, match="unknown dtype"):
        SFTModule(dtype="float12")


def test_activation_checkpointing_keeps_loss_and_gradients():
    batch = collate_packed([rand_doc(20, 1), rand_doc(15, 3)], 48, pad_id=0)
    grads = []
    for checkpointing in (False, True):
        module = built("bailing-tiny", activation_checkpointing=checkpointing)
        module.policy.train()
        ce, n, aux, _ = module._forward(batch)
        (ce + n * aux["loss"]).backward()
        grads.append((ce.detach(), {k: p.grad.clone() for k, p in module.policy.named_parameters()
                                    if p.grad is not None}))
    assert module.policy.is_gradient_checkpointing
    assert torch.allclose(grads[0][0], grads[1][0])
    assert grads[0][1].keys() == grads[1][1].keys()
    for name, g in grads[0][1].items():
        assert torch.allclose(g, grads[1][1][name], rtol=1e-5, atol=1e-7), name


def test_bf16_mixed_precision_is_rejected_without_fsdp2():
    module = SFTModule(model="bailing-tiny", mixed_precision="bf16")
    with pytest.raises(ValueError, match="precision='bf16-mixed'"):
        module.configure_model()


def test_chunked_cross_entropy_equals_the_plain_one():
    from ring_lightning.modules.sft import chunked_cross_entropy_sum

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 7, generator=g, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, 7, (10,), generator=g)
    plain = F.cross_entropy(logits.float(), targets, reduction="sum")
    (grad_plain,) = torch.autograd.grad(plain, logits)
    chunked = chunked_cross_entropy_sum(logits, targets, chunk_tokens=3)
    (grad_chunked,) = torch.autograd.grad(chunked, logits)
    assert chunked.dtype == torch.float32 and torch.allclose(chunked, plain, rtol=1e-6)
    assert torch.equal(grad_chunked, grad_plain)
