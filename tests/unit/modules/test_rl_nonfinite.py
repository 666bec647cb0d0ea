"""RLModule's non-finite guard in real Lightning fits: a NaN step is skipped (parameters and AdamW state
unchanged, no engine re-sync, counted and logged) and training continues; NaN steps in a row abort."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from unit.rl_fixtures import ParityReward, Record, checksum, recording_engine

import ring_lightning.rl.objectives.grpo as losses_at  # C3PO.loss -> clipped_loss -> policy_loss, looked up here
from ring_lightning.data.rollouts.stream import PromptSource
from ring_lightning.data.rollouts.datamodule import RolloutDataModule
from ring_lightning.modules.rl import RLModule
from ring_lightning.rl.objectives import C3PO
from ring_lightning.modules.nonfinite import NonFiniteError


def make_dm(engine, reward=None):
    return RolloutDataModule(sources={"arith": PromptSource(task="arithmetic_steps", size=64)}, engine=engine,
                             reward=reward or ParityReward(), prompts_per_step=4, samples_per_prompt=4,
                             max_response_tokens=14)


def fit(module, dm, steps, callbacks=()):
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                        callbacks=list(callbacks))
    trainer.fit(module, dm)
    return trainer


class OptimizerState(Callback):
    """Parameters and AdamW state (exp_avg, exp_avg_sq, step) after every training step."""

    def __init__(self) -> None:
        self.params, self.moments = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        opt = trainer.optimizers[0]
        self.params.append([p.detach().clone() for p in pl_module.policy.parameters()])
        self.moments.append([{k: v.clone() for k, v in opt.state[p].items()} for p in pl_module.policy.parameters()
                             if p in opt.state])


def test_a_nan_step_is_skipped_counted_and_training_continues(monkeypatch):
    real_loss, calls = losses_at.policy_loss, []

    def nan_at_step_2(*args, **kwargs):  # every micro-batch loss of optimizer step 2 is NaN
        loss, m = real_loss(*args, **kwargs)
        calls.append(None)
        trainer_step = module.global_step
        return (loss * float("nan"), m) if trainer_step == 1 else (loss, m)

    monkeypatch.setattr(losses_at, "policy_loss", nan_at_step_2)
    engine, rec, state = recording_engine(), Record(), OptimizerState()
    module = RLModule(model="bailing-tiny", lr=1e-3, parity=False, objective=C3PO(token_budget=64))
    fit(module, make_dm(engine), steps=3, callbacks=[rec, state])
    assert calls  # the patched loss ran
    skipped = [m["train/nonfinite_skipped"] for m in rec.metrics]
    assert skipped == [0.0, 1.0, 1.0]
    assert [m["train/nonfinite_consecutive"] for m in rec.metrics] == [0.0, 1.0, 0.0]
    # step 2 changed neither the parameters nor AdamW's moments or step counts; step 3 trained again
    for a, b in zip(state.params[0], state.params[1]):
        assert torch.equal(a, b)
    assert len(state.moments[0]) == len(state.moments[1]) > 0
    for a, b in zip(state.moments[0], state.moments[1]):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert rec.after_step[2] != rec.after_step[1]
    assert all(torch.isfinite(p).all() for p in state.params[2])
    # the engine was not re-synced after the skipped step: bind + steps 1 and 3 only, and step 3 sampled
    # with the weights of step 1 (= those after the skipped step 2)
    assert engine.version == 3 and [v for v, _ in engine.generated] == [1, 2, 2]
    assert rec.after_step[0] == rec.after_step[1] == engine.generated[2][1]
    assert engine.weights == rec.after_step[2] == checksum(module.policy.named_parameters())
    assert module.engine_weight_version == 3 and module.rl_tokens_trained == 2 * 64  # step 2 trained nothing
    assert module.guard.state_dict() == {"skipped_total": 1, "consecutive": 0}


class NaNGradients(Callback):
    """An overflowing backward: the output embedding's gradient is NaN (the loss stays finite)."""

    def on_train_start(self, trainer, pl_module):
        pl_module.policy.get_output_embeddings().weight.register_hook(lambda g: torch.full_like(g, float("nan")))


def test_nan_steps_in_a_row_abort_with_a_clear_error():
    rec = Record()
    module = RLModule(model="bailing-tiny", lr=1e-3, parity=False, max_nonfinite_steps=3, objective=C3PO(token_budget=64))
    message = (r"RLModule: 3 optimizer steps in a row had a non-finite loss or gradient norm "
               r"\(last at global step 2: loss=-?[0-9.e-]+, grad_norm=nan\)")
    with pytest.raises(NonFiniteError, match=message):
        fit(module, make_dm(recording_engine()), steps=5, callbacks=[NaNGradients(), rec])
    assert [m["train/nonfinite_consecutive"] for m in rec.metrics] == [1.0, 2.0]  # the third raised
    assert all(torch.isfinite(p).all() for p in module.policy.parameters())  # no NaN reached the weights
