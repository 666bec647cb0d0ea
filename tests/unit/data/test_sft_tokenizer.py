"""One tokenizer per SFT run (issue 20): SFTDataModule(tokenizer=None) encodes with the policy's
tokenizer (SFTModule: the checkpoint's own), and an explicit data tokenizer that differs from the
policy's is an error before the first step, naming both."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch

from ring_lightning.data.sft.datamodule import PackedSFTDataset, SFTDataModule
from ring_lightning.models.loading import load_policy, load_tokenizer, shipped_tokenizer_dir, tokenizer_differences
from ring_lightning.modules.sft import SFTModule

LLAMA_TEMPLATE = (
    "{%- for message in messages -%}{%- if message['role'] == 'assistant' -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- generation -%}"
    "{{- message['content'] + '<|eot_id|>' -}}{%- endgeneration -%}{%- else -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' -}}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}")


def llama_style_tokenizer():
    tok = load_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tok.eos_token = "<|eot_id|>"
    tok.chat_template = LLAMA_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def own_checkpoint(tmp_path_factory):
    """A local checkpoint whose own tokenizer is not the shipped one (Llama-style special tokens)."""
    path = tmp_path_factory.mktemp("own_model")
    model, _ = load_policy("qwen3-tiny", seed=0)
    model.save_pretrained(path)
    llama_style_tokenizer().save_pretrained(path)
    return path


def data(**kwargs) -> SFTDataModule:
    return SFTDataModule(train=["synthetic:arithmetic"], micro_batch_tokens=128, shuffle_buffer=0,
                         synthetic_train_rows=16, **kwargs)


class FirstBatch(L.Callback):
    def __init__(self):
        self.ids = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.ids is None:
            self.ids = batch.input_ids.clone()


def fit(module, dm, steps: int = 1) -> FirstBatch:
    seen = FirstBatch()
    L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, callbacks=[seen]).fit(module, dm)
    return seen


def test_datamodule_encodes_with_the_checkpoints_own_tokenizer(own_checkpoint):
    module, dm = SFTModule(model=str(own_checkpoint)), data()
    assert module.tokenizer.eos_token == "<|eot_id|>"
    seen = fit(module, dm)
    want = next(iter(PackedSFTDataset(["synthetic:arithmetic"], "train", module.tokenizer, micro_batch_tokens=128,
                                      max_length=128, overlong="truncate", skip_bad_rows=False, shuffle_buffer=0,
                                      open_bins=64, seed=0, synthetic_rows=(16, 64))))
    assert torch.equal(seen.ids, want.input_ids)
    header = module.tokenizer.convert_tokens_to_ids("<|start_header_id|>")
    assert header >= 1105 and int((seen.ids == header).sum()) >= 2  # the checkpoint's template, not the shipped one
    assert dm.tokenizer is module.tokenizer


def test_an_explicit_data_tokenizer_that_differs_stops_before_step_1(own_checkpoint):
    module, dm = SFTModule(model=str(own_checkpoint)), data(tokenizer=str(shipped_tokenizer_dir()))
    with pytest.raises(ValueError) as err:
        fit(module, dm)
    msg = str(err.value)
    assert f"SFTDataModule tokenizer {shipped_tokenizer_dir()} differs from the policy's tokenizer " \
           f"(SFTModule: {own_checkpoint})" in msg
    assert "vocabulary (1105 vs 1108 tokens" in msg and "eos token ('<|im_end|>'" in msg and "chat template" in msg
    assert "data.init_args.tokenizer: null" in msg
    assert module.global_step == 0 and module.policy is None  # stopped at setup: no model built, no step


def test_an_explicit_data_tokenizer_equal_to_the_policys_is_kept(own_checkpoint):
    module = SFTModule(model=str(own_checkpoint))
    dm = data(tokenizer=str(own_checkpoint))
    mine = dm.tokenizer
    dm.trainer = SimpleNamespace(lightning_module=module, distributed_sampler_kwargs=None)
    dm.setup("fit")
    assert dm.tokenizer is mine and dm.train_set.tokenizer is mine and mine is not module.tokenizer
    shipped = SFTModule(model="qwen3-tiny")  # a preset: the shipped tokenizer on both sides
    dm = data()
    dm.trainer = SimpleNamespace(lightning_module=shipped, distributed_sampler_kwargs=None)
    dm.setup("fit")
    assert dm.tokenizer is shipped.tokenizer and dm.val_set.tokenizer is shipped.tokenizer


def test_tokenizer_differences_name_each_kind():
    a, b = load_tokenizer(), load_tokenizer()
    assert tokenizer_differences(a, b) == []
    b.chat_template = LLAMA_TEMPLATE
    assert tokenizer_differences(a, b) == ["chat template"]
    c = llama_style_tokenizer()
    diffs = tokenizer_differences(a, c)
    assert diffs[0] == "vocabulary (1105 vs 1108 tokens, 0 with another or no id)"
    assert diffs[1] == "eos token ('<|im_end|>' id 2 vs '<|eot_id|>' id 1107)"
    # the new list replaces the old special tokens (they stay in the vocabulary as plain added tokens)
    assert diffs[2] == ("special tokens (['<|im_end|>', '<|im_start|>'] vs "  # <think> tags: added, not special
                        "['<|end_header_id|>', '<|eot_id|>', '<|start_header_id|>'])")
    assert diffs[3] == "chat template" and len(diffs) == 4
