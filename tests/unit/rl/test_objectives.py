"""The objective seam: C3PO / GRPO plan the tokens of a step as `rl/budget.py` does, their knobs are
checked by name, and a new objective is one class plus a config — shown by a token-mean policy-gradient
objective defined here, given to `fit` by class_path, that runs two RL steps and trains every token."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from ring_lightning.rl.batch import MicroBatch
from ring_lightning.rl.budget import BudgetPlan, select_all
from ring_lightning.rl.objectives import C3PO, GRPO, Objective
from ring_lightning.rollout.engine import RolloutEngine
from ring_lightning.rl.terms import aggregate, log_ratio_exp, ppo_clip


@dataclass
class TokenMeanPG:
    """All responses; Σ over the step's tokens of −r·A (unclipped), divided by the global token count.
    (The annotated signatures are what LightningCLI checks against the `Objective` protocol.)"""

    kl_coef: float = 0.0
    carry_age: int = 0
    calls = 0  # class-wide: how many micro-batch losses ran

    def check(self, world_size: int) -> None:
        return None

    def select(self, lengths: Sequence[int], eligible: Sequence[bool], *, n_carried: int, world_size: int,
               seed: int) -> BudgetPlan | None:
        plan = select_all(lengths, eligible=eligible)
        return replace(plan, loss_agg="token_sum_over_constant", normalizer=float(plan.n_tokens))

    def finalize(self, plan: BudgetPlan, sum_over_ranks: Callable[[float], float], world_size: int) -> BudgetPlan:
        return replace(plan, normalizer=sum_over_ranks(plan.n_tokens) / world_size)

    def loss(self, logprobs: torch.Tensor, mb: MicroBatch, *, old_logprobs: torch.Tensor | None,
             ref_logprobs: torch.Tensor | None, entropy: torch.Tensor | None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        TokenMeanPG.calls += 1
        adv = (mb.advantages.unsqueeze(-1) if mb.advantages.ndim == 1 else mb.advantages).expand_as(logprobs)
        pg = ppo_clip(log_ratio_exp(logprobs, old_logprobs.detach()), adv, 0.0, 1e9)  # no clipping
        loss = aggregate(pg, mb.loss_mask, mb.loss_mask, "token_sum_over_constant", mb.normalizer)
        return loss, {"loss/policy_gradient": loss.detach(), "tokens/loss": mb.loss_mask.sum()}


def fake_engine(policy: Any, tokenizer: Any) -> RolloutEngine:
    """The engine factory the config names: deterministic 3..12-token samples (`unit.rl_fixtures`)."""
    from unit.rl_fixtures import FakeEngine

    return FakeEngine()


def test_shipped_objectives_implement_the_protocol_and_check_their_knobs():
    assert isinstance(C3PO(), Objective) and isinstance(GRPO(), Objective) and isinstance(TokenMeanPG(), Objective)
    assert C3PO().carry_age == 0 and C3PO(overflow="carry", max_carry_age=2).carry_age == 2 and GRPO().carry_age == 0
    with pytest.raises(ValueError, match="C3PO: token_budget"):
        C3PO(token_budget=0)
    with pytest.raises(ValueError, match="C3PO: fill_order"):
        C3PO(fill_order="longest")
    with pytest.raises(ValueError, match="GRPO: need 0 <= clip_eps_low"):
        GRPO(clip_eps_low=1.5)
    with pytest.raises(ValueError, match="icepop_range"):
        C3PO(icepop_range=(1.5, 2.0))
    with pytest.raises(ValueError, match="divisible by the 3 data-parallel ranks"):
        C3PO(token_budget=10).check(3)


def test_c3po_plans_exactly_phi_per_rank_and_grpo_takes_every_response():
    plan = C3PO(token_budget=20).select([6, 5, 7, 4], [True] * 4, n_carried=0, world_size=2, seed=0)
    assert [(p.index, p.start, p.end) for p in plan.pieces] == [(0, 0, 6), (1, 0, 4)]  # Φ/W = 10, truncated
    assert plan.normalizer == 10.0 and plan.loss_agg == "token_sum_over_constant"
    g = GRPO().select([6, 5, 7, 4], [True, False, True, True], n_carried=0, world_size=2, seed=0)
    assert [p.index for p in g.pieces] == [0, 2, 3] and g.loss_agg == "seq_mean_token_mean"
    assert GRPO().finalize(g, lambda x: 5.0 * x / 3, 2).normalizer == 2.5  # 5 sequences over 2 ranks
    assert GRPO().select([0, 3], [True, False], n_carried=0, world_size=1, seed=0) is None


def test_a_custom_objective_by_class_path_runs_two_rl_steps(tmp_path):
    from ring_lightning.cli import main

    cfg = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2, "log_every_n_steps": 1,
                    "enable_progress_bar": False, "enable_model_summary": False, "enable_checkpointing": False,
                    "limit_val_batches": 0,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path), "name": "custom"}}},
        "model": {"class_path": "ring_lightning.modules.rl.RLModule",
                  "init_args": {"model": "bailing-tiny", "parity": False, "lr": 1e-2,
                                "objective": {"class_path": f"{__name__}.TokenMeanPG"}}},
        "data": {"class_path": "ring_lightning.data.rollouts.RolloutDataModule",
                 "init_args": {"sources": {"a": {"task": "arithmetic_steps", "size": 32}},
                               "engine": f"{__name__}.fake_engine",
                               "reward": {"class_path": "unit.rl_fixtures.ParityReward"},
                               "prompts_per_step": 4, "samples_per_prompt": 4, "max_response_tokens": 12}},
    }
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    TokenMeanPG.calls = 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(["fit", "-c", str(path)])
    finally:
        torch.set_num_threads(threads)
    rows = [{k: float(v) for k, v in r.items() if v} for r in
            csv.DictReader((tmp_path / "custom" / "version_0" / "metrics.csv").open())]
    steps = [r for r in rows if "train/loss_tokens" in r]
    assert [int(r["step"]) for r in steps] == [0, 1] and TokenMeanPG.calls == 2  # one micro-batch per step
    for r in steps:  # every sampled token is trained on: nothing is budgeted away
        assert r["train/loss_tokens"] == r["rollout/generated_tokens"] == r["train/budget"] > 0
        assert r["train/grad_norm"] > 0 and "train/ratio_max" not in r


def test_per_rank_scope_trains_phi_on_every_rank_and_global_splits_it():
    lengths = [30] * 8
    per_rank = C3PO(token_budget=50, budget_scope="per_rank")
    per_rank.check(3)  # no divisibility constraint: each rank fills Φ
    assert per_rank.select(lengths, [True] * 8, n_carried=0, world_size=4, seed=0).n_tokens == 50
    assert C3PO(token_budget=200).select(lengths, [True] * 8, n_carried=0, world_size=4, seed=0).n_tokens == 50
    with pytest.raises(ValueError, match="budget_scope: per_rank"):
        C3PO(token_budget=10).check(3)
    with pytest.raises(ValueError, match="C3PO: budget_scope"):
        C3PO(budget_scope="node")


def _simulate_rank(objective, world, L=512, K=16, mean=6000.0, cap=24_576, refill=512, max_rounds=4, seed=0,
                   n_updates=1):
    """One rank's rollout at the report's shape: its L/W prompts × K lognormal lengths (sigma 0.8), refill
    rounds of `refill` global prompts while short (as RolloutSampler does); `n_updates` disjoint plans
    (data/rollouts/updates.py); returns (plans, lengths, groups)."""
    import math
    import random

    from ring_lightning.data.rollouts.updates import plan_updates
    from ring_lightning.rl.batch import Response

    rng = random.Random(seed)
    mu = math.log(mean) - 0.32  # lognormal mean = exp(mu + sigma²/2), sigma = 0.8
    lengths, groups = [], []

    def draw(n_prompts):
        for _ in range(n_prompts // world):
            g = len(set(groups))
            for _ in range(K):
                lengths.append(min(cap, max(1, int(rng.lognormvariate(mu, 0.8)))))
                groups.append(g)

    class Stub:  # plan_updates reads only .length and .valid
        def __init__(self, n):
            self.length, self.valid = n, True

    draw(L)
    for _ in range(max_rounds + 1):
        plans = plan_updates(objective, [Stub(n) for n in lengths], n_updates=n_updates, n_carried=0,
                             world_size=world, seed=seed)
        if len(plans) == n_updates and not plans[-1].need_more:
            return plans, lengths, groups
        draw(refill)
    raise AssertionError("still short after the refill rounds")


@pytest.mark.parametrize("world", [8, 256])
@pytest.mark.parametrize("mean", [6000.0, 12000.0])
def test_ring_lite_budget_at_the_report_shape_trains_most_prompts_and_tokens(world, mean):
    """The Ring-lite config (global Φ = 52,428,800 per update, two updates per rollout = 256 × 409,600
    per rollout, random fill) at L=512, K=16 on 8 and 256 ranks: exactly Φ/W per rank and update, two
    disjoint selections, ≥ 90% of the prompts and ≥ 50% of the sampled tokens trained; with long
    responses the budget caps the trained tokens per sampled response at Φ·N/W / responses < the mean
    length. The old reading (global Φ = 409,600, batch order) trains < 1% on 8 ranks."""
    cfg = yaml.safe_load((Path(__file__).parents[3] / "configs/ring_lite_2507/rl_reasoning.yaml").read_text())
    knobs = cfg["model"]["init_args"]["objective"]["init_args"]
    n_updates = cfg["data"]["init_args"]["updates_per_rollout"]
    objective = C3PO(**{k: knobs[k] for k in ("token_budget", "budget_scope", "fill_order")})
    plans, lengths, groups = _simulate_rank(objective, world, mean=mean, n_updates=n_updates)
    assert n_updates == 2 and [p.n_tokens for p in plans] == [objective.token_budget // world] * 2
    used = [p.index for plan in plans for p in plan.pieces]
    assert len(used) == len(set(used))  # disjoint
    covered = {groups[i] for i in used}
    trained = sum(p.n_tokens for p in plans)
    assert len(covered) / len(set(groups)) >= 0.9
    assert trained / sum(lengths) >= 0.5
    assert trained / len(lengths) < sum(lengths) / len(lengths)  # the budget, not the samples, sets the size
    if world == 8:
        (old,), old_lengths, _ = _simulate_rank(C3PO(token_budget=409_600, fill_order="batch"), world, mean=mean)
        assert old.n_tokens / sum(old_lengths) < 0.01
