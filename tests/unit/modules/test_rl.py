"""RLModule in real Lightning fits on CPU with a tiny Qwen3-MoE policy and a fake rollout engine
(a test double for the engine seam; the real vLLM engine and reward router run in
tests/integration/test_rl_fit.py)."""

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from unit.rl_fixtures import Float64C3PO, ListLogger, ParityReward, Record, checksum, recording_engine

from ring_lightning.data.rollouts.stream import PromptSource
from ring_lightning.data.rollouts.datamodule import RolloutDataModule
from ring_lightning.modules.rl import RLModule
from ring_lightning.rl.objectives import C3PO, GRPO
from ring_lightning.modules.rng_state import KEY as RNG_KEY

PRESET = "bailing-tiny"


def make_dm(engine=None, L_=4, K=4, **kw):
    return RolloutDataModule(sources={"arith": PromptSource(task="arithmetic_steps", size=64)},
                             engine=engine or recording_engine(), reward=ParityReward(),
                             prompts_per_step=L_, samples_per_prompt=K, max_response_tokens=14, **kw)


def fit(module, dm, steps=2, callbacks=(), **trainer_kw):
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                        callbacks=list(callbacks), **trainer_kw)
    trainer.fit(module, dm)
    return trainer


def test_exactly_phi_loss_tokens_every_step_and_on_policy_rollouts():
    engine, rec = recording_engine(), Record()
    module = RLModule(model=PRESET, micro_batch_tokens=160, lr=1e-3, parity=False, objective=C3PO(token_budget=96))
    initial = checksum(module.policy.named_parameters()) if module.policy is not None else None
    fit(module, make_dm(engine), steps=3, callbacks=[rec])
    assert [m["train/loss_tokens"] for m in rec.metrics] == [96.0] * 3
    assert all(m["budget/loss_tokens"] == 96.0 and m["train/budget"] == 96.0 for m in rec.metrics)
    for key in ("reward/mean", "reward/math/mean", "reward/math/accuracy", "rollout/response_length_mean",
                "rollout/response_length_max", "budget/responses_used", "budget/responses_truncated",
                "budget/responses_dropped", "train/entropy", "train/kl_ref", "train/clip_low_frac",
                "train/clip_high_frac", "train/grad_norm", "rollout/train_infer_kl", "time/rollout",
                "time/reward", "time/train", "time/sync", "throughput/generated_tokens_per_s",
                "throughput/trained_tokens_per_s", "train/router_load_balance"):
        assert key in rec.metrics[-1], key
    # on-policy: step t (1-based) samples with the weights after update t-1; the first sync is at bind
    assert initial is None
    assert [v for v, _ in engine.generated] == [1, 2, 3]
    assert engine.generated[1][1] == pytest.approx(rec.after_step[0], rel=0, abs=0)
    assert engine.generated[2][1] == pytest.approx(rec.after_step[1], rel=0, abs=0)
    assert engine.generated[0][1] != engine.generated[1][1]  # the update did change the weights
    assert module.rl_tokens_trained == 3 * 96 and module.engine_weight_version == 3
    # the reference model is frozen and outside the checkpointed state
    assert all(not p.requires_grad for p in module._ref[0].parameters())
    assert not any(k.startswith("_ref") for k in module.state_dict())


def _one_step_params(micro_batch_tokens, aux_coef=0.0, z_coef=1e-3):
    sgd = lambda params: torch.optim.SGD(params, lr=1.0)  # noqa: E731  the update is -grad
    module = Float64C3PO(model=PRESET, objective=C3PO(token_budget=120, kl_coef=1e-2),
                         micro_batch_tokens=micro_batch_tokens, optimizer=sgd, grad_clip=None,
                         router_aux_loss_coef=aux_coef, router_z_loss_coef=z_coef, parity=False)
    rec = Record()
    fit(module, make_dm(), steps=1, callbacks=[rec])
    return torch.cat([p.detach().flatten() for p in module.policy.parameters()]), rec.metrics[-1]


def test_micro_batching_gives_the_single_batch_gradient_in_float64():
    one, m1 = _one_step_params(None)
    many, m2 = _one_step_params(120)
    assert m1["train/micro_batches"] == 1 and m2["train/micro_batches"] >= 2
    assert m1["train/loss_tokens"] == m2["train/loss_tokens"] == 120
    assert one.dtype == torch.float64
    init = Float64C3PO(model=PRESET, parity=False)
    init.configure_model()
    start = torch.cat([p.detach().flatten() for p in init.policy.parameters()])
    update = (one - start).abs().max()
    # float64 everywhere except BailingMoe's fp32 routing weights, whose rounding depends on the
    # padded batch shape (~1e-8 relative); a wrong per-micro-batch normaliser is off by O(1)
    assert update > 1e-3
    assert (one - many).abs().max() <= 1e-6 * update, float((one - many).abs().max() / update)


def test_grpo_mode_trains_on_every_response():
    rec = Record()
    module = RLModule(model=PRESET, parity=False, objective=GRPO(kl_coef=0.0, clip_eps_high=0.28, tis_cap=2.0))
    fit(module, make_dm(), steps=2, callbacks=[rec])
    assert module._ref == []  # kl_coef == 0: no reference model
    for m in rec.metrics:
        assert m["train/loss_tokens"] == m["rollout/generated_tokens"] == m["train/budget"]
        assert m["budget/responses_used"] == 16 and "train/kl_ref" not in m
        # TIS against the engine's logprobs (the fake engine reports -5 per token; the tiny random
        # policy gives ~-7, so the weight π_old/π_engine is ~e^-2, below the cap)
        assert 0.0 < m["train/tis_weight_mean"] < 1.0 and m["train/tis_capped_frac"] == 0.0


def test_a_step_of_carried_responses_only_logs_no_stale_mismatch(tmp_path):
    """Step 2 trains only carried responses (max_carry_fraction 1.0 lets leftovers fill a step): no
    train-vs-inference mismatch is measured, and none is logged (Lightning would repeat step 1's value
    unless the module hides it)."""
    dm = RolloutDataModule(sources={"a": PromptSource(task="arithmetic_steps", size=40)}, engine=recording_engine(),
                           reward=ParityReward(), prompts_per_step=4, samples_per_prompt=4, max_response_tokens=14)
    module = RLModule(model="bailing-tiny", parity=False, objective=C3PO(token_budget=64, overflow="carry",
                                                                        max_carry_fraction=1.0))
    logged = ListLogger()
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=logged, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=1, enable_checkpointing=False)
    trainer.fit(module, dm)
    assert [step for step, _ in logged.rows] == [0, 1]
    assert logged.rows[1][1]["budget/loss_tokens"] == 64.0 and logged.rows[0][1]["budget/responses_carried"] > 0
    assert "rollout/train_infer_kl" in logged.rows[0][1] and "rollout/train_infer_kl" not in logged.rows[1][1]


def test_checkpoint_saves_counters_stage_and_resumes(tmp_path):
    model_dir = tmp_path / "sft"
    policy_module = RLModule(model=PRESET, parity=False, objective=C3PO(kl_coef=0.0))
    policy_module.configure_model()
    policy_module.policy.save_pretrained(model_dir)
    policy_module.tokenizer.save_pretrained(model_dir)
    (model_dir / "ring_lightning_meta.json").write_text(json.dumps({"sft_loss_tokens_seen": 5000}))
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=2)
    sources = {"a": PromptSource(task="arithmetic_steps", size=40), "b": PromptSource(task="countdown", size=40)}
    stages = {"reasoning": {"a": 1.0}, "general": {"b": 1.0}}
    dm = RolloutDataModule(
        sources=sources, stages=stages, engine=recording_engine(), reward=ParityReward(), prompts_per_step=4,
        samples_per_prompt=4, max_response_tokens=14)
    module = RLModule(model=str(model_dir), parity=False, objective=C3PO(token_budget=64, overflow="carry"))
    assert module.sft_tokens == 5000

    class SwitchStage(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.datamodule.stage != "general":  # once, after step 1
                trainer.datamodule.set_stage("general")

    class RngAt(Callback):  # the torch generator right after step 2's training_step
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            nonlocal rng_after_step2
            rng_after_step2 = torch.get_rng_state()

    rng_after_step2 = None
    rec, logged = Record(), ListLogger()
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=logged, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=1,
                        callbacks=[ckpt, SwitchStage(), rec, RngAt()])
    trainer.fit(module, dm)
    assert rec.metrics[-1]["tokens/rl_over_sft"] == pytest.approx(128 / 5000)
    # the switch after step 1 dropped step 1's carried responses: step 2 trains fresh "general" ones
    assert [step for step, _ in logged.rows] == [0, 1]
    assert all("rollout/train_infer_kl" in row for _, row in logged.rows)
    assert rec.metrics[-1]["rollout/staleness_max"] == 0.0 and rec.metrics[-1]["reward/logic/count"] > 0
    exported = module.export_hf(tmp_path / "rl_export")  # the next stage's input
    meta = json.loads((exported / "ring_lightning_meta.json").read_text())
    assert meta == {"sft_loss_tokens_seen": 5000, "rl_tokens_trained": 128,
                    "rl_tokens_generated": module.rl_tokens_generated}
    reloaded = RLModule(model=str(exported), parity=False)
    reloaded.configure_model()
    assert reloaded.sft_tokens == 5000
    for (name, a), (_, b) in zip(module.policy.named_parameters(), reloaded.policy.named_parameters()):
        assert torch.equal(a, b), name
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)  # Lightning's default for ckpt_path
    assert state["c3po"] == {"rl_tokens_trained": 128, "rl_tokens_generated": module.rl_tokens_generated,
                             "sft_tokens": 5000, "engine_weight_version": 2,
                             "nonfinite": {"skipped_total": 0, "consecutive": 0}}
    assert torch.equal(state[RNG_KEY]["torch"], rng_after_step2)  # the generators as after the saved step
    assert state["RolloutDataModule"]["stage"] == "general"
    carried = state["RolloutDataModule"]["carried"]  # past-budget responses, with trainer π_old
    assert carried and rec.metrics[-1]["budget/responses_carried"] == len(carried)
    for r in carried:
        assert r["age"] == 1 and r["old_logprobs"].shape == r["response_ids"].shape
        assert torch.all(r["old_logprobs"] < 0) and not torch.equal(r["old_logprobs"], r["engine_logprobs"])
    dm2 = RolloutDataModule(sources=sources, stages=stages, engine=recording_engine(), reward=ParityReward(),
                            prompts_per_step=4, samples_per_prompt=4, max_response_tokens=14)

    class RngAtStep(RLModule):
        def training_step(self, request, batch_idx):
            self.rng_at_step = torch.get_rng_state()
            return super().training_step(request, batch_idx)

    module2 = RngAtStep(model=str(model_dir), parity=False, objective=C3PO(token_budget=64, overflow="carry"))
    torch.manual_seed(123)  # a resumed process starts with other generator states
    rec2 = Record()
    trainer2 = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, log_every_n_steps=1, callbacks=[rec2],
                         default_root_dir=tmp_path)
    trainer2.fit(module2, dm2, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert dm2.stage == "general" and module2.rl_tokens_trained == 3 * 64
    assert torch.equal(module2.rng_at_step, rng_after_step2)  # restored just before the resumed step
    assert rec2.metrics[-1]["engine/weight_version"] == 3.0 and rec2.metrics[-1]["rollout/weight_version"] == 2.0
    assert dm2.engine is None or dm2.engine.version >= 1


def test_bf16_mixed_on_cpu_computes_in_bf16_and_keeps_fp32_master_weights():
    """Lightning `precision="bf16-mixed"` on CPU (the benchmarks' `:bf16` variants; AMX-BF16 CPUs run bf16
    matmuls several times faster than fp32): the decoder runs in bf16 under autocast, the weights and their
    AdamW state stay fp32, exactly Φ tokens are trained, and the first step's loss is the fp32 step's up to
    bf16 rounding (same seed, same rollouts)."""
    def run(precision):
        torch.manual_seed(0)
        module = RLModule(model=PRESET, micro_batch_tokens=160, lr=1e-3, parity=False, objective=C3PO(token_budget=96))
        seen, rec = [], Record()

        class Hook(Callback):
            def on_train_start(self, trainer, pl_module):
                layer = pl_module.policy.get_submodule("model.layers.0.attention.query_key_value")
                layer.register_forward_hook(lambda m, i, o: seen.append(o.dtype))

        fit(module, make_dm(), steps=2, callbacks=[rec, Hook()], precision=precision)
        return module, rec.metrics, seen

    half, half_metrics, half_seen = run("bf16-mixed")
    full, full_metrics, full_seen = run("32-true")
    assert set(half_seen) == {torch.bfloat16} and set(full_seen) == {torch.float32}
    assert {p.dtype for p in half.policy.parameters()} == {torch.float32}
    opt = half.optimizers().optimizer
    assert {s["exp_avg"].dtype for s in opt.state.values()} == {torch.float32}
    assert [m["train/loss_tokens"] for m in half_metrics] == [96.0, 96.0]
    a, b = half_metrics[0]["train/loss"], full_metrics[0]["train/loss"]
    assert a != b and abs(a - b) <= 1e-3 * abs(b), (a, b)  # measured: 0.097123 vs 0.097128
