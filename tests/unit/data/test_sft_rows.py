"""SFT rows: schema errors name file and row, skip-and-count, readers, assistant-only mask, overlong rule;
TRL's prompt/completion and text rows."""

from __future__ import annotations

import json

import pytest
import torch

from ring_lightning.data.sft.packing import IGNORE_INDEX
from ring_lightning.data.sft.datamodule import SFTDataModule
from ring_lightning.data.sft.masks import encode_conversation
from ring_lightning.data.sft.rows import TEXT_ROLE, SFTRowError, parse_sft_row
from ring_lightning.models.loading import load_tokenizer

GOOD = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                     {"role": "assistant", "content": "<think>\n2+2=4\n</think>\n\\boxed{4}"}]}
PAIR = {"prompt": "3+4?", "response": "\\boxed{7}"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def stream(dm: SFTDataModule, split: str = "train"):
    return list(dm.train_set if split == "train" else dm.val_set)


@pytest.mark.parametrize("row, message", [
    ({"id": 1}, "needs a 'messages' list, 'prompt' and 'response' \\(or TRL's 'completion'\\), or a 'text' string"),
    ({"prompt": "q", "completion": [{"role": "user", "content": "a"}]}, "'completion' has no assistant turn"),
    ({"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": " "}]},
     r"completion\[0\] is an empty assistant turn"),
    ({"prompt": [{"role": "robot", "content": "q"}], "completion": "a"}, r"prompt\[0\] has unknown role 'robot'"),
    ({"prompt": "q", "completion": ""}, "'completion' must be a non-empty string"),
    ({"text": "   "}, "'text' must be a non-empty string"),
    ({"text": 3}, "'text' must be a non-empty string"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, r"messages\[0\] has unknown role 'wizard'"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]},
     r"messages\[1\] is an empty assistant turn"),
    ({"messages": [{"role": "user", "content": "q"}]}, "no assistant turn"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}, r"messages\[0\] \(user\) needs a string"),
    ({"prompt": "q", "response": ""}, "'response' must be a non-empty string"),
    ({"prompt": "q"}, "'response' must be a non-empty string"),
    ("just text", "expected an object"),
])
def test_malformed_rows_are_errors_naming_the_row(row, message):
    with pytest.raises(SFTRowError, match=r"^data\.jsonl row 7: " + message):
        parse_sft_row(row, "data.jsonl row 7")


def test_prompt_response_rows_become_a_chat():
    assert parse_sft_row({**PAIR, "system": "S"}, "x") == [
        {"role": "system", "content": "S"}, {"role": "user", "content": "3+4?"},
        {"role": "assistant", "content": "\\boxed{7}"}]


def test_bad_row_in_a_file_is_an_error_naming_file_and_row(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [GOOD, PAIR, {"messages": [{"role": "user", "content": "q"},
                                                                          {"role": "assistant", "content": ""}]}, GOOD])
    dm = SFTDataModule(train=[str(path)], micro_batch_tokens=256, shuffle_buffer=0)
    with pytest.raises(SFTRowError, match=rf"{path} row 2: messages\[1\] is an empty assistant turn"):
        stream(dm)


def test_skip_bad_rows_skips_and_counts(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [GOOD, {"oops": 1}, PAIR, {"messages": [{"role": "bot", "content": "x"}]}])
    dm = SFTDataModule(train=[str(path)], micro_batch_tokens=256, shuffle_buffer=0, skip_bad_rows=True)
    batches = stream(dm)
    assert len(batches) == 1
    rows_read, docs, skipped, truncated, dropped = batches[-1].stats.tolist()
    assert (rows_read, docs, skipped, truncated, dropped) == (4, 2, 2, 0, 0)
    assert batches[0].doc_ids.max().item() == 1  # the two good rows share the row


def test_jsonl_parquet_and_datasets_directory_give_the_same_batches(tmp_path):
    import datasets

    rows = [GOOD, {**PAIR, "messages": None}, GOOD]
    jsonl = write_jsonl(tmp_path / "sft.jsonl", rows)
    ds = datasets.Dataset.from_list([{"messages": GOOD["messages"], "prompt": None, "response": None},
                                     {"messages": None, "prompt": PAIR["prompt"], "response": PAIR["response"]},
                                     {"messages": GOOD["messages"], "prompt": None, "response": None}])
    ds.to_parquet(str(tmp_path / "sft.parquet"))
    ds.save_to_disk(str(tmp_path / "sft_dir"))
    outs = []
    for source in (jsonl, tmp_path / "sft.parquet", tmp_path / "sft_dir"):
        dm = SFTDataModule(train=[str(source)], micro_batch_tokens=128, shuffle_buffer=0)
        outs.append([b.input_ids for b in stream(dm)])
    assert len(outs[0]) >= 1
    for other in outs[1:]:
        assert len(other) == len(outs[0]) and all(torch.equal(a, b) for a, b in zip(outs[0], other))


def test_missing_source_and_unknown_synthetic_task_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="SFT data source not found: .*nope.jsonl"):
        stream(SFTDataModule(train=[str(tmp_path / "nope.jsonl")], shuffle_buffer=0))
    with pytest.raises(ValueError, match="unknown synthetic source 'synthetic:poetry'"):
        stream(SFTDataModule(train=["synthetic:poetry"], shuffle_buffer=0))


def test_loss_targets_are_exactly_the_assistant_tokens():
    tok = load_tokenizer()
    convo = [{"role": "user", "content": "first question"}, {"role": "assistant", "content": "answer one"},
             {"role": "user", "content": "second question"}, {"role": "assistant", "content": "answer two"}]
    doc = encode_conversation(tok, convo, "x")
    assert tok.decode([t for t, m in zip(doc.input_ids, doc.loss_mask) if m]) == \
        "answer one<|im_end|>answer two<|im_end|>"
    from ring_lightning.data.sft.packing import collate_packed

    batch = collate_packed([doc], micro_batch_tokens=len(doc) + 5, pad_id=tok.pad_token_id)
    targets = batch.targets[0]
    trained = targets[targets != IGNORE_INDEX].tolist()
    # every assistant token is predicted (from the token before it); nothing else is
    assert tok.decode(trained) == "answer one<|im_end|>answer two<|im_end|>"
    assert "question" not in tok.decode(trained) and "user" not in tok.decode(trained)


def test_overlong_documents_are_truncated_or_dropped_and_counted(tmp_path):
    long_answer = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "z " * 200}]}
    long_prompt = {"messages": [{"role": "user", "content": "q " * 200}, {"role": "assistant", "content": "a"}]}
    path = write_jsonl(tmp_path / "sft.jsonl", [GOOD, long_answer, long_prompt])
    trunc = stream(SFTDataModule(train=[str(path)], micro_batch_tokens=128, shuffle_buffer=0))
    # long_answer is cut to 128 tokens and kept; long_prompt keeps no assistant token: dropped
    assert trunc[-1].stats.tolist() == [3, 2, 0, 1, 1]
    assert sum(int(b.num_tokens) for b in trunc) == len(encode_conversation(load_tokenizer(), GOOD["messages"], "")) + 128
    drop = stream(SFTDataModule(train=[str(path)], micro_batch_tokens=128, shuffle_buffer=0, overlong="drop"))
    assert drop[-1].stats.tolist() == [3, 1, 0, 0, 2]
    with pytest.raises(ValueError, match=r"max_length \(300\) must be in \[1, micro_batch_tokens=128\]"):
        SFTDataModule(train=[str(path)], micro_batch_tokens=128, max_length=300)


def test_shuffle_is_seeded_and_changes_with_the_epoch():
    dm = SFTDataModule(train=["synthetic:arithmetic"], micro_batch_tokens=256, shuffle_buffer=50,
                       synthetic_train_rows=60)
    first = stream(dm)
    again = stream(dm)
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(first, again))
    dm.train_set.set_epoch(1)
    other = stream(dm)
    assert not all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(first, other))
    assert sum(int(b.num_tokens) for b in first) == sum(int(b.num_tokens) for b in other)  # same documents


def test_trl_prompt_completion_rows_become_a_chat():
    user, answer = {"role": "user", "content": "3+4?"}, {"role": "assistant", "content": "\\boxed{7}"}
    assert parse_sft_row({"prompt": "3+4?", "completion": "\\boxed{7}"}, "x") == [user, answer]
    system = {"role": "system", "content": "S"}
    assert parse_sft_row({"prompt": [system, user], "completion": [answer]}, "x") == [system, user, answer]


def test_text_rows_train_on_every_token(tmp_path):
    tok = load_tokenizer()
    text = "Plain language-model text, no chat template."
    assert parse_sft_row({"text": text}, "x") == [{"role": TEXT_ROLE, "content": text}]
    doc = encode_conversation(tok, parse_sft_row({"text": text}, "x"), "x")
    assert tok.decode(doc.input_ids) == text + tok.eos_token  # EOS appended, no template around it
    assert all(doc.loss_mask) and doc.num_loss_tokens == len(doc) - 1  # every token after the first
    # a file mixing the formats (Parquet fills a missing column with None)
    import datasets

    rows = [{"messages": None, "prompt": None, "completion": None, "text": text},
            {"messages": None, "prompt": "3+4?", "completion": "\\boxed{7}", "text": None},
            {"messages": GOOD["messages"], "prompt": None, "completion": None, "text": None}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "mixed.parquet"))
    (batch,) = stream(SFTDataModule(train=[str(tmp_path / "mixed.parquet")], micro_batch_tokens=256, shuffle_buffer=0))
    assert batch.stats.tolist()[:3] == [3, 3, 0] and batch.doc_ids.max().item() == 2
    first = batch.targets[0][:len(doc) - 1]
    assert first.tolist() == list(doc.input_ids[1:])  # the text document: all of it is a target
