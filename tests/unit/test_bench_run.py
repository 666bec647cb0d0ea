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
from benchmarks.rl_table import best_variants, lever_rows, phase_estimate, phase_rows, rl_rows  # noqa: E402

# The mid model by hand (per layer: q 512x512, k and v 512x256, o 512x512, q/k norms 64 each, two norms
# of 512, router 16x512, 16 experts x 3 x 512 x 256 of which 2 are active; then the final norm, a
# 1152 x 512 embedding and a 1152 x 512 head).
MID_LAYER_FIXED = 512 * 512 * 2 + 512 * 256 * 2 + 2 * 64 + 2 * 512 + 16 * 512
MID_EXPERTS = 16 * 3 * 512 * 256
MID_TOTAL = 8 * (MID_LAYER_FIXED + MID_EXPERTS) + 512 + 2 * 1152 * 512
MID_ACTIVE_MATMUL = 8 * (MID_LAYER_FIXED + MID_EXPERTS * 2 // 16) + 512 + 1152 * 512


def test_cpu_mid_preset_is_the_58m_moe_at_256_tokens_with_both_thread_counts():
    p = bench_run.PRESETS["cpu-mid"]
    assert p.sections == ("rl", "moe") and p.rl.max_tokens == 256 and (p.rl.prompts, p.rl.samples) == (8, 4)
    for system in ("c3po", "c3po-hf", "trl"):
        assert system in p.rl_systems and f"{system}@2" in p.rl_systems
    assert {"c3po-async-hf", "c3po-async", "c3po-oldpass", "c3po-nokl"} <= set(p.rl_systems)
    # bf16 variants of ours and of TRL (autocast over fp32 weights, and TRL's bf16 weights)
    assert {"c3po@2:bf16", "c3po-async:bf16", "trl@2:bf16", "trl@2:bf16w"} <= set(p.rl_systems)
    assert (p.moe["model"], p.moe["overrides"]) == (p.saved_model.base, p.saved_model.overrides)
    assert "moe" in bench_run.SECTIONS and "moe" not in bench_run.PRESETS["cpu-tiny"].sections
    assert bench_run.rl_threads(p) == [1, 2]
    # steady steps (overlap start; training settles over steps 2-5) on a compiled vLLM engine
    assert (p.rl.steps, p.rl.warmup) == (5, 3) and p.rl.vllm_kwargs == {"enforce_eager": False}
    c = preset_params(p.saved_model.base, **p.saved_model.overrides)
    assert (c.total, c.active_matmul) == (MID_TOTAL, MID_ACTIVE_MATMUL) == (57_878_016, 13_248_000)
    assert "cpu-tiny" in bench_run.PRESETS and bench_run.PRESETS["cpu-tiny"].saved_model is None


def test_dry_run_prints_the_plan_and_the_formula_without_building(tmp_path, capsys):
    bench_run.main(["--preset", "cpu-mid", "--dry-run", "--out-dir", str(tmp_path), "--steps", "6"])
    out = capsys.readouterr().out
    assert f"{tmp_path / 'models' / 'qwen3-moe-mid'} (built on the first real run)" in out
    assert "steps=6 warmup=3 rounds=1 vLLM engine {'enforce_eager': False}" in out and "max_tokens=256" in out
    assert "c3po@2 (2 thread(s))" in out and "trl (1 thread(s))" in out
    assert "6 x N x T" in out and "N = 13.25M active params" in out and "57.88M total" in out
    assert "sections rl moe" in out
    assert ("rl levers: c3po-async vs c3po (s_step), c3po-async-hf vs c3po-hf (s_step), "
            "c3po-oldpass vs c3po (s_train), c3po-nokl vs c3po (s_train)") in out
    assert "rl per-phase threads: c3po, c3po-hf, trl\n" in out
    assert "experts_implementation eager, batched_mm, grouped_mm" in out and "2 x 256 tokens, best of 2 steps" in out
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


def _summary(s_step, s_train, loss_tokens=4096.0, gen=8192.0, cpu=None, rollout=None):
    rollout = s_step - s_train if rollout is None else rollout
    return {"s_step": s_step, "s_rollout": rollout, "s_rest": s_step - rollout - s_train, "s_reward": 0.0,
            "s_train": s_train, "s_sync": 0.0,
            "s_other": 0.0, "gen_tokens": gen, "loss_tokens": loss_tokens, "e2e_tok_s": (gen + loss_tokens) / s_step,
            "cpu_s_step": cpu or s_step, "e2e_tok_cpu_s": (gen + loss_tokens) / (cpu or s_step),
            "gen_tok_s": gen / rollout, "train_tok_s": loss_tokens / s_train, "reward_mean": 0.0}


def test_rl_rows_pick_each_best_thread_count_and_compare_with_trls_best():
    systems = {"c3po": _summary(20.0, 10.0), "c3po@2": _summary(16.0, 8.0),
               "trl": _summary(40.0, 20.0, loss_tokens=8192.0), "trl@2": _summary(32.0, 16.0, loss_tokens=8192.0)}
    assert best_variants(systems) == {"c3po": "c3po@2", "trl": "trl@2"}
    params = ParamCount(total=100, active=60, routed_experts=50, input_embedding=10)  # active_matmul 50
    res = {"systems": systems, "trl_version": "1.16.0", "engine_starts": [("float32", 12.0)]}
    rows = {(sec, metric): (value, detail) for sec, metric, value, detail in
            rl_rows(res, bench_run.PRESETS["cpu-mid"].rl, 1, params=params, peaks={1: 1e9, 2: 2e9})}
    value, detail = rows[("rl c3po", "best setting: threads[:precision] (lowest s/step)")]
    assert value == "2" and detail == "of 1: 20.00 s, 2: 16.00 s"
    assert rows[("rl trl", "best setting: threads[:precision] (lowest s/step)")][0] == "2"
    # vs TRL@2 (32 s/step, 12288 tokens/step): c3po@1 steps/s 32/20, e2e (12288/20) / (16384/32)
    ratio = rows[("rl c3po / TRL best", "steps/s; e2e tokens/s; tokens/CPU-s; steps/CPU-s")]
    assert ratio[0] == "1.60x; 1.20x; 1.20x; 1.60x" and "(trl@2: 2 thread(s), fp32" in ratio[1]
    assert rows[("rl c3po@2 / TRL best", "steps/s; e2e tokens/s; tokens/CPU-s; steps/CPU-s")][0].startswith("2.00x;")
    assert ("rl trl / TRL best", "steps/s; e2e tokens/s; tokens/CPU-s; steps/CPU-s") not in rows
    # training FLOP/s = 6 x 50 x 4096 / 10 s = 122,880 FLOP/s -> GFLOP/s, of the 1-thread peak (1e9)
    assert rows[("rl c3po", "training GFLOP/s (6NT / train s)")][0] == "0.00; 0.0% of peak"
    assert rows[("rl trl@2", "training GFLOP/s (6NT / train s)")][0] == f"{6 * 50 * 8192 / 16 / 1e9:,.2f}; 0.0% of peak"
    assert rows[("rl", "fp32 matmul peak, 2 thread(s)")][0] == "2.0 GFLOP/s"
    assert rows[("rl", "training FLOPs formula")][0] == "6 x N x T"
    assert rows[("rl", "vLLM engine start seconds (once)")][0] == "12.0"  # one engine for every vLLM run


def test_rl_rows_take_trls_best_over_threads_and_precisions():
    """Precision variants (`:bf16`, `:bf16w`) compete for each base's best setting; phase threads and
    levers compare one precision only; a bf16 system's FLOP/s is also shown against the bf16 peak."""
    systems = {"c3po@2": _summary(16.0, 8.0), "c3po:bf16": _summary(12.0, 6.0, rollout=4.0),
               "c3po@2:bf16": _summary(8.0, 4.0, rollout=3.0), "c3po-nokl@2:bf16": _summary(7.0, 3.0),
               "trl@2": _summary(32.0, 16.0), "trl@2:bf16w": _summary(24.0, 12.0)}
    assert best_variants(systems) == {"c3po": "c3po@2:bf16", "c3po-nokl": "c3po-nokl@2:bf16", "trl": "trl@2:bf16w"}
    params = ParamCount(total=100, active=60, routed_experts=50, input_embedding=10)
    rows = {(sec, metric): (value, detail) for sec, metric, value, detail in
            rl_rows({"systems": systems, "engine_starts": [("float32", 31.8), ("bfloat16", 20.2)]},
                    bench_run.PRESETS["cpu-mid"].rl, 1, params=params, peaks={1: 1e9, 2: 2e9},
                    bf16_peaks={1: 3e9, 2: 6e9})}
    assert rows[("rl", "vLLM engine start seconds")][0] == "float32 31.8, bfloat16 20.2"
    value, detail = rows[("rl c3po", "best setting: threads[:precision] (lowest s/step)")]
    assert value == "2:bf16" and detail == "of 2: 16.00 s, 1:bf16: 12.00 s, 2:bf16: 8.00 s"
    ratio = rows[("rl c3po@2:bf16 / TRL best", "steps/s; e2e tokens/s; tokens/CPU-s; steps/CPU-s")]
    assert ratio[0].startswith("3.00x;") and "(trl@2:bf16w: 2 thread(s), bf16w" in ratio[1]
    assert rows[("rl c3po@2 / TRL best", "steps/s; e2e tokens/s; tokens/CPU-s; steps/CPU-s")][0].startswith("1.50x;")
    # phase threads within c3po:bf16 only (c3po@2 is another family): rollout 4 (1) vs 3 (2), train 6 vs 4
    assert rows[("rl threads c3po:bf16", "rollout / train seconds at each thread count")][0] == \
        "1: 4.00 / 6.00, 2: 3.00 / 4.00"
    assert not [k for k in rows if k[0] == "rl threads c3po"]  # one fp32 variant: no estimate
    # the lever compares with c3po at 2 threads in bf16 (train 4 - 3), not with c3po@2 in fp32 (8 - 3)
    assert rows[("rl lever c3po-nokl@2:bf16", "train seconds bought per step (vs c3po@2:bf16)")][0].startswith("1.000;")
    flops = 6 * 50 * 4096 / 4.0
    assert rows[("rl c3po@2:bf16", "training GFLOP/s (6NT / train s)")][0] == \
        f"{flops / 1e9:,.2f}; {flops / 2e9:.1%} of peak; {flops / 6e9:.1%} of the bf16 peak"
    assert rows[("rl c3po@2", "training GFLOP/s (6NT / train s)")][0].endswith("of peak")  # fp32: fp32 peak only
    assert rows[("rl", "bf16 matmul peak, 2 thread(s)")][0] == "6.0 GFLOP/s"


def test_rl_rows_flop_share_of_peak_by_hand():
    systems = {"c3po@2": _summary(2.0, 1.0, loss_tokens=1000.0)}
    params = ParamCount(total=2_000_000, active=1_100_000, routed_experts=1_000_000, input_embedding=100_000)
    rows = rl_rows({"systems": systems}, bench_run.PRESETS["cpu-mid"].rl, 1, params=params, peaks={2: 24e9})
    flops = [r for r in rows if r[1].startswith("training GFLOP/s")]
    # 6 x 1e6 x 1000 / 1 s = 6 GFLOP/s = 25% of 24 GFLOP/s; at the system's 2 threads
    assert flops == [("rl c3po@2", "training GFLOP/s (6NT / train s)", "6.00; 25.0% of peak",
                      "1000 trained tokens in 1.000 s at 2 torch thread(s)")]
    assert not [r for r in rows if "TRL best" in r[0]]  # no TRL run: no ratios


def test_phase_estimate_takes_each_phases_best_count_plus_the_best_variants_rest():
    # c3po: rollout best at 1 thread (6 s), train best at 2 (5 s); best step c3po@2 (14 s = 7 + 5 + rest 2)
    systems = {"c3po": _summary(16.0, 8.0, rollout=6.0), "c3po@2": _summary(14.0, 5.0, rollout=7.0),
               "c3po-hf": _summary(30.0, 10.0), "trl": _summary(40.0, 20.0),
               "trl@2": _summary(28.0, 12.0, rollout=13.0)}
    e = phase_estimate(systems, 1)
    assert set(e) == {"c3po", "trl"}  # c3po-hf ran at one count only
    assert e["c3po"]["threads"] == {1: (6.0, 8.0), 2: (7.0, 5.0)}
    assert (e["c3po"]["rollout_threads"], e["c3po"]["train_threads"], e["c3po"]["best"]) == (1, 2, "c3po@2")
    assert e["c3po"]["rest"] == 2.0 and e["c3po"]["estimate"] == 6.0 + 5.0 + 2.0
    # trl: rollout 20 (1) vs 13 (2), train 20 vs 12: both at 2, rest of trl@2 = 28 - 13 - 12 = 3
    assert e["trl"]["estimate"] == 13.0 + 12.0 + 3.0 == systems["trl@2"]["s_step"]
    rows = {(sec, metric): (value, detail) for sec, metric, value, detail in phase_rows(systems, 1)}
    split = rows[("rl threads c3po", "rollout / train seconds at each thread count")][0]
    assert split == "1: 6.00 / 8.00, 2: 7.00 / 5.00"
    # vs TRL at its best (trl@2, 28 s): 28 / 13
    value, detail = rows[("rl threads c3po", "step seconds with each phase at its best count (estimate)")]
    assert value == f"13.000; {28 / 13:.2f}x TRL best (trl@2)" and "rest 2.000 s" in detail
    assert rows[("rl threads trl", "step seconds with each phase at its best count (estimate)")][0] == "28.000"


def test_lever_rows_compare_each_lever_with_its_base_at_the_same_thread_count():
    systems = {"c3po": _summary(20.0, 10.0), "c3po@2": _summary(16.0, 8.0), "c3po-oldpass": _summary(22.0, 12.5),
               "c3po-nokl": _summary(19.0, 9.0), "c3po-async": _summary(15.0, 10.0),
               "c3po-oldpass@3": _summary(9.0, 4.0)}
    rows = {sec: (metric, value) for sec, metric, value, _ in lever_rows(systems, 1)}
    details = {sec: detail for sec, _, _, detail in lever_rows(systems, 1)}
    assert details["rl lever c3po-async"].endswith("step 15.000 s vs 20.000 s")  # the step figure once
    assert details["rl lever c3po-nokl"].endswith("train 9.000 s vs 10.000 s; step 19.000 vs 20.000 s")
    assert rows["rl lever c3po-oldpass"] == ("train seconds bought per step (vs c3po)", "2.500; 12.5% of c3po's step")
    assert rows["rl lever c3po-nokl"] == ("train seconds bought per step (vs c3po)", "1.000; 5.0% of c3po's step")
    assert rows["rl lever c3po-async"] == ("step seconds bought per step (vs c3po)", "5.000; 25.0% of c3po's step")
    assert "rl lever c3po-oldpass@3" not in rows  # no c3po at 3 threads to compare with
    assert any(r[0] == "rl lever c3po-nokl" for r in rl_rows({"systems": systems}, bench_run.PRESETS["cpu-mid"].rl, 1))


def test_experts_rows_state_the_formula_speedups_and_share_of_peak():
    from benchmarks.bench_moe import experts_rows

    res = {"eager": {"tok_s": 500.0, "seconds": 1.024}, "batched_mm": {"error": "cannot dispatch on cpu: X"},
           "grouped_mm": {"tok_s": 2000.0, "seconds": 0.256}}
    rows = experts_rows(res, 512, 1_000_000, 48e9, "grouped_mm", "test")
    by = {(sec, metric): (value, detail) for sec, metric, value, detail in rows}
    assert by[("moe", "training FLOPs formula")][0] == "6 x N x T" and "N = 1.00M, T = 512 tokens" in \
        by[("moe", "training FLOPs formula")][1]
    # grouped_mm: 6 x 1e6 x 512 / 0.256 s = 12 GFLOP/s = 25% of 48; 4x eager
    assert by[("moe grouped_mm", "fwd+bwd tokens/s; GFLOP/s")] == ("2,000; 12.00; 25.0% of peak",
                                                                 "4.00x eager; best step 0.256 s")
    assert by[("moe eager", "fwd+bwd tokens/s; GFLOP/s")][0] == "500; 3.00; 6.2% of peak"
    assert by[("moe batched_mm", "fwd+bwd tokens/s")] == ("n/a", "cannot dispatch on cpu: X")
    assert by[("moe", "implementation ring_lightning trains with")][0] == "grouped_mm"


def test_bench_experts_reports_an_implementation_that_cannot_dispatch_instead_of_raising():
    from benchmarks.bench_moe import bench_experts, default_implementation

    res = bench_experts("qwen3-moe-tiny", {}, batch=1, seq=8, steps=1, implementations=("eager", "no_such_kernel"))
    assert res["eager"]["tok_s"] == pytest.approx(8 / res["eager"]["seconds"])
    assert res["no_such_kernel"]["error"].startswith("cannot dispatch on cpu: ValueError")
    assert default_implementation("qwen3-moe-tiny") == "grouped_mm"  # transformers' default, torch >= 2.9 on CPU
    capped = bench_experts("qwen3-moe-tiny", {}, batch=1, seq=8, steps=1, implementations=("batched_mm",), max_gib=0)
    assert capped["batched_mm"]["error"].startswith("not run: its per-token expert-weight gather")


def test_batched_mm_memory_estimate_of_the_mid_model_by_hand():
    from benchmarks.bench_moe import batched_mm_gib
    from ring_lightning.models.loading import build_config

    p = bench_run.PRESETS["cpu-mid"]
    cfg = build_config(p.saved_model.base, **p.saved_model.overrides)
    # 8 layers x 512 tokens x top-2 x 3 x 512 x 256 x 4 bytes = 12 GiB: over the 4 GiB cap, so not run there
    assert batched_mm_gib(cfg, 512) == 8 * 512 * 2 * 3 * 512 * 256 * 4 / 2**30 == 12.0


def test_matmul_peak_restores_threads_and_rejects_bad_sizes():
    before = torch.get_num_threads()
    assert measure_matmul_peak(threads=before + 1, n=64, reps=1) > 0
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="n >= 1 and reps >= 1"):
        measure_matmul_peak(n=0)
