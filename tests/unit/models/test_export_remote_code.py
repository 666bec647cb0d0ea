"""Self-contained BailingMoe exports: `auto_map` + the standalone model files, loadable by plain
transformers (`trust_remote_code=True`) in a Python where `import ring_lightning` is impossible, with
logits equal to the trainer's model to 1e-5 in fp32 (both export paths: SFTModule.export_hf and the RL
stage's export_policy)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ring_lightning.models.export import export_policy
from ring_lightning.models.loading import load_policy
from ring_lightning.modules.sft import SFTModule
from standalone import BLOCK_PROJECT

REMOTE = Path(__file__).resolve().parents[3] / "ring_lightning" / "models" / "remote_code"
FILES = ("configuration_bailing_moe.py", "modeling_bailing_moe.py", "routing_bailing_moe.py")
AUTO_MAP = {"AutoConfig": "configuration_bailing_moe.BailingMoeConfig",
            "AutoModelForCausalLM": "modeling_bailing_moe.BailingMoeForCausalLM"}
PROMPT = [[5, 17, 300, 42, 9, 100, 7, 7, 64, 1000], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]]

# Runs in a fresh interpreter: the repo is off sys.path and a meta-path finder makes every
# `ring_lightning` import fail (the package is installed editable, so sys.path alone is not enough).
STANDALONE = BLOCK_PROJECT + r'''
import torch
from transformers import AutoModelForCausalLM

report = {}
try:
    import ring_lightning  # noqa: F401
    report["blocked"] = False
except ImportError:
    report["blocked"] = True
try:
    AutoModelForCausalLM.from_pretrained(DIRS[0], trust_remote_code=False)
    report["without_trust"] = "loaded"
except ValueError as e:
    report["without_trust"] = str(e)
for i, d in enumerate(DIRS):
    model = AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True, dtype=torch.float32).eval()
    ids = torch.tensor(PROMPT)
    with torch.no_grad():
        torch.save(model(ids).logits, f"{OUT}/logits{i}.pt")
        gen = model.generate(ids[:1], max_new_tokens=6, do_sample=False, use_cache=True)
    report[f"class{i}"] = type(model).__module__ + "." + type(model).__name__
    report[f"generated{i}"] = gen[0].tolist()
report["ring_modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "ring_lightning")
open(f"{OUT}/report.json", "w").write(json.dumps(report))
'''


def run_standalone(dirs: list[Path], out: Path) -> dict:
    """Run STANDALONE on `dirs` in a fresh interpreter; returns its report."""
    repo = str(REMOTE.parents[2])
    script = out / "standalone.py"
    script.write_text(f"REPO = {repo!r}\nDIRS = {[str(d) for d in dirs]!r}\nOUT = {str(out)!r}\nPROMPT = {PROMPT!r}\n"
                      + STANDALONE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(out / "hf_modules"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script)], cwd=out, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Two exports of random tiny BailingMoe policies and the trainer-side models they came from:
    SFTModule.export_hf of bailing-tiny (NormHead, dense first layer, shared expert), and the RL
    stage's export_policy of a variant with a plain head, partial rotary and a non-zero qkv bias."""
    root = tmp_path_factory.mktemp("self_contained")
    sft = SFTModule(model="bailing-tiny", seed=0)
    sft.configure_model()
    sft.export_hf(root / "sft")
    policy, tok = load_policy("bailing-tiny", seed=1, norm_head=False, partial_rotary_factor=0.5, use_qkv_bias=True)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.05)
    rl = SimpleNamespace(policy=policy, tokenizer=tok, _trainer=None, sft_tokens=0, rl_tokens_trained=0,
                         rl_tokens_generated=0)
    export_policy(rl, root / "rl")
    models = [sft.policy.eval(), policy.eval()]
    return [root / "sft", root / "rl"], models, run_standalone([root / "sft", root / "rl"], root)


def test_export_carries_auto_map_and_the_package_model_files(exports):
    dirs, _, _ = exports
    for d in dirs:
        config = json.loads((d / "config.json").read_text())
        assert config["auto_map"] == AUTO_MAP
        assert config["model_type"] == "bailing_moe" and config["architectures"] == ["BailingMoeForCausalLM"]
        for name in FILES:  # the very code the trainer ran
            assert (d / name).read_bytes() == (REMOTE / name).read_bytes()


def test_the_library_trains_with_the_exported_classes():
    import ring_lightning.models as models

    for cls in (models.BailingMoeConfig, models.BailingMoeModel, models.BailingMoeForCausalLM):
        assert cls.__module__.startswith("ring_lightning.models.remote_code.")
        assert (REMOTE / f"{cls.__module__.rsplit('.', 1)[1]}.py").is_file()


def test_model_files_import_only_torch_transformers_and_each_other():
    allowed = {"torch", "transformers", "__future__", "collections", "dataclasses"}
    for name in FILES:
        tree = ast.parse((REMOTE / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert {a.name.split(".")[0] for a in node.names} <= allowed, (name, ast.dump(node))
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] in allowed, (name, node.module)
            elif isinstance(node, ast.ImportFrom):  # relative: a sibling export file
                assert f"{node.module}.py" in FILES, (name, node.module)


def test_standalone_load_needs_no_ring_lightning_and_generates_the_trainers_tokens(exports):
    _, models, report = exports
    assert report["blocked"] is True and report["ring_modules"] == []
    assert "trust_remote_code=True" in report["without_trust"]
    ids = torch.tensor(PROMPT)
    for i, model in enumerate(models):
        assert report[f"class{i}"].startswith("transformers_modules.")
        assert report[f"class{i}"].endswith("modeling_bailing_moe.BailingMoeForCausalLM")
        with torch.no_grad():  # greedy decoding with the KV cache gives the trainer's tokens
            generated = model.generate(ids[:1], max_new_tokens=6, do_sample=False, use_cache=True)[0].tolist()
        assert report[f"generated{i}"] == generated


def test_standalone_logits_equal_the_trainer_to_1e_5(exports):
    dirs, models, _ = exports
    ids = torch.tensor(PROMPT)
    root = dirs[0].parent
    for i, model in enumerate(models):
        theirs = torch.load(root / f"logits{i}.pt", weights_only=True)
        with torch.no_grad():
            ours = model(ids).logits
        assert theirs.shape == ours.shape == (2, 10, model.config.vocab_size)
        worst = (theirs - ours).abs().max().item()
        print(f"export {dirs[i].name}: max |logit difference| standalone vs trainer = {worst:.3g}")
        assert worst <= 1e-5
