"""benchmarks/gpu_check.py on CPU: the dry run (shapes, the FLOP formula on a tiny model, the table), the
threshold verdicts and exit codes (with the GPU parts stubbed), the engine choice, and (slow) that its
`fit` arguments are valid configs."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks import gpu_check  # noqa: E402
from benchmarks.gpu_check import COLUMNS, Check, failed, rl_args, sft_args  # noqa: E402


def ring_lite_by_hand(layers: int) -> tuple[int, int, int]:
    """(total, active, active excl. input embedding) of Ring-lite-2507 with `layers` layers, from its shape."""
    h, vocab = 2048, 126464
    expert, shared = 3 * h * 1408, 3 * h * 2816
    fixed = shared + h * (16 + 8) * 128 + 2048 * h + 64 * h + 2 * h  # shared experts, qkv, dense, router, norms
    total = layers * (64 * expert + fixed) + 2 * vocab * h + h
    active = layers * (6 * expert + fixed) + 2 * vocab * h + h
    return total, active, active - vocab * h


# bailing-tiny by hand: a dense first layer (MLP 3 x 64 x 128, attention 64 x (4 + 2 x 2) x 32 + 4 x 32 x 64,
# two norms), two MoE layers (8 experts 3 x 64 x 32 of which 2 active, one shared expert, router 8 x 64, the
# same attention and norms), a 1152 x 64 embedding and head, and the final norm.
TINY_ATTN = 64 * 8 * 32 + 4 * 32 * 64
TINY_DENSE = 3 * 64 * 128 + TINY_ATTN + 128
TINY_MOE_FIXED = 3 * 64 * 32 + 8 * 64 + TINY_ATTN + 128
TINY_TOTAL = TINY_DENSE + 2 * (TINY_MOE_FIXED + 8 * 3 * 64 * 32) + 2 * 1152 * 64 + 64
TINY_MATMUL = TINY_DENSE + 2 * (TINY_MOE_FIXED + 2 * 3 * 64 * 32) + 1152 * 64 + 64


def test_dry_run_prints_the_shapes_the_formula_and_the_table(capsys):
    assert gpu_check.main(["--dry-run", "--layers", "3", "--sft-tokens", "1000"]) == 0
    out = capsys.readouterr().out
    total, active, matmul = ring_lite_by_hand(3)
    assert (f"ring-lite-2507 x 3 layers: total {total:,} / active {active:,} / active excl. input embedding "
            f"{matmul:,} params; 6 x N x 1000 tokens = {6 * matmul * 1000:.6g} FLOPs per SFT step") in out
    assert (TINY_TOTAL, TINY_MATMUL) == (357_824, 210_368)
    assert (f"bailing-tiny: total {TINY_TOTAL:,} / active {TINY_MATMUL + 1152 * 64:,} / active excl. input "
            f"embedding {TINY_MATMUL:,} params; 6 x N x 1000 tokens = {6 * TINY_MATMUL * 1000:.6g}") in out
    assert f"2 x N = {2 * TINY_MATMUL:.6g} FLOPs per generated token" in out
    assert "engine hf" in out  # no CUDA here
    lines = out.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("check"))
    assert lines[head].split() == list(COLUMNS)
    rows = lines[head + 2:]
    names = [c.name for c in gpu_check.checks(gpu_check.parse([]), None, None, "hf", None, None)]
    assert len(rows) == len(names) == 10
    for ln, name in zip(rows, names):
        assert ln.startswith(name) and ln[len(name):].split()[0] == "-"  # not measured in the dry run
    assert any(">= 5.0%" in ln for ln in rows if ln.startswith("sft MFU"))


def test_verdicts_by_kind_and_nan_fails():
    assert Check("a", 0.2, 0.1, "min").result == "pass" and Check("a", 0.05, 0.1, "min").result == "FAIL"
    assert Check("b", 0.2, 0.1, "max").result == "FAIL" and Check("b", 0.1, 0.1, "max").result == "pass"
    assert Check("c", float("nan"), 1.0, "max").result == "FAIL" and Check("c", float("nan"), 1.0, "min").result == "FAIL"
    assert Check("d", 3.0, None).result == "info" and Check("e", None, 1.0).result == "-"
    assert failed([Check("x", 2.0, 1.0), Check("y", 0.5, 1.0), Check("z", None, 1.0)]) == ["x"]


SFT = {"s_step": 0.5, "tokens": 16000.0, "mfu": 0.3, "mem": 30.0}
RL = {"s_step": 9.0, "s_rollout": 6.0, "s_train": 2.0, "s_sync": 0.5, "gen_tok_s": 2700.0, "loss_tokens": 8192.0,
      "gen_tokens": 16384.0, "train_mfu": 0.1, "rollout_mfu": 0.01, "parity_mean": 0.01, "parity_max": 0.4, "mem": 50.0}


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (20 * 2**30, 80 * 2**30))
    monkeypatch.setattr(gpu_check, "detect_engine", lambda: "hf")
    monkeypatch.setattr(gpu_check, "run_sft", lambda a, params, peak: dict(SFT))
    monkeypatch.setattr(gpu_check, "run_c3po", lambda a, params, peak, engine: dict(RL))


def test_exit_code_is_one_when_a_threshold_fails(fake_gpu, capsys):
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out
    assert "peak 989 TFLOP/s" in out and "MFU = 6 x N x tokens / seconds / peak" in out
    assert "FAIL" not in out and "device memory in use at the end 60.0 GiB" in out
    assert gpu_check.main(["--min-sft-mfu", "0.5", "--max-parity-max", "0.3"]) == 1
    captured = capsys.readouterr()
    assert "sft MFU (6 N T / s / peak)" in captured.err and "weight-sync parity: max |Δlogprob|" in captured.err
    fail_rows = [ln for ln in captured.out.splitlines() if "FAIL" in ln]
    assert len(fail_rows) == 2 and fail_rows[0].startswith("sft MFU") and "30.0%" in fail_rows[0]


def test_exit_code_two_without_cuda_or_a_known_peak(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Some Unknown GPU")
    assert gpu_check.main([]) == 2
    assert "pass --peak-tflops" in capsys.readouterr().err


def test_engine_arguments(monkeypatch):
    hf = rl_args(layers=2, prompts=16, samples=4, max_tokens=256, engine="hf")
    assert "--trainer.strategy=auto" in hf and "--trainer.precision=bf16-mixed" in hf
    assert any('"max_batch_size": 64, "copy_model": true' in x for x in hf)
    assert not any("data_parallel_size" in x or "engine.init_args" in x for x in hf)
    vllm = rl_args(layers=2, max_tokens=256, engine="vllm")
    assert "--trainer.strategy.init_args.data_parallel_size=1" in vllm
    assert "--data.init_args.engine.init_args.max_model_len=768" in vllm and not any("HFEngine" in x for x in vllm)
    assert "--model.init_args.activation_checkpointing=true" in sft_args()
    with pytest.raises(ValueError, match="engine must be 'vllm' or 'hf'"):
        rl_args(engine="sglang")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check.importlib.util, "find_spec", lambda name: None)
    assert gpu_check.detect_engine() == "hf"  # CUDA but no vllm


@pytest.mark.slow
@pytest.mark.parametrize("part", ["sft", "hf", "vllm"])
def test_fit_arguments_are_valid_configs(part):
    """The check's `fit` arguments parse against the GPU configs (no GPU needed to validate them)."""
    args = sft_args(layers=3) if part == "sft" else rl_args(layers=3, prompts=16, phi=4096, engine=part)
    r = subprocess.run([sys.executable, "-m", "ring_lightning", "fit", *args, "--print_config"], capture_output=True,
                       text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "num_hidden_layers: 3" in out and "model: ring-lite-2507" in out and "callbacks: []" in out
    if part == "sft":
        assert "- synthetic:mixed" in out and "val: null" in out and "mixed_precision: bf16" in out
        assert "activation_checkpointing: true" in out and "data_parallel_size: 1" in out
    else:
        assert "task: arithmetic_steps" in out and "token_budget: 4096" in out and "prompts_per_step: 16" in out
        assert "RL_DATA" not in out and ".jsonl" not in out  # no prompt / held-out file is needed
        assert "mean_threshold: 1.0e+30" in out
    if part == "hf":
        assert "HFEngine" in out and "copy_model: true" in out and "precision: bf16-mixed" in out
        assert "ModelParallelStrategy" not in out


def test_gpu_wheels_cover_every_dependency_the_gpu_image_lacks():
    import re
    import tomllib

    script = (REPO / "benchmarks/gpu_wheels.sh").read_text()
    assert subprocess.run(["bash", "-n", str(REPO / "benchmarks/gpu_wheels.sh")]).returncode == 0
    array = lambda name: re.search(rf"^{name}=\((.*?)\)", script, re.S | re.M).group(1)  # noqa: E731
    words = lambda text: [w for ln in text.splitlines() for w in ln.split("#")[0].split()]  # noqa: E731
    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
    carried = {norm(w.split("==")[0]) for w in words(array("PKGS"))}
    assert all("==" in w for w in words(array("PKGS")))  # pinned: one version of each
    on_image = {norm(w) for w in words(array("ON_IMAGE"))}
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {norm(re.match(r"[A-Za-z0-9_.-]+", d).group(0)) for d in deps}
    assert names - on_image - carried == set()
    assert {"math-verify", "reasoning-gym", "jsonargparse", "omegaconf", "typeshed-client"} <= carried
