"""Assistant masks without `{% generation %}` tags (issue 20, item 7): incremental rendering gives the
tagged path's masks on the shipped tokenizer and on tagged variants of real templates; the stock
Qwen2.5 / Llama-3 templates in tests/fixtures/tokenizers train on exactly the assistant turns; a
template that re-renders earlier turns is an error naming the row."""

from __future__ import annotations

from pathlib import Path

import pytest

from ring_lightning.data.sft.datamodule import SFTDataModule
from ring_lightning.data.sft.masks import (ChatTemplateMaskError, encode_chat, encode_conversation,
                                           has_generation_tags, incremental_assistant_mask)
from ring_lightning.models.loading import load_tokenizer

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "tokenizers"
SYSTEM = {"role": "system", "content": "Be brief."}
CHATS = [
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
    [SYSTEM, {"role": "user", "content": "first question"}, {"role": "assistant", "content": "answer one"},
     {"role": "user", "content": "second question"}, {"role": "assistant", "content": "<think>\nhm\n</think>\n\ntwo"}],
    [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": "calling the tool"},
     {"role": "tool", "content": "{\"t\": 21}"}, {"role": "tool", "content": "{\"h\": 40}"},
     {"role": "assistant", "content": "21 °C, 40 % — nice. "}],
]
QWEN_TAGGED = (  # the Qwen2.5 fixture's template with generation tags (no tools), for the cross-check
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}{%- if message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message.content + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}{%- elif message.role != 'system' or not loop.first %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
# Qwen3-style: the reasoning of assistant turns before the last user message is dropped on re-render.
DROPS_OLD_REASONING = (
    "{%- set ns = namespace(last=-1) %}{%- for m in messages %}{%- if m.role == 'user' %}"
    "{%- set ns.last = loop.index0 %}{%- endif %}{%- endfor %}{%- for m in messages %}"
    "{%- set c = m.content.split('</think>')[-1].lstrip() if m.role == 'assistant' and loop.index0 < ns.last "
    "else m.content %}{{- '<|im_start|>' + m.role + '\\n' + c + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


def fixture(name: str):
    return load_tokenizer(FIXTURES / name)


def targets(tok, doc) -> str:
    return tok.decode([t for t, m in zip(doc.input_ids, doc.loss_mask) if m])


def test_incremental_masks_equal_the_tagged_masks_on_the_shipped_tokenizer():
    tok = load_tokenizer()
    assert has_generation_tags(tok)
    for chat in CHATS:
        tagged = encode_chat(tok, chat, "x")
        ids, mask = incremental_assistant_mask(tok, chat, "x")
        assert (tuple(ids), tuple(mask)) == (tagged.input_ids, tagged.loss_mask)
        assert sum(mask) > 0


def test_incremental_masks_equal_a_tagged_variant_of_the_qwen_template():
    stock, tagged = fixture("qwen2.5"), fixture("qwen2.5")
    tagged.chat_template = QWEN_TAGGED
    assert not has_generation_tags(stock) and has_generation_tags(tagged)
    for chat in CHATS[:2]:
        a, b = encode_chat(stock, chat, "x"), encode_chat(tagged, chat, "x")
        assert (a.input_ids, a.loss_mask) == (b.input_ids, b.loss_mask)


def test_qwen25_stock_template_trains_on_exactly_the_assistant_turns():
    tok = fixture("qwen2.5")
    for chat in CHATS:
        doc = encode_conversation(tok, chat, "x")
        assert list(doc.input_ids) == tok.apply_chat_template(chat, tokenize=True, return_dict=False)
    assert targets(tok, encode_chat(tok, CHATS[1], "x")) == "answer one<|im_end|><think>\nhm\n</think>\n\ntwo<|im_end|>"
    # tool results and the default system prompt are context, not targets; trailing content spaces stay
    assert targets(tok, encode_chat(tok, CHATS[2], "x")) == "calling the tool<|im_end|>21 °C, 40 % — nice. <|im_end|>"


def test_llama3_stock_template_trains_on_exactly_the_assistant_turns():
    tok = fixture("llama3")
    assert not has_generation_tags(tok)
    doc = encode_chat(tok, CHATS[1], "x")
    assert list(doc.input_ids) == tok.apply_chat_template(CHATS[1], tokenize=True, return_dict=False)
    assert doc.input_ids[0] == tok.bos_token_id and not doc.loss_mask[0]
    assert targets(tok, doc) == "answer one<|eot_id|><think>\nhm\n</think>\n\ntwo<|eot_id|>"
    # the template trims content: the trailing space of the last answer is not in the text at all
    assert targets(tok, encode_chat(tok, CHATS[2], "x")) == "calling the tool<|eot_id|>21 °C, 40 % — nice.<|eot_id|>"


def test_a_template_that_rerenders_earlier_turns_is_an_error_naming_the_row():
    tok = fixture("qwen2.5")
    tok.chat_template = DROPS_OLD_REASONING
    single = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\nhm\n</think>\n\na"}]
    assert targets(tok, encode_chat(tok, single, "x")) == "<think>\nhm\n</think>\n\na<|im_end|>"  # one turn: fine
    multi = [*single, {"role": "user", "content": "q2"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(ChatTemplateMaskError, match=r"data/sft\.jsonl row 3: .*renders message 1 \(assistant\) "
                                                     r"differently once later messages follow.*give each assistant "
                                                     r"turn its own row"):
        encode_chat(tok, multi, "data/sft.jsonl row 3")


def test_a_generation_prompt_that_the_turn_does_not_start_with_is_an_error():
    tok = fixture("qwen2.5")  # Qwen3 with thinking off: the prompt opens an empty think block the turn lacks
    tok.chat_template = ("{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
                         "{%- endfor %}{%- if add_generation_prompt %}"
                         "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}{%- endif %}")
    with pytest.raises(ChatTemplateMaskError, match=r"row 7: .*generation prompt for message 1 \(assistant\) is "
                                                     r"not a prefix of the rendered turn"):
        encode_chat(tok, CHATS[0], "row 7")


def test_sft_datamodule_trains_on_a_stock_template_tokenizer():
    tok_dir = FIXTURES / "llama3"
    dm = SFTDataModule(train=["synthetic:arithmetic"], tokenizer=str(tok_dir), micro_batch_tokens=256,
                       shuffle_buffer=0, synthetic_train_rows=8)
    batch = next(iter(dm.train_set))
    tok = load_tokenizer(tok_dir)
    trained = batch.targets[batch.targets != -100].tolist()
    assert int(batch.num_loss_tokens) == len(trained) > 0
    text = tok.decode(trained)
    assert text.count("<|eot_id|>") == int((batch.input_ids == tok.convert_tokens_to_ids("<|begin_of_text|>")).sum())
    assert "<|start_header_id|>" not in text and "Cutting Knowledge" not in text


def test_a_missing_or_rejecting_template_is_an_error_naming_the_row():
    tok = fixture("qwen2.5")
    tok.chat_template = None
    with pytest.raises(ChatTemplateMaskError, match=r"row 2: the tokenizer's chat template cannot render this "
                                                     r"conversation \(ValueError: .*chat_template is not set"):
        encode_chat(tok, CHATS[0], "row 2")
    tok.chat_template = "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
    with pytest.raises(ChatTemplateMaskError, match=r"row 5: .*\(TemplateError: Conversation roles must alternate"):
        encode_chat(tok, CHATS[0], "row 5")
