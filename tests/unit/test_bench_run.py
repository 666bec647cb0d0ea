"""benchmarks/run.py without its heavy workload: the cpu-mid preset's wiring (systems x thread counts, the
saved model and its parameter counts), the dry run, the saved-model cache, and the RL table builder
(best thread count per system, ratios against TRL's best, training FLOP/s against the measured peak)."""

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks import run as bench_run  # noqa: E402
from benchmarks.flops import ParamCount, measure_matmul_peak, preset_params  # noqa: E402
from benchmarks.rl_table import best_variants, rl_rows  # noqa: E402

# The mid model by hand (per layer: q 512x512, k and v 512x256, o 512x512, q/k norms 64 each, two norms
# of 512, router 16x512, 16 experts x 3 x 512 x 256 of which 2 are active; then the final norm, a
# 1152 x 512 embedding and a 1152 x 512 head).
MID_LAYER_FIXED = 512 * 512 * 2 + 512 * 256 * 2 + 2 * 64 + 2 * 512 + 16 * 512
MID_EXPERTS = 16 * 3 * 512 * 256
MID_TOTAL = 8 * (MID_LAYER_FIXED + MID_EXPERTS) + 512 + 2 * 1152 * 512
MID_ACTIVE_MATMUL = 8 * (MID_LAYER_FIXED + MID_EXPERTS * 2 // 16) + 512 + 1152 * 512


def test_cpu_mid_preset_is_the_58m_moe_at_256_tokens_with_both_thread_counts():
    p = bench_run.PRESETS["cpu-mid"]
    assert p.sections == ("rl",) and p.rl.max_tokens == 256 and (p.rl.prompts, p.rl.samples) == (8, 4)
    for system in ("c3po", "c3po-hf", "trl"):
        assert system in p.rl_systems and f"{system}@2" in p.rl_systems
    assert "c3po-async-hf" in p.rl_systems
    assert bench_run.rl_threads(p) == [1, 2]
    c = preset_params(p.saved_model.base, **p.saved_model.overrides)
    assert (c.total, c.active_matmul) == (MID_TOTAL, MID_ACTIVE_MATMUL) == (57_878_016, 13_248_000)
    assert "cpu-tiny" in bench_run.PRESETS and bench_run.PRESETS["cpu-tiny"].saved_model is None


def test_dry_run_prints_the_plan_and_the_formula_without_building(tmp_path, capsys):
    bench_run.main(["--preset", "cpu-mid", "--dry-run", "--out-dir", str(tmp_path), "--steps", "3"])
    out = capsys.readouterr().out
    assert f"{tmp_path / 'models' / 'qwen3-moe-mid'} (built on the first real run)" in out
    assert "steps=3 warmup=1 rounds=1" in out and "max_tokens=256" in out
    assert "c3po@2 (2 thread(s))" in out and "trl (1 thread(s))" in out
    assert "6 x N x T" in out and "N = 13.25M active params" in out and "57.88M total" in out
    assert not (tmp_path / "models").exists()


def test_saved_model_is_built_once_and_then_reused(tmp_path, monkeypatch):
    spec = bench_run.SavedModel("tiny", "qwen3-moe-tiny", {"output_router_logits": False})
    path = bench_run.ensure_saved_model(spec, tmp_path, log=lambda _: None)
    assert path == tmp_path / "models" / "tiny"
    assert (path / "config.json").exists() and list(path.glob("*.safetensors"))
    assert not (tmp_path / "models" / "tiny.partial").exists()
    import ring_lightning.models.loading as loading

    def no_build(*a, **k):
        raise AssertionError("the saved model was rebuilt")

    monkeypatch.setattr(loading, "load_policy", no_build)
    assert bench_run.ensure_saved_model(spec, tmp_path) == path


def _summary(s_step, s_train, loss_tokens=4096.0, gen=8192.0, cpu=None):
    return {"s_step": s_step, "s_rollout": s_step - s_train, "s_reward": 0.0, "s_train": s_train, "s_sync": 0.0,
            "s_other": 0.0, "gen_tokens": gen, "loss_tokens": loss_tokens, "e2e_tok_s": (gen + loss_tokens) / s_step,
            "cpu_s_step": cpu or s_step, "e2e_tok_cpu_s": (gen + loss_tokens) / (cpu or s_step),
            "gen_tok_s": gen / (s_step - s_train), "train_tok_s": loss_tokens / s_train, "reward_mean": 0.0}


def test_rl_rows_pick_each_best_thread_count_and_compare_with_trls_best():
    systems = {"c3po": _summary(20.0, 10.0), "c3po@2": _summary(16.0, 8.0),
               "trl": _summary(40.0, 20.0, loss_tokens=8192.0), "trl@2": _summary(32.0, 16.0, loss_tokens=8192.0)}
    assert best_variants(systems) == {"c3po": "c3po@2", "trl": "trl@2"}
    params = ParamCount(total=100, active=60, routed_experts=50, input_embedding=10)  # active_matmul 50
    res = {"systems": systems, "trl_version": "1.16.0", "engine_start_s": 0.0}
    rows = {(sec, metric): (value, detail) for sec, metric, value, detail in
            rl_rows(res, bench_run.PRESETS["cpu-mid"].rl, 1, params=params, peaks={1: 1e9, 2: 2e9})}
    value, detail = rows[("rl c3po", "best thread count (lowest s/step)")]
    assert value == "2" and detail == "of 1: 20.00 s, 2: 16.00 s"
    assert rows[("rl trl", "best thread count (lowest s/step)")][0] == "2"
    # vs TRL@2 (32 s/step, 12288 tokens/step): c3po@1 steps/s 32/20, e2e (12288/20) / (16384/32)
    ratio = rows[("rl c3po / TRL best", "steps/s; e2e tokens/s; tokens/CPU-s; steps/CPU-s")]
    assert ratio[0] == "1.60x; 1.20x; 1.20x; 1.60x" and "(trl@2: 2 thread(s)" in ratio[1]
    assert rows[("rl c3po@2 / TRL best", "steps/s; e2e tokens/s; tokens/CPU-s; steps/CPU-s")][0].startswith("2.00x;")
    assert ("rl trl / TRL best", "steps/s; e2e tokens/s; tokens/CPU-s; steps/CPU-s") not in rows
    # training FLOP/s = 6 x 50 x 4096 / 10 s = 122,880 FLOP/s -> GFLOP/s, of the 1-thread peak (1e9)
    assert rows[("rl c3po", "training GFLOP/s (6NT / train s)")][0] == "0.00; 0.0% of peak"
    assert rows[("rl trl@2", "training GFLOP/s (6NT / train s)")][0] == f"{6 * 50 * 8192 / 16 / 1e9:,.2f}; 0.0% of peak"
    assert rows[("rl", "fp32 matmul peak, 2 thread(s)")][0] == "2.0 GFLOP/s"
    assert rows[("rl", "training FLOPs formula")][0] == "6 x N x T"


def test_rl_rows_flop_share_of_peak_by_hand():
    systems = {"c3po@2": _summary(2.0, 1.0, loss_tokens=1000.0)}
    params = ParamCount(total=2_000_000, active=1_100_000, routed_experts=1_000_000, input_embedding=100_000)
    rows = rl_rows({"systems": systems}, bench_run.PRESETS["cpu-mid"].rl, 1, params=params, peaks={2: 24e9})
    flops = [r for r in rows if r[1].startswith("training GFLOP/s")]
    # 6 x 1e6 x 1000 / 1 s = 6 GFLOP/s = 25% of 24 GFLOP/s; at the system's 2 threads
    assert flops == [("rl c3po@2", "training GFLOP/s (6NT / train s)", "6.00; 25.0% of peak",
                      "1000 trained tokens in 1.000 s at 2 torch thread(s)")]
    assert not [r for r in rows if "TRL best" in r[0]]  # no TRL run: no ratios


def test_matmul_peak_restores_threads_and_rejects_bad_sizes():
    before = torch.get_num_threads()
    assert measure_matmul_peak(threads=before + 1, n=64, reps=1) > 0
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="n >= 1 and reps >= 1"):
        measure_matmul_peak(n=0)
