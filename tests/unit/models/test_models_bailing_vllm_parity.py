"""vLLM parity: a random tiny BailingMoe saved by this project is served by vLLM's own
`BailingMoeForCausalLM`; every sampled token's logprob must equal this project's forward to 1e-4 (fp32).

Two engine starts in this file (one per parametrisation; the engine is deleted in between). Both use
a dense first layer and a shared expert; the second also turns off NormHead and turns on partial
rotary and a qkv bias.
"""

from __future__ import annotations

import gc

import pytest
import torch

from ring_lightning.models.loading import load_policy

pytestmark = pytest.mark.vllm

PROMPTS = [[5, 17, 300, 42, 9], [100, 200, 300], [7] * 12, list(range(40, 90))]
VARIANTS = {
    "norm_head": dict(norm_head=True),
    "plain_head_partial_rope_qkv_bias": dict(norm_head=False, partial_rotary_factor=0.5, use_qkv_bias=True),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def served(request, tmp_path_factory):
    """(our model, vLLM outputs for PROMPTS) for one variant; the engine is freed afterwards."""
    overrides = VARIANTS[request.param]
    model, tokenizer = load_policy("bailing-tiny", seed=0, **overrides)
    with torch.no_grad():  # non-zero biases so the bias path is exercised
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, 0.05)
    model.eval()
    path = tmp_path_factory.mktemp(f"bailing_{request.param}")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)

    threads = torch.get_num_threads()
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(path), dtype="float32", enforce_eager=True, max_model_len=256, seed=0,
              gpu_memory_utilization=0.5)
    params = SamplingParams(temperature=1.0, max_tokens=24, logprobs=0, seed=1, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    completions = [(list(o.outputs[0].token_ids), [lp for lp in o.outputs[0].logprobs]) for o in outputs]
    del llm, outputs
    gc.collect()
    torch.set_num_threads(threads)  # vLLM pins torch to 1 thread
    return model, completions


def test_sampled_token_logprobs_match_vllm(served):
    model, completions = served
    assert model.model.layers[0].is_moe is False and model.model.layers[1].mlp.shared_experts is not None
    worst, checked = 0.0, 0
    for prompt, (tokens, logprobs) in zip(PROMPTS, completions):
        assert len(tokens) == 24
        ids = torch.tensor([prompt + tokens])
        with torch.no_grad():
            ours = torch.log_softmax(model(ids).logits.float(), dim=-1)[0]  # [T, V]
        for i, token in enumerate(tokens):
            mine = ours[len(prompt) + i - 1, token].item()
            theirs = logprobs[i][token].logprob
            worst = max(worst, abs(mine - theirs))
            checked += 1
    assert checked == 24 * len(PROMPTS)
    print(f"max |logprob difference| vs vLLM over {checked} tokens: {worst:.3g}")
    assert worst <= 1e-4, f"max |logprob difference| vs vLLM = {worst:.3g}"
