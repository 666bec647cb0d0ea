"""RLModule held-out evaluation in real Lightning validate / test / fit loops, with a fake engine whose
samples depend on the weights it holds: pass@1 / pass@k overall and per domain, the engine always holds
the module's current weights (checkpoint weights in `validate --ckpt_path`, even when the engine was built
before the checkpoint was loaded), periodic validation during fit, no needless weight syncs."""

import warnings

import lightning as L
import pytest
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from unit.rl_fixtures import ParityReward, WeightEngine, checksum

from ring_lightning.data.rollouts.stream import PromptSource
from ring_lightning.data.rollouts.datamodule import RolloutDataModule
from ring_lightning.eval.passk import pass_at_k
from ring_lightning.modules.rl import RLModule
from ring_lightning.rl.objectives import C3PO

PRESET = "bailing-tiny"
HELD_OUT = {"arith": PromptSource(task="arithmetic_steps", size=6, seed=8),
            "count": PromptSource(task="countdown", size=4, seed=7)}


def make_dm(**kw):
    kw = dict(dict(val_sources=HELD_OUT, eval_samples_per_prompt=4, eval_k=(2, 4), eval_batch_size=4), **kw)
    return RolloutDataModule(sources={"a": PromptSource(task="arithmetic_steps", size=32)}, engine=WeightEngine.factory,
                             reward=ParityReward(), prompts_per_step=4, samples_per_prompt=4, max_response_tokens=10,
                             **kw)


def module(**kw):
    return RLModule(model=PRESET, lr=1e-2, parity=False, **kw, objective=C3PO(token_budget=64, kl_coef=0.0))


def trainer(tmp_path, **kw):
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                     log_every_n_steps=1, default_root_dir=tmp_path, **kw)


class ValRecord(Callback):
    """The val metrics and the weights the engine generated with, at every validation end."""

    def __init__(self) -> None:
        self.val, self.engine_weights, self.policy = [], [], []

    def on_validation_end(self, trainer, pl_module):
        self.val.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        self.engine_weights.append(trainer.datamodule.engine.generated[-1][1])
        self.policy.append(checksum(pl_module.policy.named_parameters()))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """2 RL steps with validation after each (val_check_interval=1) and a checkpoint after each."""
    tmp = tmp_path_factory.mktemp("fit")
    WeightEngine.built.clear()
    rec = ValRecord()
    ckpt = ModelCheckpoint(dirpath=tmp / "ckpt", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    t = trainer(tmp, max_steps=2, val_check_interval=1, check_val_every_n_epoch=None, num_sanity_val_steps=0,
                callbacks=[ckpt, rec])
    m = module()
    t.fit(m, make_dm())
    engine = WeightEngine.built[0]
    return {"rec": rec, "ckpt": tmp / "ckpt", "syncs": engine.syncs, "initial": engine.generated[0][1]}


def test_periodic_validation_reports_pass_at_k_per_domain_with_the_current_weights(fitted):
    rec = fitted["rec"]
    assert len(rec.val) == 2  # after step 1 and step 2
    for val, engine_w, policy_w in zip(rec.val, rec.engine_weights, rec.policy):
        assert engine_w == policy_w  # the engine sampled with the weights of that step
        assert val["val/problems"] == 10 and val["val/math/problems"] == 6 and val["val/logic/problems"] == 4
        for key in ("val/pass@1", "val/pass@2", "val/pass@4", "val/math/pass@1", "val/logic/pass@4"):
            assert 0.0 <= val[key] <= 1.0, key
        assert val["val/pass@1"] <= val["val/pass@2"] <= val["val/pass@4"]
        assert "val/code/pass@1" not in val  # no code problems: not reported
    assert rec.val[0] != rec.val[1]  # different weights, different samples
    assert fitted["syncs"] == 2  # one sync per optimizer step: validation added none


def test_validate_with_checkpoint_evaluates_the_checkpoint_weights(fitted, tmp_path):
    """`validate --ckpt_path step=1.ckpt` on a fresh module (initial weights): the engine is built after
    the restore and must give the numbers the run logged after step 1, not those of the initial model."""
    rec = fitted["rec"]
    WeightEngine.built.clear()
    m = module()
    out = trainer(tmp_path).validate(m, make_dm(), ckpt_path=str(fitted["ckpt"] / "step=1.ckpt"))[0]
    assert WeightEngine.built[0].generated[0][1] == rec.policy[0] != fitted["initial"]
    for key, value in rec.val[0].items():
        assert out[key] == pytest.approx(value, abs=1e-7), key


class EngineFirst(RLModule):
    """Builds the engine from the initial weights before Lightning restores the checkpoint."""

    def configure_model(self):
        super().configure_model()
        self._bind(self.trainer.datamodule)


def test_engine_built_before_the_checkpoint_load_is_synced_before_evaluating(fitted, tmp_path):
    rec = fitted["rec"]
    WeightEngine.built.clear()
    m = EngineFirst(model=PRESET, lr=1e-2, parity=False, objective=C3PO(token_budget=64, kl_coef=0.0))
    dm = make_dm(test_sources=HELD_OUT)
    out = trainer(tmp_path).test(m, dm, ckpt_path=str(fitted["ckpt"] / "step=2.ckpt"))[0]
    engine = WeightEngine.built[0]
    assert engine.weights == rec.policy[1] and engine.syncs == 1  # built with the initial weights, then synced once
    assert all(w == rec.policy[1] for _, w in engine.generated)
    assert out["test/pass@1"] == pytest.approx(rec.val[1]["val/pass@1"], abs=1e-7)
    assert out["test/logic/pass@4"] == pytest.approx(rec.val[1]["val/logic/pass@4"], abs=1e-7)


def test_pass_at_k_values_are_the_unbiased_estimates_of_the_samples(fitted, tmp_path):
    """Recompute the logged numbers from the engine's own samples and the reward."""
    WeightEngine.built.clear()
    out = trainer(tmp_path).validate(module(), make_dm(), ckpt_path=str(fitted["ckpt"] / "step=2.ckpt"))[0]
    engine, reward = WeightEngine.built[0], ParityReward()
    assert len(engine.generated) == 3  # 10 rows in batches of 4
    from ring_lightning.data.synthetic.rl_tasks import rl_task_rows
    from ring_lightning.eval.passk import evaluate_rollouts
    from ring_lightning.eval.rollout_eval import RolloutEvaluator
    from ring_lightning.models.loading import load_tokenizer

    rows = [r for name, src in HELD_OUT.items() for r in src.load(name)]
    assert [r.id for r in rows[:6]] == [r.id for r in rl_task_rows("arithmetic_steps", 6, 8)]
    spec = make_dm().heldout.spec
    counts, reward_sum, tokens = [], 0.0, 0.0
    for b in range(3):
        sampling = RolloutEvaluator(k=spec.k, samples_per_prompt=4, temperature=spec.temperature, top_p=spec.top_p,
                                    max_tokens=spec.max_tokens, seed=spec.seed + b * 7919).sampling
        res = evaluate_rollouts(engine, load_tokenizer(), rows[4 * b:4 * b + 4], reward, 4, sampling)
        counts += res.num_correct.tolist()
        reward_sum += res.mean_reward * res.num_samples.sum().item()
        tokens += res.mean_response_tokens * res.num_samples.sum().item()
    assert out["val/reward_mean"] == pytest.approx(reward_sum / 40, abs=1e-6)
    assert out["val/response_length_mean"] == pytest.approx(tokens / 40, abs=1e-5)
    for k in (1, 2, 4):
        assert out[f"val/pass@{k}"] == pytest.approx(sum(pass_at_k(4, c, k) for c in counts) / 10, abs=1e-6)
        assert out[f"val/math/pass@{k}"] == pytest.approx(sum(pass_at_k(4, c, k) for c in counts[:6]) / 6, abs=1e-6)


def test_without_held_out_sources_fit_skips_validation_and_validate_says_what_to_set(tmp_path):
    dm = make_dm(val_sources=None)
    assert dm.val_dataloader() == []
    with pytest.raises(ValueError, match="`validate` needs held-out prompts: set data.init_args.val_sources"):
        trainer(tmp_path).validate(module(), dm)
    with pytest.raises(ValueError, match="eval_k=.*every k must be in 1..eval_samples_per_prompt=4"):
        make_dm(eval_k=(8,))


def test_held_out_prompts_that_are_training_prompts_are_reported():
    dm = make_dm(val_sources={"same": PromptSource(task="arithmetic_steps", size=4)})  # = the first training rows
    with pytest.warns(UserWarning, match=r"4 of the 4 val_sources prompts are also training prompts"):
        dm.setup("fit")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_dm().setup("fit")  # HELD_OUT (seed 7) shares no prompt with the training source
