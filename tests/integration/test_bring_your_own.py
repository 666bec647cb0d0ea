"""The README's bring-your-own path, end to end through `python -m ring_lightning fit` (issue 20's
acceptance): a tiny Qwen2 with tied embeddings, saved locally with a tokenizer whose stock chat template
has no `{% generation %}` tags, and peers' data files (tests/fixtures/byo: TRL prompt-completion SFT rows;
TRL/verl message-list RL prompts without `id`/`domain`, the answer in a `solution` column) → SFT
(configs/quickstart/sft.yaml with the model's own tokenizer; entropy probe and candidate every 2 steps,
the chosen candidate exported) → reasoning RL from that export with the embedded vLLM engine (parity
≤ 1e-4 at the bind and after each sync of the trained, tied weights) → the RL export, loaded by plain
transformers in a Python where importing ring_lightning is impossible: logits equal the trainer's
reload (`load_policy`) to 1e-5. ~35 s on 2 cores (the engine start dominates)."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ring_lightning.models.loading import load_policy, load_tokenizer
from standalone import BLOCK_PROJECT

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
TOKENIZER = FIXTURES / "tokenizers" / "qwen2.5"  # Qwen2.5-Instruct's template, no generation tags
VLLM_ENGINE = ("{class_path: ring_lightning.rollout.vllm_engine.VLLMEngine, init_args: {max_model_len: 256, "
               "enforce_eager: true, cpu_kvcache_space_gib: 1, max_num_seqs: 16}}")
PROMPT = [[1, 17, 300, 42, 9, 100, 7, 7, 64, 1000], [3, 4, 5, 6, 7, 8, 9, 10, 11, 1151]]
ENV = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1", OMP_NUM_THREADS="1",
           HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

# A fresh interpreter: the repo off sys.path and a meta-path finder failing every `ring_lightning`
# import (the package is installed editable), as tests/unit/models/test_export_remote_code.py does.
STANDALONE = BLOCK_PROJECT + r'''
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

try:
    import ring_lightning  # noqa: F401
    blocked = False
except ImportError:
    blocked = True
model = AutoModelForCausalLM.from_pretrained(EXPORT, trust_remote_code=True, dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(EXPORT)
with torch.no_grad():
    torch.save(model(torch.tensor(PROMPT)).logits, OUT + "/logits.pt")
emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
print(json.dumps({"blocked": blocked, "tied": head.data_ptr() == emb.data_ptr(), "vocab": len(tok),
                  "chat_template": tok.chat_template,
                  "ring_modules": sorted(m for m in sys.modules if m.split(".")[0] == "ring_lightning")}))
'''


def save_tied_qwen2(out: Path) -> None:
    """A user's local HF model: random tiny Qwen2, tied embeddings, vocab padded past the tokenizer's."""
    tok = load_tokenizer(TOKENIZER)
    config = AutoConfig.for_model("qwen2", vocab_size=1152, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                                  max_position_embeddings=1024, tie_word_embeddings=True, bos_token_id=None,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert config.vocab_size >= len(tok)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    tok.save_pretrained(out)


def fit(config: str, root: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ring_lightning", "fit", "-c", config, f"--trainer.default_root_dir={root}",
           "--trainer.enable_progress_bar=false", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def metrics(root: Path) -> list[dict]:
    (path,) = root.rglob("metrics.csv")  # outputs follow --trainer.default_root_dir
    return list(csv.DictReader(open(path)))


def load_without_ring_lightning(export: Path, out: Path) -> tuple[dict, torch.Tensor]:
    """Run STANDALONE on `export` in a fresh interpreter: its report and the logits of PROMPT."""
    script = out / "standalone.py"
    script.write_text(f"REPO = {str(REPO)!r}\nEXPORT = {str(export)!r}\nOUT = {str(out)!r}\nPROMPT = {PROMPT!r}\n"
                      + STANDALONE)
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(script)], cwd=out, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), torch.load(out / "logits.pt", weights_only=True)


def sft_stage(model_dir: Path, root: Path) -> Path:
    """SFT of the user's model on the TRL prompt-completion rows; returns the export RL starts from."""
    # the quickstart SFT config as it is, but validating (entropy probe + candidate) every 2 steps; its
    # band is the quickstart model's, so the closest candidate is taken (with a warning)
    sft = fit("configs/quickstart/sft.yaml", root, f"--model.init_args.model={model_dir}",
              f"--data.init_args.train=[{FIXTURES / 'byo' / 'sft.jsonl'}]",
              f"--data.init_args.val=[{FIXTURES / 'byo' / 'sft.jsonl'}]", "--data.init_args.micro_batch_tokens=256",
              "--trainer.max_steps=4", "--trainer.val_check_interval=2",
              "--trainer.callbacks.init_args.outside_band=closest")
    assert "no candidate has entropy in [0.06, 0.15]" in sft.stderr
    steps = [r for r in metrics(root) if r.get("train/loss")]
    assert len(steps) == 4 and all(float(r["train/loss"]) > 0 for r in steps)
    readiness = json.loads((root / "rl_readiness" / "rl_readiness.json").read_text())
    assert [c["step"] for c in readiness["candidates"]] == [2, 4]
    assert all(6.5 < c["entropy"] <= math.log(1152) + 1e-3 for c in readiness["candidates"])  # ~uniform: random
    sft_export = root / "export"
    assert readiness["fallback"] is True and readiness["exported_to"] == str(sft_export)
    meta = json.loads((sft_export / "ring_lightning_meta.json").read_text())
    assert meta["sft_loss_tokens_seen"] == readiness["chosen"]["sft_tokens"] > 0  # assistant masks, no tags
    config = json.loads((sft_export / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["tie_word_embeddings"] is True
    # the model's own tokenizer went through the run (one tokenizer per run), template unchanged
    assert load_tokenizer(sft_export).chat_template == load_tokenizer(TOKENIZER).chat_template
    return sft_export


def rl_stage(sft_export: Path, root: Path) -> Path:
    """Reasoning RL from `sft_export` on the message-list prompts, vLLM engine; returns the RL export."""
    source = "{byo: {path: %s, domain: math, fields: {answer: solution}}}" % (FIXTURES / "byo" / "prompts.jsonl")
    fit("configs/quickstart/rl_reasoning.yaml", root, f"--model.init_args.model={sft_export}",
        f"--data.init_args.sources={source}", "--data.init_args.stages={reasoning: {byo: 1.0}}",
        f"--data.init_args.engine={VLLM_ENGINE}", "--model.init_args.parity=true",
        "--model.init_args.objective.init_args.token_budget=128",
        # a random model earns reward 0 (no advantage): an entropy bonus gives every step a gradient, so
        # the syncs after step 1 carry changed (tied) embeddings into the engine
        "--model.init_args.objective.init_args.entropy_coef=0.01", "--model.init_args.lr=0.01",
        "--model.init_args.micro_batch_tokens=1024",
        "--data.init_args.prompts_per_step=4", "--data.init_args.samples_per_prompt=2",
        "--data.init_args.max_response_tokens=32", "--trainer.max_steps=2")
    steps = [r for r in metrics(root) if r.get("train/loss_tokens")]
    assert len(steps) == 2
    for r in steps:
        assert float(r["train/loss_tokens"]) == 128 and float(r["rollout/responses"]) == 8
        assert float(r["train/grad_norm"]) > 0
        assert float(r["rollout/sync_logprob_diff_max"]) <= 1e-4  # the trained tied head reached the engine
    assert float(steps[0]["rollout/bind_sync_logprob_diff_max"]) <= 1e-4
    return root / "export"  # FitEndExport under default_root_dir


def test_tied_local_model_and_peer_data_through_sft_rl_and_a_standalone_export(tmp_path):
    model_dir = tmp_path / "my-qwen2"
    save_tied_qwen2(model_dir)
    sft_export = sft_stage(model_dir, tmp_path / "sft")
    export = rl_stage(sft_export, tmp_path / "rl")

    report, theirs = load_without_ring_lightning(export, tmp_path)
    assert report["blocked"] is True and report["ring_modules"] == [] and report["tied"] is True
    assert report["vocab"] == len(load_tokenizer(TOKENIZER))
    assert report["chat_template"] == load_tokenizer(TOKENIZER).chat_template
    policy, _ = load_policy(export, dtype="float32")
    with torch.no_grad():
        ours = policy.eval()(torch.tensor(PROMPT)).logits
    assert theirs.shape == ours.shape == (2, 10, 1152)
    worst = (theirs - ours).abs().max().item()
    assert worst <= 1e-5
    # RL moved the weights far beyond the parity tolerance (the export is the trained policy, and a stale
    # engine head would have shown in the probe)
    start, _ = load_policy(sft_export, dtype="float32")
    with torch.no_grad():
        moved = (start.eval()(torch.tensor(PROMPT)).logits - ours).abs().max().item()
    print(f"RL export vs SFT start: max |logit change| {moved:.3g}; standalone vs trainer {worst:.3g}")
    assert moved > 1e-2
