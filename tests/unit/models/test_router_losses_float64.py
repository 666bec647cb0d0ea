"""Router losses and expert-load counts under 64-bit precision: float64 logits, torch's default dtype
float64 (what Lightning's precision="64-true" sets during forward), and a real 64-true fit step."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from ring_lightning.models.loading import load_policy
from ring_lightning.models.router_losses import (expert_load, load_balance_loss, router_aux_losses, router_z_loss,
                                                 top_k)

LOGITS = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 3.0, 0.2, -0.5], [1.0, 1.5, 2.5, 0.0]])
MASK = torch.tensor([[1, 1, 0]])


@pytest.mark.parametrize("logits_dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_masked_losses_and_counts_under_default_dtype_float64(logits_dtype):
    ref_lb = load_balance_loss([LOGITS.to(logits_dtype)], top_k=2, token_mask=MASK)
    ref_z = router_z_loss([LOGITS.to(logits_dtype)], token_mask=MASK)
    ref_load = expert_load([LOGITS.to(logits_dtype)], top_k=2, token_mask=MASK)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # Lightning's DoublePrecision does this around forward
    try:
        lb = load_balance_loss([LOGITS.to(logits_dtype)], top_k=2, token_mask=MASK)
        z = router_z_loss([LOGITS.to(logits_dtype)], token_mask=MASK)
        load = expert_load([LOGITS.to(logits_dtype)], top_k=2, token_mask=MASK)
    finally:
        torch.set_default_dtype(before)
    expected = torch.float64 if logits_dtype == torch.float64 else torch.float32  # never the default dtype
    assert lb.dtype == z.dtype == load.dtype == expected
    # tokens 0 and 1 only: token 0 -> experts {0, 1}, token 1 -> {1, 2}
    assert load.tolist() == [[1.0, 2.0, 1.0, 0.0]]
    torch.testing.assert_close(load, ref_load)
    torch.testing.assert_close(lb, ref_lb)
    torch.testing.assert_close(z, ref_z)


class RouterProbe(L.LightningModule):
    """One 64-true training step of a float64 BailingMoe: CE + masked router losses + expert loads."""

    def __init__(self):
        super().__init__()
        self.policy, _ = load_policy("bailing-tiny", dtype="float64", seed=0)
        self.seen: dict = {}

    def training_step(self, batch, batch_idx):
        ids, mask = batch
        out = self.policy(ids, attention_mask=mask, labels=ids, output_router_logits=True)
        aux = router_aux_losses(out, self.policy, token_mask=mask)
        load = expert_load(out.router_logits, top_k(self.policy), mask)
        self.seen.update(default=torch.get_default_dtype(), loss=aux["loss"].dtype, load=load,
                         logits=out.router_logits[0].dtype, unscaled=aux["load_balance_loss_unscaled"])
        return out.loss + aux["loss"]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        ids = torch.randint(3, 1000, (2, 10), generator=torch.Generator().manual_seed(0))
        mask = torch.ones(2, 10, dtype=torch.long)
        mask[0, 7:] = 0
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids, mask), batch_size=2)


def test_a_64_true_lightning_step_with_masked_router_losses():
    probe = RouterProbe()
    L.Trainer(precision="64-true", max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(probe)
    seen = probe.seen
    assert seen["default"] == torch.float64 and seen["logits"] == torch.float64 and seen["loss"] == torch.float64
    k = top_k(probe.policy)
    assert torch.equal(seen["load"].sum(-1), torch.full((seen["load"].shape[0],), 17.0 * k, dtype=torch.float64))
    assert torch.isfinite(seen["unscaled"]) and seen["unscaled"] >= 1.0 - 1e-9  # 1.0 = uniform routing
