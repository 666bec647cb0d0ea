"""models/loading.py: bad model / tokenizer paths are errors naming the path and the fix; float64 policies."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ring_lightning.models.loading import DTYPES, ModelLoadError, build_config, load_policy, load_tokenizer, to_dtype
from ring_lightning.models.router_losses import expert_load, router_aux_losses, top_k


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny BailingMoe checkpoint with its tokenizer, as save_pretrained writes it."""
    model, tok = load_policy("bailing-tiny", seed=0)
    path = tmp_path_factory.mktemp("ckpt") / "good"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_model_paths_that_are_not_checkpoints(tmp_path, checkpoint):
    with pytest.raises(FileNotFoundError, match=r"model 'no-such-preset' is neither a preset \(bailing-mid, .*\) nor "
                                                r"a local checkpoint directory \(not found\); pass a preset name or a "
                                                r"checkpoint directory"):
        load_policy("no-such-preset")
    with pytest.raises(FileNotFoundError, match=r"config\.json' is neither a preset .* \(a file\)"):
        load_policy(str(checkpoint / "config.json"))
    with pytest.raises(FileNotFoundError, match=rf"model directory {tmp_path} has no config\.json \(expected a "
                                                r"directory written by save_pretrained / export_hf"):
        build_config(tmp_path)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(checkpoint / "config.json", no_weights)
    with pytest.raises(FileNotFoundError, match=rf"model directory {no_weights} has a config\.json but no weights "
                                                r"\(model\.safetensors or pytorch_model\.bin\)"):
        load_policy(str(no_weights))


@pytest.mark.parametrize("config, problem", [
    ("{not json", "is not a valid JSON file"),
    (json.dumps({"model_type": "foo_bar"}), "model type `foo_bar`"),
    (json.dumps({"hidden_size": 3}), "Should have a `model_type` key"),
])
def test_unreadable_config_names_the_file(tmp_path, config, problem):
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(ModelLoadError, match=rf"{tmp_path}/config\.json cannot be read as a model config \(.*"
                                             rf"{problem}.*\); fix or re-export the checkpoint"):
        load_policy(str(tmp_path))


def test_truncated_weights_name_the_directory_and_the_files(tmp_path, checkpoint):
    broken = tmp_path / "truncated"
    shutil.copytree(checkpoint, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match=rf"model weights in {broken} cannot be loaded \(SafetensorError: .*\); "
                                             r"files: model\.safetensors\. Re-export the checkpoint"):
        load_policy(str(broken))


def test_tokenizer_paths(tmp_path, checkpoint):
    with pytest.raises(FileNotFoundError, match=rf"tokenizer directory not found: {tmp_path}/nope; pass a directory"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match=r"tokenizer path .*config\.json is a file; pass its directory"):
        load_tokenizer(checkpoint / "config.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=rf"tokenizer directory {empty} cannot be loaded \(.*\); it holds "
                                             r"nothing\. It needs tokenizer\.json and tokenizer_config\.json"):
        load_tokenizer(empty)
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / "tokenizer.json").write_text("{broken")
    with pytest.raises(ModelLoadError, match=rf"tokenizer directory {broken} cannot be loaded \(JSONDecodeError: "):
        load_policy(str(broken))
    with pytest.raises(ModelLoadError, match=rf"tokenizer directory {broken} cannot be loaded"):
        load_policy("bailing-tiny", tokenizer=broken)


def test_tokenizer_larger_than_the_vocabulary_is_refused():
    with pytest.raises(ModelLoadError, match=r"the shipped tokenizer \(the checkpoint has none\) has 1105 tokens but "
                                             r"model .* has vocab_size=1000: token ids past the embedding table"):
        load_policy("qwen3-tiny", vocab_size=1000)
    from ring_lightning.models.loading import shipped_tokenizer_dir

    with pytest.raises(ModelLoadError, match=rf"tokenizer {shipped_tokenizer_dir()} has 1105 tokens"):
        load_policy("qwen3-tiny", vocab_size=1000, tokenizer=shipped_tokenizer_dir())
    model, tok = load_policy("qwen3-tiny", vocab_size=1105)  # exactly the tokenizer's size is fine
    assert len(tok) == model.config.vocab_size == 1105


def test_float64_policies_run_forward_and_router_losses():
    assert DTYPES["float64"] is torch.float64 and to_dtype("fp64") is torch.float64
    with pytest.raises(ValueError, match=r"unknown dtype 'float12'; expected one of \[.*'float64'"):
        to_dtype("float12")
    ids = torch.randint(3, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    for preset in ("qwen3-moe-tiny", "bailing-tiny"):  # transformers' fused MoE and ours
        model, _ = load_policy(preset, dtype="float64", seed=0)
        assert all(p.dtype == torch.float64 for p in model.parameters())
        out = model(ids, attention_mask=mask, output_router_logits=True)
        assert out.logits.dtype == torch.float64 and torch.isfinite(out.logits).all()
        aux = router_aux_losses(out, model, token_mask=mask)
        assert aux["loss"].dtype == torch.float64 and torch.isfinite(aux["loss"])
        load = expert_load(out.router_logits, top_k(model), mask)
        assert torch.equal(load.sum(-1), torch.full((load.shape[0],), 15.0 * top_k(model), dtype=load.dtype))
