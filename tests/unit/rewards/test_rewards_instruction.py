"""InstructionReward: each IFEval-style rule on a right and a wrong answer, modes, validation."""

from __future__ import annotations

import pytest
from rewards_testlib import make_row

from ring_lightning.rewards.instruction import InstructionReward
from ring_lightning.rewards.instruction_checks import CHECKS
from ring_lightning.rewards.language_id import is_language

# (id, kwargs, a response that follows it, one that does not)
CASES = [
    ("keywords:existence", {"keywords": ["apple", "pear"]}, "An Apple and a pear.", "Only an apple."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"}, "cat cat", "one cat"),
    ("keywords:forbidden_words", {"forbidden_words": ["bad"]}, "all good", "this is Bad."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "less than"}, "zoo", "zizz"),
    ("language:response_language", {"language": "en"}, "This is the answer and it is in English.",
     "Das ist die Antwort und sie ist nicht auf Englisch."),
    ("language:response_language", {"language": "de"}, "Das ist die Antwort und sie ist auf Deutsch.",
     "This is the answer in English."),
    ("language:response_language", {"language": "ru"}, "Это ответ на русском языке.", "This is English."),
    ("language:response_language", {"language": "zh"}, "这是中文的回答。", "これは日本語の答えです。"),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at most"}, "One. Two!", "A. B. C."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First part.\n***\nSecond part.", "Just one."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "exactly"}, "one two three four five",
     "one two three"),
    ("length_constraints:number_words", {"num_words": 3, "relation": "more than"}, "a b c d", "a b c"),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "First.\n\nThen second.", "First.\n\nAfter that."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], at [address].", "Dear [name]."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Body.\nP.S. See you.", "Body only."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", "* one\n* two\n* three"),
    ("detectable_format:constrained_response", {}, "My answer is yes.", "Yes."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*a* and *b*", "*a* only"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nfoo\nSection 2\nbar", "Section 1\nfoo"),
    ("detectable_format:json_format", {}, '```json\n{"a": [1, 2]}\n```', "{'a': 1}"),
    ("detectable_format:title", {}, "<<My Title>>\nText", "My Title\nText"),
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.", "Only one."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi."}, "Say hi. Hi!", "Hi!"),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions?", "Done."),
    ("startend:start_checker", {"start_phrase": "Dear reader"}, "Dear reader, hello.", "Hello, dear reader."),
    ("startend:quotation", {}, '"quoted"', 'not "quoted"'),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "THIS is BIG", "only ONE"),
    ("change_case:english_capital", {}, "ALL CAPS HERE.", "Not All Caps."),
    ("change_case:english_lowercase", {}, "all lower here.", "Not lower."),
    ("punctuation:no_comma", {}, "no commas at all", "a, b"),
]


def test_every_registered_instruction_is_covered():
    assert {c[0] for c in CASES} == set(CHECKS)


@pytest.mark.parametrize("iid,kwargs,good,bad", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule(iid, kwargs, good, bad):
    reward = InstructionReward()
    row = make_row("instruction", instructions=({"id": iid, "kwargs": kwargs},))
    reward.validate(row, "ifeval.jsonl row 0")
    out = reward([row, row], [good, bad])
    assert [r.reward for r in out] == [1.0, 0.0], [r.info for r in out]


def test_all_of_versus_fraction_and_thinking_is_ignored():
    row = make_row("instruction", instructions=(
        {"id": "punctuation:no_comma", "kwargs": {}},
        {"id": "change_case:english_lowercase", "kwargs": {}},
        {"id": "length_constraints:number_words", "kwargs": {"num_words": 3, "relation": "at least", "letter": None}},
    ))
    response = "<think>Hmm, Let me think, CAREFULLY.</think>all lower, but a comma"
    strict = InstructionReward()([row], [response])[0]
    frac = InstructionReward(mode="fraction")([row], [response])[0]
    assert strict.reward == 0.0 and strict.info["failed"] == ["punctuation:no_comma"]
    assert frac.reward == pytest.approx(2 / 3)
    assert InstructionReward()([row], ["<think>never closed, no answer"])[0].reward == 0.0


@pytest.mark.parametrize("inst,match", [
    ({"id": "length_constraints:number_tokens", "kwargs": {}},
     "unknown instruction id 'length_constraints:number_tokens'"),
    ({"id": "length_constraints:number_words", "kwargs": {"num_words": 5}}, "missing kwarg 'relation'"),
    ({"id": "length_constraints:number_words", "kwargs": {"num_words": "5", "relation": "at least"}}, "must be int"),
    ({"id": "length_constraints:number_words", "kwargs": {"num_words": 5, "relation": "about"}}, "relation must be"),
    ({"id": "punctuation:no_comma", "kwargs": {"extra": 1}}, "unknown kwargs"),
    ({"id": "language:response_language", "kwargs": {"language": "tlh"}}, "not supported"),
])
def test_validation_names_row_and_id(inst, match):
    row = make_row("instruction", instructions=(inst,))
    with pytest.raises(ValueError, match=r"ifeval.jsonl row 9: instructions\[0\]: .*" + match):
        InstructionReward().validate(row, "ifeval.jsonl row 9")
    res = InstructionReward()([row], ["anything"])[0]
    assert res.valid is False and res.reward == 0.0


def test_language_heuristic():
    assert is_language("Le chat est sur la table et il dort pour la nuit.", "fr")
    assert not is_language("Le chat est sur la table et il dort pour la nuit.", "en")
    assert is_language("これは日本語です。", "ja") and not is_language("これは日本語です。", "zh")
    assert not is_language("12345 !!!", "en")


def test_mode_is_checked():
    with pytest.raises(ValueError, match="mode must be"):
        InstructionReward(mode="some")
