"""eval/diagnostics.py: trace modes of hand-written math responses, mode shares / accuracies by hand,
per-constraint compliance and shortcut controls on hand-written IFEval rows (a case-constrained row
stays out of the case controls, unknown ids are ignored), paired differences, and the wiring:
`evaluate_rollouts(keep_texts=True)` and `evaluate_model`'s `analysis` / `examples`."""

from __future__ import annotations

import json
import math

import pytest

from ring_lightning.data.synthetic.instruction_pairs import END_PHRASES, KEYWORD
from ring_lightning.eval.diagnostics import (LONG_WORDS, analyze, examples, has_property, instruction_analysis, math_modes,
                                             paired, trace_mode)
from ring_lightning.eval.heldout import HeldoutEval, evaluate_model, load_sets
from ring_lightning.eval.passk import evaluate_rollouts
from ring_lightning.models.loading import load_policy, load_tokenizer
from ring_lightning.rewards.base import RewardResult
from ring_lightning.rewards.instruction import InstructionReward
from ring_lightning.rollout.engine import Completion, SamplingConfig
from ring_lightning.rows import PromptRow, parse_row

GUESS = "<think>\nQuick guess.\n</think>\nThe answer is \\boxed{11}."
REASONED = "<think>\n3 + 4 = 7.\n7 + 5 = 12.\n</think>\nThe answer is \\boxed{12}."
OTHER = "<think>\nlet me see\n</think>\nThe answer is \\boxed{12}."


@pytest.mark.parametrize("text,mode", [
    (GUESS, "guess"), (REASONED, "reasoned"), (OTHER, "other"),
    # no tag at all (the engines decode without special tokens, <think> among them): all of it is trace
    ("\n3 + 4 = 7.\n\nThe answer is \\boxed{7}.", "reasoned"),
    ("\nQuick guess.\n\nThe answer is \\boxed{7}.", "guess"),
    ("The answer is \\boxed{7}.", "other"),
    ("<think>\n</think>\nQuick guess. \\boxed{3}", "other"),           # the phrase outside the trace
    ("<think>\nQuick guess.\n1 + 2 = 3.\n</think>\n\\boxed{3}", "guess"),  # a guess, whatever follows
    ("3 + 4 = 7.\n</think>\n\\boxed{7}", "reasoned"),                  # opening tag in the prompt
    ("<think>\n3 + 4 = 7.", "reasoned"),                              # never closed: the rest is trace
    ("<think>\n3+4=7.\n</think>\n\\boxed{7}", "other"),                # not a step line
    ("<think>\n3 + 4 = 7\n</think>\n\\boxed{7}", "other"),             # no full stop
])
def test_trace_mode(text, mode):
    assert trace_mode(text) == mode


def test_sampled_texts_keep_the_think_tags_and_their_mode():
    """The engines decode with skip_special_tokens=True; the shipped tokenizer's <think> / </think> are
    added tokens that are not special (as in Qwen3's), so a sampled text keeps them."""
    tok = load_tokenizer()
    for text, mode in ((REASONED, "reasoned"), (GUESS, "guess"), (OTHER, "other")):
        decoded = tok.decode(tok.encode(text, add_special_tokens=False), skip_special_tokens=True)  # as the engines
        assert decoded == text and trace_mode(decoded) == mode


def test_math_modes_by_hand():
    out = math_modes([[GUESS, REASONED, REASONED], [OTHER, REASONED, GUESS]],
                     [[False, True, False], [True, True, False]])
    assert out["counts"] == {"guess": 2, "reasoned": 3, "other": 1}
    assert out["shares"] == pytest.approx({"guess": 2 / 6, "reasoned": 3 / 6, "other": 1 / 6})
    assert out["accuracy"] == pytest.approx({"guess": 0.0, "reasoned": 2 / 3, "other": 1.0})
    none = math_modes([[REASONED, REASONED]], [[True, False]])
    assert none["accuracy"] == {"guess": None, "reasoned": 0.5, "other": None}
    assert none["shares"] == {"guess": 0.0, "reasoned": 1.0, "other": 0.0}
    with pytest.raises(ValueError, match="same per-prompt lengths"):
        math_modes([[GUESS, GUESS]], [[True]])


def _row(rid, instructions):
    return PromptRow(id=rid, domain="instruction", messages=({"role": "user", "content": f"prompt {rid}"},),
                     instructions=tuple(instructions))


def _instruction_case():
    kw, end = KEYWORD, END_PHRASES[0]
    fill = " ".join(["fill"] * LONG_WORDS)
    assert not {kw, *end.lower().split()} & set(fill.split()) and kw.islower()
    rows = [
        _row("r0", [{"id": "change_case:english_lowercase", "kwargs": {}}]),
        _row("r1", [{"id": "length_constraints:number_words", "kwargs": {"relation": "less than", "num_words": 5}},
                    {"id": "keywords:existence", "kwargs": {"keywords": [kw]}}]),
        _row("r2", [{"id": "made:up", "kwargs": {}}, {"id": "punctuation:no_comma", "kwargs": {}}]),
        _row("r3", [{"id": "change_case:english_capital", "kwargs": {}},
                    {"id": "length_constraints:number_words", "kwargs": {"relation": "exactly", "num_words": 3}}]),
        _row("r4", [{"id": "made:up", "kwargs": {}}]),
    ]
    texts = [
        ["<think>x</think>\nhello world", "<think>x</think>\nHello World", "HELLO"],
        [f"the {kw} is here", f"THE {kw.upper()} IS HERE NOW", "nothing"],
        [f"{fill} {end.lower()}", "<think>\nTHE END\n</think>\nShort one."],
        ["LOUD AND CLEAR", "<think>never closed LOUD"],
        ["<think>never closed", "ok"],
    ]
    return rows, texts


def test_compliance_per_constraint_by_hand_and_agrees_with_the_reward():
    rows, texts = _instruction_case()
    comp = instruction_analysis(rows, texts)["compliance"]
    assert list(comp) == ["upper", "lower", "fewer_than", "keyword"]  # KINDS order; at_least / ending: none asks
    assert comp["lower"] == {"mean": pytest.approx(1 / 3), "se": 0.0, "prompts": 1, "rates": [pytest.approx(1 / 3)]}
    assert comp["fewer_than"]["rates"] == pytest.approx([2 / 3]) and comp["keyword"]["rates"] == pytest.approx([2 / 3])
    assert comp["upper"]["rates"] == pytest.approx([1 / 2])  # the unclosed <think> leaves an empty answer
    # the reward decides each constraint the same way: its "followed" list per sample
    reward = InstructionReward(mode="fraction")
    for i, iid, kind in ((0, "change_case:english_lowercase", "lower"),
                         (1, "length_constraints:number_words", "fewer_than"), (1, "keywords:existence", "keyword")):
        followed = [iid in reward.score_one(rows[i], t).info["followed"] for t in texts[i]]
        assert sum(followed) / len(followed) == pytest.approx(comp[kind]["mean"])


def test_shortcut_controls_skip_prompts_that_ask_for_the_family():
    rows, texts = _instruction_case()
    ctrl = instruction_analysis(rows, texts)["control"]
    # case controls: r0 (lowercase) and r3 (capital) excluded -> r1, r2, r4
    assert ctrl["upper"]["rates"] == pytest.approx([1 / 3, 0.0, 0.0])
    assert ctrl["lower"]["rates"] == pytest.approx([2 / 3, 1 / 2, 1 / 2])
    assert ctrl["lower"]["mean"] == pytest.approx(5 / 9)
    assert ctrl["lower"]["se"] == pytest.approx(1 / 18)  # sample var 1/108 over 3 prompts
    assert ctrl["lower"]["prompts"] == 3
    # length controls: r1 (fewer than) and r3 (exactly, no compliance row) excluded -> r0, r2, r4
    assert ctrl["long"]["rates"] == pytest.approx([0.0, 1 / 2, 0.0])
    assert ctrl["short"]["rates"] == pytest.approx([1.0, 1 / 2, 1 / 2])  # an empty answer is not short
    # keyword: r1 excluded; ending: no row asks, all five count; one control per keyword / end phrase
    assert ctrl[f"keyword {KEYWORD}"]["rates"] == pytest.approx([0.0, 0.0, 0.0, 0.0])
    assert ctrl[f"ending {END_PHRASES[0]}"]["rates"] == pytest.approx([0.0, 0.0, 1 / 2, 0.0, 0.0])
    assert ctrl[f"ending {END_PHRASES[1]}"]["rates"] == pytest.approx([0.0] * 5)
    assert set(ctrl) == {"upper", "lower", "long", "short", f"keyword {KEYWORD}",
                         *(f"ending {p}" for p in END_PHRASES)}
    with pytest.raises(ValueError, match="5 rows but 4 per-prompt sample lists"):
        instruction_analysis(rows, texts[:4])


def test_forbidden_keyword_is_the_keyword_family_s_other_side():
    rows = [_row("f0", [{"id": "keywords:forbidden_words", "kwargs": {"forbidden_words": [KEYWORD]}}]),
            _row("f1", [{"id": "change_case:english_lowercase", "kwargs": {}}])]
    texts = [[f"it is like {KEYWORD}.", "it is like glass.", "it is like glass."], [f"a {KEYWORD} b", "c"]]
    out = instruction_analysis(rows, texts)
    assert out["compliance"]["no_keyword"]["rates"] == pytest.approx([2 / 3])
    reward = InstructionReward(mode="fraction")
    assert [bool(reward.score_one(rows[0], t).info["followed"]) for t in texts[0]] == [False, True, True]
    assert out["control"][f"keyword {KEYWORD}"]["rates"] == pytest.approx([1 / 2])  # f0 asks the family: left out


def test_control_properties():
    kw, end = KEYWORD, END_PHRASES[0]
    assert has_property("ABC 12!", "upper") and not has_property("123", "upper") and not has_property("ABc", "upper")
    assert has_property("abc 12", "lower") and not has_property("", "lower")
    other_end = END_PHRASES[1]
    # the reward's own checker (IFEval keywords:existence: a case-blind substring), as compliance uses
    assert has_property(f"I like {kw.upper()}.", f"keyword {kw}") and has_property(f"x{kw}x", f"keyword {kw}")
    assert not has_property("I like gold.", f"keyword {kw}")
    assert has_property(f"fine.  {end.upper()}  ", f"ending {end}") and not has_property(f"{end} more", f"ending {end}")
    assert not has_property(f"fine. {end}", f"ending {other_end}")
    assert has_property(" ".join(["w"] * LONG_WORDS), "long") and not has_property(" ".join(["w"] * (LONG_WORDS - 1)), "long")
    assert has_property(" ".join(["w"] * (LONG_WORDS - 1)), "short") and not has_property(" ".join(["w"] * LONG_WORDS), "short")
    for bad in ("loud", "keyword gold", "ending Bye."):  # only the task's own keywords and end phrases
        with pytest.raises(ValueError, match=f"unknown property '{bad}'"):
            has_property("x", bad)


def test_paired_and_analyze_routes_by_domain():
    mean, se = paired([0.0, 0.5, 1.0], [0.5, 0.5, 1.0])
    assert mean == pytest.approx(0.5 / 3) and se == pytest.approx(math.sqrt((1 / 12) / 3))
    with pytest.raises(ValueError, match="same non-empty prompt set"):
        paired([0.5], [0.5, 1.0])
    rows, texts = _instruction_case()
    m = PromptRow(id="m", domain="math", messages=({"role": "user", "content": "Compute 3 + 4 + 5."},), answer="12")
    logic = PromptRow(id="l", domain="logic", messages=({"role": "user", "content": "?"},), answer="y")
    out = analyze([m, rows[0], logic], [[GUESS, REASONED], texts[0], ["y"]], [[False, True], [False] * 3, [True]])
    assert set(out) == {"math", "instruction"}
    assert out["math"]["counts"] == {"guess": 1, "reasoned": 1, "other": 0}
    assert out["instruction"]["compliance"]["lower"]["rates"] == pytest.approx([1 / 3])
    ex = examples([m, rows[0], logic, rows[1]], [["a" * 400, "b", "c"], ["d"], ["e"], ["f"]])
    assert [e["id"] for e in ex] == ["m", "r0", "l"]
    assert ex[0]["responses"] == ["a" * 299 + "…", "b"] and ex[0]["prompt"] == "Compute 3 + 4 + 5."


class Scripted:
    def __init__(self, script):
        self.script = script

    def generate(self, prompts, n, sampling):
        return [[Completion((5,), (-1.0,), t, "stop") for t in self.script[i]] for i in range(len(prompts))]


class Exact:
    def __call__(self, rows, texts):
        return [RewardResult(float(t == r.answer)) for r, t in zip(rows, texts)]


def test_evaluate_rollouts_keeps_texts_only_when_asked():
    rows = [parse_row({"id": "a", "domain": "math", "prompt": "1+1?", "answer": "2"}, "row 0"),
            parse_row({"id": "b", "domain": "math", "prompt": "2+2?", "answer": "4"}, "row 1")]
    engine = Scripted({0: ["2", "3"], 1: ["4", "4"]})
    cfg = SamplingConfig(temperature=1.0, max_tokens=4, seed=0)
    plain = evaluate_rollouts(engine, load_tokenizer(), rows, Exact(), 2, cfg)
    assert plain.texts is None and plain.correct is None
    kept = evaluate_rollouts(engine, load_tokenizer(), rows, Exact(), 2, cfg, keep_texts=True)
    assert kept.texts == (("2", "3"), ("4", "4")) and kept.correct == ((True, False), (True, True))
    assert kept.num_correct.tolist() == [1, 2]


class Recording:
    """1.0 for an even-length response; records (row id, text)."""

    def __init__(self):
        self.seen = []

    def __call__(self, rows, responses):
        self.seen += [(r.id, t) for r, t in zip(rows, responses)]
        return [RewardResult(float(len(t) % 2 == 0)) for t in responses]


def test_evaluate_model_stores_the_analysis_of_the_scored_samples(tmp_path):
    policy, tok = load_policy("bailing-tiny", seed=0, norm_head=False)
    policy.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "domain": "math", "prompt": "Compute 1 + 2 + 3.", "answer": "6"},
        {"id": "b", "domain": "instruction", "prompt": "Write a title about the sea in lowercase.",
         "instructions": [{"id": "change_case:english_lowercase", "kwargs": {}}]},
        {"id": "c", "domain": "math", "prompt": "Compute 2 + 2 + 2.", "answer": "6"},
        {"id": "d", "domain": "instruction", "prompt": "Say hi.", "instructions": [{"id": "made:up"}]}]))
    spec = HeldoutEval(sets={"mixed": {"path": str(mixed)}}, samples_per_prompt=3, k=[1, 3], max_tokens=6, seed=3,
                       torch_threads=1)
    reward = Recording()
    res = evaluate_model(str(tmp_path / "m"), spec, reward=reward)
    s = res["sets"]["mixed"]
    by_row: dict[str, list[str]] = {}
    for rid, text in reward.seen:
        by_row.setdefault(rid, []).append(text)
    rows = load_sets(spec)["mixed"]
    want_math = math_modes([by_row["a"], by_row["c"]], [[len(t) % 2 == 0 for t in by_row[r]] for r in "ac"])
    assert s["analysis"]["math"] == want_math and sum(want_math["counts"].values()) == 6
    assert s["analysis"]["instruction"] == instruction_analysis([rows[1], rows[3]], [by_row["b"], by_row["d"]])
    assert s["analysis"]["instruction"]["compliance"]["lower"]["prompts"] == 1
    assert s["analysis"]["instruction"]["control"]["upper"]["prompts"] == 1  # only "d": "b" asks for case
    assert [e["id"] for e in s["examples"]] == ["a", "b", "c"]
    assert s["examples"][1] == {"id": "b", "prompt": "Write a title about the sea in lowercase.",
                                "responses": [t[:300] for t in by_row["b"][:2]]}
    assert "analysis" not in res["domains"]["mixed"]["math"]  # per-domain rows keep only the counts
    json.dumps(res)  # stored as JSON by the pipeline
