"""Several clipped updates per rollout (`RolloutDataModule(updates_per_rollout=N)`): each update trains its
own Φ tokens against π_old = the sampling policy, so the second update's ratio moves and the clip acts;
a checkpoint between the updates of one rollout resumes exactly."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from unit.rl_fixtures import ParityReward, Record, recording_engine

from ring_lightning.data.rollouts.datamodule import RolloutDataModule
from ring_lightning.data.rollouts.stream import PromptSource
from ring_lightning.modules.rl import RLModule
from ring_lightning.rl.objectives import C3PO, GRPO

PHI = 48


def make_dm(n_updates=2, engine=None, **kw):
    return RolloutDataModule(sources={"arith": PromptSource(task="arithmetic_steps", size=64)},
                             engine=engine or recording_engine(), reward=ParityReward(), prompts_per_step=4,
                             samples_per_prompt=4, max_response_tokens=14, updates_per_rollout=n_updates, **kw)


def fit(module, dm, steps, callbacks=(), **kw):
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=1, callbacks=list(callbacks),
                        **({"enable_checkpointing": False} | kw))
    trainer.fit(module, dm)
    return trainer


class LossLog:
    """Wraps an objective's `loss`: records each micro-batch's inputs and loss."""

    def __init__(self, objective):
        self.calls, self.inner = [], objective.loss
        objective.loss = self

    def __call__(self, logprobs, mb, *, old_logprobs, ref_logprobs, entropy):
        loss, m = self.inner(logprobs, mb, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs, entropy=entropy)
        self.calls.append((loss.detach(), mb, logprobs.detach(), old_logprobs.detach()))
        return loss, m


def _objective():
    return C3PO(token_budget=PHI, kl_coef=0.0, entropy_coef=0.0, clip_eps_low=0.02, clip_eps_high=0.02)


def test_two_updates_per_rollout_each_train_phi_tokens_and_the_second_is_clipped():
    objective, rec = _objective(), Record()
    log = LossLog(objective)
    module = RLModule(model="bailing-tiny", parity=False, lr=5e-2, grad_clip=None, objective=objective)
    engine = recording_engine()
    fit(module, make_dm(engine=engine), steps=4, callbacks=[rec])
    assert len(engine.generated) == 2  # two rollouts for four optimizer steps
    assert [m["train/loss_tokens"] for m in rec.metrics] == [PHI] * 4
    assert [m["rollout/update"] for m in rec.metrics] == [0.0, 1.0, 0.0, 1.0]
    assert [m["rollout/generated_tokens"] > 0 for m in rec.metrics] == [True, False, True, False]
    first, second = rec.metrics[0], rec.metrics[1]
    assert first["train/ratio_max"] == first["train/ratio_min"] == 1.0  # update 1: π_old is the current policy
    assert first["train/clip_low_frac"] == first["train/clip_high_frac"] == 0.0
    assert second["train/clip_low_frac"] + second["train/clip_high_frac"] > 0  # the policy moved: clipped
    assert second["train/ratio_max"] != 1.0
    # the rollout-level statistics count both updates: 2Φ of the sampled tokens were trained
    assert first["budget/loss_tokens"] == 2 * PHI
    assert first["budget/used_token_fraction"] == pytest.approx(2 * PHI / first["rollout/generated_tokens"])
    assert module.rl_tokens_trained == 4 * PHI and module.rl_tokens_generated == sum(
        m["rollout/generated_tokens"] for m in rec.metrics)
    # each update's loss is exactly Σ (PPO-clip token loss) / Φ over its own Φ tokens (one micro-batch each)
    assert len(log.calls) == 4
    rows = []
    for loss, mb, logp, old in log.calls:
        ratio, adv = torch.exp(logp - old), mb.advantages
        token = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - 0.02, 1 + 0.02) * adv)
        assert mb.num_loss_tokens == PHI
        assert float(loss) == pytest.approx(float(token[mb.loss_mask].sum()) / PHI, rel=1e-6, abs=1e-9)
        rows.append({tuple(mb.input_ids[b][mb.attention_mask[b].bool()].tolist()) for b in range(len(mb.input_ids))
                     if mb.sample_index[b] >= 0})
    assert not rows[0] & rows[1] and not rows[2] & rows[3]  # two disjoint selections of each rollout
    assert float(log.calls[1][3].sub(log.calls[1][2]).abs().max()) > 0  # update 2: π_old ≠ current policy


def test_the_second_update_uses_the_sampling_policys_logprobs_and_disjoint_tokens():
    objective = _objective()
    module = RLModule(model="bailing-tiny", parity=False, lr=5e-2, grad_clip=None, objective=objective)
    dm = make_dm()
    fit(module, dm, steps=1)  # update 1 done; update 2 waits with π_old attached
    assert dm.pending_updates == 1
    pending = dm.sampler_state.pending[0]
    assert pending.plan.n_tokens == PHI and pending.index == 1
    for r in pending.responses:  # the trainer's logprobs of the policy before update 1, not the engine's
        assert r.old_logprobs is not None and torch.all(r.old_logprobs < 0)
        assert not torch.equal(r.old_logprobs, r.engine_logprobs)


def test_a_checkpoint_between_the_updates_of_a_rollout_resumes_exactly(tmp_path):
    def run(steps, where, **kw):
        module = RLModule(model="bailing-tiny", parity=False, lr=5e-2, objective=_objective())
        trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=tmp_path / where,
                            callbacks=[ModelCheckpoint(dirpath=tmp_path / where, save_last=True, every_n_train_steps=1)])
        engine = recording_engine()
        trainer.fit(module, make_dm(engine=engine), **kw)
        return module, engine

    straight, _ = run(3, "straight")
    run(1, "first")  # stops between update 1 and 2 of the first rollout
    state = torch.load(tmp_path / "first" / "last.ckpt", weights_only=False)
    assert len(state["RolloutDataModule"]["pending"]) == 1
    resumed, engine = run(3, "resumed", ckpt_path=str(tmp_path / "first" / "last.ckpt"))
    assert len(engine.generated) == 1  # update 2 came from the checkpoint; only rollout 2 was sampled
    for (name, a), (_, b) in zip(straight.policy.named_parameters(), resumed.policy.named_parameters()):
        assert torch.equal(a, b), name


def test_updates_per_rollout_refuses_carry_over_and_grpo_says_why():
    module = RLModule(model="bailing-tiny", parity=False, objective=C3PO(token_budget=PHI, overflow="carry"))
    with pytest.raises(ValueError, match="updates_per_rollout=2.*overflow: drop"):
        fit(module, make_dm(), steps=1)
    module = RLModule(model="bailing-tiny", parity=False, objective=GRPO(kl_coef=0.0))
    with pytest.raises(RuntimeError, match="updates_per_rollout=2.*GRPO, leaves nothing"):
        fit(module, make_dm(max_refill_rounds=1), steps=1)
    with pytest.raises(ValueError, match="updates_per_rollout must be >= 1, got 0"):
        make_dm(n_updates=0)
    with pytest.raises(ValueError, match="max_staleness must be >= 0, got -1"):
        make_dm(max_staleness=-1)
