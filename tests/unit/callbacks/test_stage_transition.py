"""StageTransition: each trigger moves the datamodule to the next stage at the configured step,
the data mixture changes, lr / module knobs follow, and the stage survives checkpoint + resume —
with a minimal set_stage datamodule and with the real RLModule + RolloutDataModule."""

import math
import tempfile

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, IterableDataset

from unit.rl_fixtures import ListLogger

from ring_lightning.callbacks.stage_transition import StageTransition, get_knob, set_knob


class Forever(IterableDataset):
    def __iter__(self):
        while True:
            yield torch.zeros(1)


class StageDM(L.LightningDataModule):
    """Minimal datamodule: a stage is a mixture tag; `draw()` returns the current stage's data.
    It deliberately does not checkpoint its stage (the callback must restore it)."""

    def __init__(self, stages=("reasoning", "general")):
        super().__init__()
        self.stages = {s: {f"src_{s}": 1.0} for s in stages}
        self.stage = stages[0]
        self.calls = []

    def set_stage(self, name):
        if name not in self.stages:
            raise KeyError(name)
        self.calls.append(name)
        self.stage = name

    def draw(self):
        return next(iter(self.stages[self.stage]))

    def train_dataloader(self):
        return DataLoader(Forever(), batch_size=None)


class Scripted(L.LightningModule):
    """Logs scripted reward / entropy per step and records which data source each step drew."""

    def __init__(self, rewards=None, entropies=None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.rewards, self.entropies = rewards, entropies
        self.loss_kwargs = {"entropy_coef": 5e-4}
        self.drawn = []

    def training_step(self, batch, batch_idx):
        i = self.global_step
        self.drawn.append(self.trainer.datamodule.draw())
        self.log("reward/mean", float(self.rewards[i]) if self.rewards else 0.0, batch_size=1)
        self.log("train/entropy", float(self.entropies[i]) if self.entropies else 1.0, batch_size=1)
        return (self.w * 0).sum() + (self.w ** 2).sum()

    def configure_optimizers(self):
        opt = torch.optim.SGD([self.w], lr=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                                                   "interval": "step"}}


class Logged(Callback):
    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rows.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def first_stall(smoothed, min_delta, patience):
    """The step at which a smoothed series (step, value) has not improved by > min_delta for `patience`
    steps (the plateau rule, by hand); None if never."""
    best, since = None, 0
    for step, value in smoothed:
        if best is None or value - best > min_delta:
            best, since = value, 0
        else:
            since += 1
        if since >= patience:
            return step
    return None


def run(module, dm, cb, steps, ckpt_dir=None, ckpt_path=None, extra=(), logger=False):
    callbacks = [cb, *extra]
    if ckpt_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=1, save_top_k=-1))
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=logger, log_every_n_steps=1,
                        default_root_dir=ckpt_dir or tempfile.mkdtemp(), enable_checkpointing=ckpt_dir is not None,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("first", [True, False])
def test_steps_trigger_switches_mixture_after_exactly_n_steps_independent_of_callback_order(first):
    dm, module = StageDM(), Scripted()
    cb, log = StageTransition(triggers=["steps"], after_steps=3), Logged()
    trainer = L.Trainer(max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tempfile.mkdtemp(),
                        callbacks=[cb, log] if first else [log, cb])
    trainer.fit(module, dm)
    assert module.drawn == ["src_reasoning"] * 3 + ["src_general"] * 2
    assert cb.index == 1 and cb.history[0]["step"] == 3 and cb.history[0]["to"] == "general"
    assert log.rows[-1]["stage/index"] == 1.0


def test_plateau_trigger_uses_ema_min_delta_and_patience():
    # reward rises for 4 steps then stays flat: EMA keeps rising a little, so min_delta matters
    rewards = [0.1, 0.3, 0.5, 0.7] + [0.7] * 12
    dm, module = StageDM(), Scripted(rewards=rewards)
    cb = StageTransition(triggers=["plateau"], ema_decay=0.5, min_delta=0.02, patience=3)
    run(module, dm, cb, steps=12)
    # hand computation of the EMA (decay 0.5) and the improvement test
    emas = [rewards[0]]
    for r in rewards[1:]:
        emas.append(0.5 * emas[-1] + 0.5 * r)
    fired = first_stall(enumerate(emas, start=1), min_delta=0.02, patience=3)
    assert fired is not None and cb.history[0]["step"] == fired
    assert module.drawn[:fired] == ["src_reasoning"] * fired
    assert set(module.drawn[fired:]) == {"src_general"}


def test_entropy_band_trigger_with_patience_and_min_stage_steps():
    entropies = [0.8, 0.2, 0.8, 0.2, 0.2, 0.2, 0.2, 0.2]
    dm, module = StageDM(), Scripted(entropies=entropies)
    cb = StageTransition(triggers=["entropy_band"], entropy_band=(0.3, 1.0), entropy_patience=2, min_stage_steps=5)
    run(module, dm, cb, steps=8)
    # outside the band twice in a row first at step 5 (steps 4, 5); min_stage_steps=5 allows step 5
    assert cb.history[0]["step"] == 5
    assert module.drawn == ["src_reasoning"] * 5 + ["src_general"] * 3


def test_lr_scale_and_module_knobs_apply_on_entering_a_stage():
    dm, module = StageDM(), Scripted()
    cb = StageTransition(after_steps=2, lr_scale={"general": 0.5},
                         module_knobs={"general": {"loss_kwargs.entropy_coef": 2e-3}})
    trainer = run(module, dm, cb, steps=4)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05)  # survived 2 scheduler steps
    assert module.loss_kwargs["entropy_coef"] == 2e-3


def test_stage_survives_checkpoint_and_resume(tmp_path):
    dm, module = StageDM(), Scripted()
    cb = StageTransition(after_steps=2, module_knobs={"general": {"loss_kwargs.entropy_coef": 1e-3}})
    run(module, dm, cb, steps=3, ckpt_dir=tmp_path)
    assert cb.stage == "general"
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    (state,) = [v for k, v in ckpt["callbacks"].items() if "StageTransition" in k]
    assert state["stage"] == "general" and state["stage_start_step"] == 2
    # the checkpoint written at the transition step already holds the move (checkpoint callbacks run last)
    at_move = torch.load(next(tmp_path.glob("*step=2.ckpt")), weights_only=False)
    assert [v["stage"] for k, v in at_move["callbacks"].items() if "StageTransition" in k] == ["general"]

    dm2, module2 = StageDM(), Scripted()
    cb2 = StageTransition(after_steps=2, module_knobs={"general": {"loss_kwargs.entropy_coef": 1e-3}})
    log = ListLogger()  # what reaches the loggers: every callback has logged by then
    run(module2, dm2, cb2, steps=5, ckpt_path=str(tmp_path / "last.ckpt"), logger=log)
    assert cb2.index == 1 and dm2.calls == ["general"]  # restored, and no further stage exists
    assert module2.drawn == ["src_general"] * 2  # steps 4 and 5 of the resumed run
    assert module2.loss_kwargs["entropy_coef"] == 1e-3
    assert [r["stage/index"] for _, r in log.rows] == [1.0, 1.0]
    assert [r["stage/steps_in_stage"] for _, r in log.rows] == [2.0, 3.0]


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown triggers"):
        StageTransition(triggers=["reward"])
    with pytest.raises(ValueError, match="unknown stages"):
        StageTransition(lr_scale={"other": 0.5})
    dm, module = StageDM(), Scripted()
    with pytest.raises(ValueError, match=r"not stages of StageDM"):
        run(module, dm, StageTransition(stages=["reasoning", "chat"]), steps=1)
    with pytest.raises(KeyError, match="metric 'nope' is not logged"):
        run(Scripted(), StageDM(), StageTransition(triggers=["plateau"], metric="nope"), steps=1)
    obj = Scripted()
    with pytest.raises(KeyError, match="no key 'entropy'"):
        set_knob(obj, "loss_kwargs.entropy", 1.0)
    assert get_knob(obj, "loss_kwargs.entropy_coef") == 5e-4


# ---------------------------------------------------------------- real RLModule + RolloutDataModule
from ring_lightning.data.rollouts.stream import PromptSource  # noqa: E402
from ring_lightning.data.rollouts.datamodule import RolloutDataModule  # noqa: E402
from ring_lightning.modules.rl import RLModule  # noqa: E402
from ring_lightning.rl.objectives import C3PO
from ring_lightning.rewards.base import RewardResult  # noqa: E402
from ring_lightning.rollout.engine import Completion  # noqa: E402


class CountingEngine:
    """Deterministic short completions (a test double for the engine seam)."""

    def generate(self, prompts, n, sampling):
        return [[Completion(tuple(range(3, 3 + 4 + (j + len(p)) % 5)), (-2.0,) * (4 + (j + len(p)) % 5), "x", "stop")
                 for j in range(n)] for p in prompts]

    def update_weights(self, named_tensors):
        for _ in named_tensors:
            pass

    def sleep(self): ...
    def wake(self): ...
    def close(self): ...


class DomainRecorder:
    """Reward 1 for even-length responses; records the domains it was asked to score per call."""

    def __init__(self, tag):
        self.tag, self.calls = tag, []

    def __call__(self, rows, texts):
        self.calls.append((self.tag, sorted({r.domain for r in rows})))
        return [RewardResult(float(i % 2)) for i, _ in enumerate(texts)]


def make_rl(reasoning_reward, general_reward):
    dm = RolloutDataModule(
        sources={"math": PromptSource(task="arithmetic_steps", size=32), "ifeval": PromptSource(task="instruction", size=32)},
        stages={"reasoning": {"math": 1.0}, "general": {"ifeval": 1.0}}, engine=CountingEngine(),
        reward=reasoning_reward, stage_rewards={"general": general_reward},
        prompts_per_step=2, samples_per_prompt=2, max_response_tokens=10, max_prompt_tokens=512)
    module = RLModule(model="bailing-tiny", parity=False, lr=1e-3, objective=C3PO(token_budget=8, kl_coef=0.0))
    return module, dm


def test_real_c3po_run_switches_mixture_and_rewards_and_resumes(tmp_path):
    r1, g1 = DomainRecorder("reasoning"), DomainRecorder("general")
    module, dm = make_rl(r1, g1)
    cb = StageTransition(after_steps=2, module_knobs={"general": {"objective.entropy_coef": 1e-2}})
    run(module, dm, cb, steps=3, ckpt_dir=tmp_path)
    assert [c[1] for c in r1.calls] == [["math"], ["math"]]  # steps 1-2: reasoning mixture + reward
    assert [c[1] for c in g1.calls] == [["instruction"]]  # step 3: general mixture + its reward
    assert dm.stage == "general" and module.objective.entropy_coef == 1e-2

    r2, g2 = DomainRecorder("reasoning"), DomainRecorder("general")
    module2, dm2 = make_rl(r2, g2)
    cb2 = StageTransition(after_steps=2, module_knobs={"general": {"objective.entropy_coef": 1e-2}})
    run(module2, dm2, cb2, steps=4, ckpt_path=str(tmp_path / "last.ckpt"))
    assert r2.calls == [] and [c[1] for c in g2.calls] == [["instruction"]]
    assert cb2.stage == "general" and dm2.stage == "general" and module2.objective.entropy_coef == 1e-2


class LogsEfficiency(Callback):
    """Logs a signal from a callback (as TokenEfficiency does): 0.1 per step."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pl_module.log("eff", 0.1 * trainer.global_step, on_step=True, batch_size=1)


@pytest.mark.parametrize("first", [True, False])
def test_a_signal_logged_by_another_callback_triggers_at_the_same_step_in_either_order(first, tmp_path):
    """The target trigger reads a metric another callback logs in the same hook: listed first or last,
    the move happens at step 3 (eff = 0.3), not a step late on the previous step's value."""
    dm, module = StageDM(), Scripted()
    cb = StageTransition(triggers=["target"], target_metric="eff", target_value=0.3 - 1e-9, record=str(tmp_path / "r.json"))
    trainer = L.Trainer(max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[cb, LogsEfficiency()] if first else [LogsEfficiency(), cb])
    trainer.fit(module, dm)
    assert cb.history[0]["step"] == 3 and cb.history[0]["rule"] == ["target"]
    assert cb.history[0]["signals"]["eff"] == pytest.approx(0.3)
    assert module.drawn == ["src_reasoning"] * 3 + ["src_general"] * 2


def test_plateau_over_a_window_mean_by_hand():
    rewards = [0.5, 0.2, 0.6, 0.4, 0.7, 0.5, 0.6, 0.55, 0.6, 0.5, 0.58, 0.52, 0.5, 0.5]
    dm, module = StageDM(), Scripted(rewards=rewards)
    cb = StageTransition(triggers=["plateau"], plateau_window=3, min_delta=0.01, patience=3)
    run(module, dm, cb, steps=14)
    means = [(step, sum(rewards[step - 3:step]) / 3) for step in range(3, len(rewards) + 1)]  # full from step 3
    fired = first_stall(means, min_delta=0.01, patience=3)
    assert fired is not None and cb.history[0]["step"] == fired
    assert cb.history[0]["signals"]["reward/mean"] == rewards[fired - 1]


def test_handoff_stop_ends_the_fit_at_the_decision_and_records_rule_step_and_signals(tmp_path):
    import json

    entropies = [0.8, 0.8, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]
    dm, module = StageDM(stages=("reasoning",)), Scripted(entropies=entropies)
    cb = StageTransition(triggers=["entropy_band", "steps"], after_steps=6, entropy_band=(0.3, 1.0), entropy_patience=2,
                         handoff="stop", record=str(tmp_path / "st.json"))
    trainer = run(module, dm, cb, steps=8)
    assert trainer.global_step == 4 and module.drawn == ["src_reasoning"] * 4  # stopped, no switch in this run
    rec = json.loads((tmp_path / "st.json").read_text())
    (move,) = rec["transitions"]
    assert move["step"] == 4 and move["from"] == "reasoning" and move["to"] == "general"
    assert move["rule"] == ["entropy_band"] and move["signals"]["train/entropy"] == pytest.approx(0.2)
    assert rec["end"] is None and rec["handoff"] == "stop"
    # no rule before the cap: the record says the cap came first
    dm, module = StageDM(stages=("reasoning",)), Scripted()
    cb = StageTransition(triggers=["entropy_band"], entropy_band=(0.3, 1.0), handoff="stop",
                         record=str(tmp_path / "cap.json"))
    trainer = run(module, dm, cb, steps=3)
    rec = json.loads((tmp_path / "cap.json").read_text())
    assert trainer.global_step == 3 and rec["transitions"] == []
    assert rec["end"]["rule"] is None and "max_steps=3" in rec["end"]["reason"] and rec["end"]["step"] == 3


def test_a_move_waits_for_the_end_of_a_rollouts_updates():
    class Pending(StageDM):
        pending_updates = 0

    dm, module = Pending(), Scripted()

    class Flip(Callback):  # steps 1..3 are mid-rollout (one later update pending)
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            dm.pending_updates = 1 if trainer.global_step < 4 else 0

    cb = StageTransition(triggers=["steps"], after_steps=2)
    run(module, dm, cb, steps=6, extra=[Flip()])
    assert cb.history[0]["step"] == 4
