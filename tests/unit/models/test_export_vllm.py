"""A BailingMoe export in a fresh vLLM process that cannot import ring_lightning: `trust_remote_code=True`
(the export's `auto_map` config class) is all vLLM needs; it then serves the weights with its native
`BailingMoeForCausalLM`, and every sampled token's logprob equals the trainer's forward to 1e-4 (fp32).
Without it vLLM refuses the unknown model type and names the flag. One vLLM start (slow: `--all`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ring_lightning.modules.sft import SFTModule
from standalone import BLOCK_PROJECT

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[3]
PROMPTS = [[5, 17, 300, 42, 9], list(range(40, 90))]
NEW = 16

SCRIPT = BLOCK_PROJECT + r'''
from vllm import LLM, SamplingParams

report = {}
try:
    LLM(model=EXPORT, dtype="float32", enforce_eager=True, max_model_len=128, trust_remote_code=False)
    report["without_trust"] = "loaded"
except Exception as e:  # vLLM wraps transformers' ValueError in a pydantic ValidationError
    report["without_trust"] = str(e)
llm = LLM(model=EXPORT, dtype="float32", enforce_eager=True, max_model_len=128, seed=0, trust_remote_code=True)
params = SamplingParams(temperature=1.0, max_tokens=NEW, logprobs=0, seed=1, ignore_eos=True)
outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
report["completions"] = [[list(o.outputs[0].token_ids), [lp[t].logprob for t, lp in zip(o.outputs[0].token_ids,
                                                                                          o.outputs[0].logprobs)]]
                         for o in outs]
report["ring_modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "ring_lightning")
open(OUT, "w").write(json.dumps(report))
'''


def test_fresh_vllm_serves_the_export_with_trust_remote_code(tmp_path):
    module = SFTModule(model="bailing-tiny", seed=0)
    module.configure_model()
    export = module.export_hf(tmp_path / "export")
    script = tmp_path / "serve.py"
    script.write_text(f"REPO = {str(REPO)!r}\nEXPORT = {str(export)!r}\nOUT = {str(tmp_path / 'report.json')!r}\n"
                      f"PROMPTS = {PROMPTS!r}\nNEW = {NEW}\n" + SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "hf_modules"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ring_modules"] == []
    assert "trust_remote_code=True" in report["without_trust"]

    model = module.policy.eval()
    worst = 0.0
    for prompt, (tokens, logprobs) in zip(PROMPTS, report["completions"]):
        assert len(tokens) == len(logprobs) == NEW
        with torch.no_grad():
            ours = torch.log_softmax(model(torch.tensor([prompt + tokens])).logits.float(), dim=-1)[0]  # [T, V]
        for i, token in enumerate(tokens):
            worst = max(worst, abs(ours[len(prompt) + i - 1, token].item() - logprobs[i]))
    print(f"max |logprob difference| vs the fresh vLLM over {len(PROMPTS) * NEW} tokens: {worst:.3g}")
    assert worst <= 1e-4, f"max |logprob difference| vs the fresh vLLM = {worst:.3g}"
