"""RL prompt files in peers' formats (TRL / verl): message-list prompts, rows without `id`, a source's
default `domain`, column mapping (`fields`); logic rows verified from `meta`. docs/data_formats.md."""

from __future__ import annotations

import json

import pytest

from ring_lightning.data.prompts import load_prompts
from ring_lightning.data.rollouts.stream import PromptSource
from ring_lightning.rows import PromptRowError, parse_row

CHAT = [{"role": "system", "content": "Reason step by step."}, {"role": "user", "content": "What is 2+3?"}]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_message_list_prompts_are_conversations(tmp_path):
    path = write_jsonl(tmp_path / "trl.jsonl", [{"id": "a", "domain": "math", "prompt": CHAT, "answer": "5"}])
    (row,) = load_prompts(path)
    assert row.messages == tuple(CHAT) and row.prompt_text == "What is 2+3?"
    human = [{"role": "human", "content": "x"}]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "domain": "math", "prompt": CHAT, "answer": "5"},
                                               {"id": "b", "domain": "math", "prompt": human, "answer": "1"}])
    with pytest.raises(PromptRowError, match=rf"^{bad} row 1: prompt\[0\] must be \{{'role': one of"):
        load_prompts(bad)
    with pytest.raises(PromptRowError, match=r"^f row 0: 'prompt' must be a non-empty list"):
        parse_row({"id": "a", "domain": "math", "prompt": [], "answer": "5"}, "f row 0")


def test_rows_without_id_get_their_row_index(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"domain": "math", "prompt": "1+1?", "answer": "2"}, "",
                                              {"domain": "math", "prompt": "2+2?", "answer": "4"},
                                              {"id": "x", "domain": "math", "prompt": "3+3?", "answer": "6"}])
    assert [r.id for r in load_prompts(path)] == ["0", "2", "x"]  # blank lines counted, as in errors
    assert [r.id for r in load_prompts(path)] == ["0", "2", "x"]  # stable
    clash = write_jsonl(tmp_path / "clash.jsonl", [{"domain": "math", "prompt": "q", "answer": "1"},
                                                   {"id": "0", "domain": "math", "prompt": "q", "answer": "1"}])
    with pytest.raises(PromptRowError, match=rf"^{clash} row 1: duplicate id '0' \(first at row 0\)"):
        load_prompts(clash)
    with pytest.raises(PromptRowError, match=r"^r: missing 'id'"):  # parse_row alone still needs one
        parse_row({"domain": "math", "prompt": "q", "answer": "1"}, "r")


def test_a_source_default_domain_fills_rows_without_one(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1+1?", "answer": "2"},
                                              {"prompt": "Say hi.", "domain": "general"}])
    rows = PromptSource(path=str(path), domain="math").load("rl")
    assert [(r.id, r.domain) for r in rows] == [("0", "math"), ("1", "general")]  # a row's own domain wins
    with pytest.raises(PromptRowError, match=rf"^{path} row 0: unknown domain None; expected one of .* \(or give "
                                             r"the prompt source a default `domain`\)"):
        PromptSource(path=str(path)).load("rl")
    with pytest.raises(ValueError, match=rf"prompt file {path}: default domain 'maths' is not one of math, "):
        PromptSource(path=str(path), domain="maths").load("rl")


def test_fields_map_a_peers_columns_onto_the_schema(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": "1+1?", "solution": "2"},
                                              {"question": "2+2?", "solution": 4}])
    rows = PromptSource(path=str(path), domain="math", fields={"prompt": "question", "answer": "solution"}).load("rl")
    assert [(r.prompt_text, r.answer) for r in rows] == [("1+1?", "2"), ("2+2?", "4")]
    with pytest.raises(PromptRowError, match=rf"^{path} row 0: domain 'math' needs the field 'answer' \(read from "
                                             r"the column 'ground_truth' by the source's fields\)"):
        load_prompts(path, domain="math", fields={"prompt": "question", "answer": "ground_truth"})
    with pytest.raises(ValueError, match=rf"prompt file {path}: fields: 'anwser' is not a prompt row field; map "
                                         r"onto one of id, domain, prompt"):
        load_prompts(path, domain="math", fields={"anwser": "solution"})


def test_a_verl_parquet_file_loads_with_nested_fields(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    verl = [{"data_source": "openai/gsm8k", "prompt": [{"role": "user", "content": f"{i}+1?"}], "ability": "math",
             "reward_model": {"style": "rule", "ground_truth": str(i + 1)}, "extra_info": {"index": i}}
            for i in range(3)]
    pq.write_table(pa.Table.from_pylist(verl), tmp_path / "train.parquet")
    source = PromptSource(path=str(tmp_path / "train.parquet"),
                          fields={"domain": "ability", "answer": "reward_model.ground_truth", "meta": "extra_info"})
    rows = source.load("gsm8k")
    assert [(r.id, r.domain, r.prompt_text, r.answer, r.meta) for r in rows] == [
        (str(i), "math", f"{i}+1?", str(i + 1), {"index": i}) for i in range(3)]


def test_logic_rows_are_verified_from_meta_not_answer():
    meta = {"task": "countdown", "numbers": [3, 9, 4], "target": 13}
    row = parse_row({"id": "c", "domain": "logic", "prompt": "Make 13.", "meta": meta}, "logic.jsonl row 0")
    assert row.answer is None and row.meta == meta
    with pytest.raises(PromptRowError, match=r"^logic.jsonl row 1: domain 'logic' needs the field 'meta'"):
        parse_row({"id": "d", "domain": "logic", "prompt": "Make 13.", "answer": "9 + 4"}, "logic.jsonl row 1")
