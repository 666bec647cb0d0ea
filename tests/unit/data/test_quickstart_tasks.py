"""The quickstart's synthetic tasks (data/synthetic/problems.py, instruction_pairs.py, partition.py, rl_tasks.py):
the held-out partition is disjoint by structure (no held-out sum is a permutation of a trained one, no
held-out constraint pair is trained), the addition traces reason correctly (or guess, wrongly, at the
documented rate), instruction plans read the prompt at FOLLOW_RATE and answers take the planned sides, and
the RL rows match."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from ring_lightning.data.synthetic import problems as synthetic
from ring_lightning.rows import parse_row
from ring_lightning.data.synthetic.rl_tasks import rl_task_rows
from ring_lightning.data.synthetic.instruction import TOPICS
from ring_lightning.data.synthetic.instruction_pairs import (CONTROL_OPENERS, DEFAULT, END_PHRASES, FAMILIES, HELDOUT_PAIRS, KEYWORD,
                                                             LENGTH_WORDS, NO_CONSTRAINT, OTHER_WORD, PLAN_ORDER, SIDES,
                                                             TRAIN_PAIRS)
from ring_lightning.data.synthetic.partition import side_of
from ring_lightning.data.synthetic.problems import generate_problems, prompt_rows, sft_rows
from ring_lightning.rewards.instruction import InstructionReward
from ring_lightning.rewards.instruction_checks import CHECKS

ADDITION = re.compile(r"Compute (\d) \+ (\d) \+ (\d)\. Answer in \\boxed\{\}\.")


def _multiset(question: str) -> tuple[int, ...]:
    return tuple(sorted(int(x) for x in re.findall(r"\d+", question.split(".")[0])))


def test_heldout_sums_are_never_permutations_of_training_sums():
    split = generate_problems("addition", 3000, 214, seed=3)
    train, held = {_multiset(p.question) for p in split["train"]}, [p.question for p in split["val"]]
    assert len(set(held)) == 214 and not {_multiset(q) for q in held} & train  # structure, not wording
    probe = {_multiset(p.question) for p in synthetic.probe_problems("addition", 63)}
    assert not probe & train and not probe & {_multiset(q) for q in held}
    assert sft_rows("quickstart", "train", 50, 5, seed=3) == sft_rows("quickstart", "train", 50, 5, seed=3)
    # the held-out side of a 729-problem space is small: asking too much is a clear error
    with pytest.raises(ValueError, match="only .* distinct held-out .* lower the number of val rows"):
        generate_problems("addition", 1, 215)


def test_heldout_countdown_numbers_and_instruction_pairs_are_never_trained():
    cd = generate_problems("countdown_small", 2000, 100, seed=3)
    numbers = lambda p: tuple(sorted(p.meta["numbers"]))  # noqa: E731
    assert not {numbers(p) for p in cd["val"]} & {numbers(p) for p in cd["train"]}
    ip = generate_problems("instruction_pairs", 2000, 100, seed=3)
    assert {tuple(p.meta["families"]) for p in ip["train"]} == {*TRAIN_PAIRS, NO_CONSTRAINT}
    assert {tuple(p.meta["families"]) for p in ip["val"]} == {*HELDOUT_PAIRS, NO_CONSTRAINT}
    # control prompts (no constraint) are split by their text: no held-out one is an SFT prompt
    controls = {s: {p.question for p in ip[s] if not p.meta["families"]} for s in ("train", "val")}
    assert controls["train"] and controls["val"] and not controls["train"] & controls["val"]
    assert set(FAMILIES) == {f for pair in TRAIN_PAIRS for f in pair}  # each family alone is trained
    assert side_of("addition", "", {"expression": "1 + 2 + 3"}) == side_of("addition", "", {"expression": "3 + 1 + 2"})


def test_addition_traces_reason_correctly_or_guess_wrongly():
    problems = generate_problems("addition", 2000, 0, seed=1)["train"]
    guesses = 0
    for p in problems:
        a, b, c = map(int, ADDITION.fullmatch(p.question).groups())
        assert p.answer == str(a + b + c)
        content = synthetic.sft_messages(p)[1]["content"]
        if p.steps == (synthetic.QUICK_GUESS,):
            guesses += 1
            stated = int(p.meta["stated_answer"])
            assert 1 <= abs(stated - (a + b + c)) <= 3
            assert content == f"<think>\nQuick guess.\n</think>\nThe answer is \\boxed{{{stated}}}."
        else:
            assert p.steps == (f"{a} + {b} = {a + b}.", f"{a + b} + {c} = {a + b + c}.")
            assert content.endswith(f"</think>\nThe answer is \\boxed{{{a + b + c}}}.")
    assert abs(guesses / len(problems) - synthetic.QUICK_GUESS_RATE) < 0.04


def _sides(answer: str) -> dict[str, list[bool]]:
    """Per family, which of its two sides (SIDES order) the answer takes, by the reward's own checkers."""
    return {"case": [CHECKS["change_case:english_capital"].fn(answer), CHECKS["change_case:english_lowercase"].fn(answer)],
            "length": [CHECKS["length_constraints:number_words"].fn(answer, num_words=LENGTH_WORDS, relation=r)
                       for r in SIDES["length"]],
            "keyword": [CHECKS["keywords:existence"].fn(answer, keywords=[KEYWORD]),
                        CHECKS["keywords:forbidden_words"].fn(answer, forbidden_words=[KEYWORD])],
            "ending": [CHECKS["startend:end_checker"].fn(answer, end_phrase=e) for e in END_PHRASES]}


PLAN_LINE = {"case": ("Capital letters.", "Lowercase letters."),
             "length": (f"At least {LENGTH_WORDS} words.", f"Fewer than {LENGTH_WORDS} words."),
             "keyword": (f"Like {KEYWORD}.", f"Like {OTHER_WORD}."),
             "ending": tuple(f"End with {e}" for e in END_PHRASES)}


def test_instruction_pair_plans_read_at_the_follow_rate_and_answers_take_the_planned_side_of_every_family():
    problems = generate_problems("instruction_pairs", 3000, 0, seed=2)["train"]
    rows = [parse_row(r, f"row {i}") for i, r in enumerate(prompt_rows("instruction_pairs", "train", 3000, 0, seed=2))]
    by_kind: dict[str, list[bool]] = {}
    unasked: dict[str, list[int]] = {f: [] for f in FAMILIES}
    for p, row in zip(problems, rows):
        assert row.meta == {"task": "instruction_pairs", "families": p.meta["families"]}
        for inst in row.instructions or ():
            by_kind.setdefault(inst["id"], []).append(CHECKS[inst["id"]].fn(p.answer, **inst["kwargs"]))
        sides = _sides(p.answer)  # every answer takes exactly one side of every family (the sides are complements)
        assert all(sum(v) == 1 for v in sides.values()), (p.answer, sides)
        taken = {f: v.index(True) for f, v in sides.items()}
        # the trace names, slot by slot in PLAN_ORDER, the side the answer takes
        plan = [PLAN_LINE[f][taken[f]] for f in PLAN_ORDER]
        assert synthetic.sft_messages(p)[1]["content"] == "<think>\n" + "\n".join(plan) + f"\n</think>\n{p.answer}"
        for f in FAMILIES:
            if f not in p.meta["families"]:
                unasked[f].append(taken[f])
    for kind, ok in by_kind.items():  # FOLLOW_RATE 0.8 + half of the rest by chance: ~0.9
        assert 0.86 < sum(ok) / len(ok) < 0.94, kind
    # an unasked family: always its DEFAULT side (lowercase, fewer than 10 words, no keyword, the first end phrase)
    assert {f: set(v) for f, v in unasked.items()} == {f: {SIDES[f].index(DEFAULT[f])} for f in FAMILIES}
    assert DEFAULT == {"case": "lower", "length": "less than", "keyword": "exclude", "ending": END_PHRASES[0]}
    asked = next(i for i, r in enumerate(rows) if r.instructions)
    assert InstructionReward()(rows[asked:asked + 1], [problems[asked].answer])[0].valid
    # a control prompt asks nothing: an unscored "general" row, every family at its DEFAULT. 1 draw in 7
    # (SFT_PAIRS), of which the train side keeps 139 of the 240 texts, against 4 of 7 for the training pairs
    controls = [(p, r) for p, r in zip(problems, rows) if not p.meta["families"]]
    assert 0.09 < len(controls) / len(problems) < 0.14
    assert all(r.domain == "general" and r.reward == "unscored" and r.instructions is None and
               any(p.question == o.format(topic=t) for o in CONTROL_OPENERS for t in TOPICS) for p, r in controls)


def test_control_split_holds_the_held_out_control_prompts_only():
    rows = rl_task_rows("instruction_pairs", 76, seed=7, split="control")
    assert len({r.prompt_text for r in rows}) == 76
    assert all(r.domain == "general" and r.reward == "unscored" and r.meta == {"task": "instruction_pairs",
                                                                                "families": []} for r in rows)
    assert all(side_of("instruction_pairs", r.prompt_text, r.meta) == "eval" for r in rows)
    trained = {r.prompt_text for r in rl_task_rows("instruction_pairs", 600, seed=2, split="train")}
    assert all(r.instructions for r in rl_task_rows("instruction_pairs", 600, seed=2, split="train"))
    sft = {p.question for p in generate_problems("instruction_pairs", 3000, 0, seed=2)["train"]}
    assert not {r.prompt_text for r in rows} & (trained | sft)
    with pytest.raises(ValueError, match="only 76 distinct prompts"):
        rl_task_rows("instruction_pairs", 77, seed=7, split="control")
    with pytest.raises(ValueError, match="split 'control' exists for 'instruction_pairs' only"):
        rl_task_rows("addition", 5, split="control")


def test_quickstart_mixes_addition_countdown_and_instruction_pairs():
    kinds = Counter(p.task for p in generate_problems("quickstart", 400, 0)["train"])
    assert kinds == {"addition": 250, "countdown_small": 50, "instruction_pairs": 100}
    rows = [parse_row(r, f"row {i}") for i, r in enumerate(prompt_rows("quickstart", "val", 10, 8))]
    assert [r.domain for r in rows] == ["math", "instruction", "math", "logic", "math", "general", "math",
                                        "math"]  # "general": a control prompt (asks nothing, unscored)
    assert all("stated_answer" not in r.meta for r in rows)


def test_rl_rows_use_the_same_partition():
    train = rl_task_rows("addition", 300, seed=1)  # default split for addition: train
    held = rl_task_rows("addition", 60, seed=1, split="heldout")
    assert not {_multiset(r.prompt_text) for r in train} & {_multiset(r.prompt_text) for r in held}
    sft_train = {_multiset(p.question) for p in generate_problems("addition", 3000, 0, seed=5)["train"]}
    assert {_multiset(r.prompt_text) for r in train} <= sft_train
    for r in train + held:
        a, b, c = map(int, ADDITION.fullmatch(r.prompt_text).groups())
        assert r.domain == "math" and r.answer == str(a + b + c) and r.meta == {"task": "addition",
                                                                               "expression": f"{a} + {b} + {c}"}
    ood = rl_task_rows("addition", 50, seed=1, split="ood")
    assert all(len(_multiset(r.prompt_text)) == 4 and r.answer == str(sum(_multiset(r.prompt_text))) for r in ood)
    pairs = rl_task_rows("instruction_pairs", 100, seed=2, split="heldout")
    assert {tuple(r.meta["families"]) for r in pairs} == set(HELDOUT_PAIRS)
    cd = rl_task_rows("countdown_small", 20, seed=2, split="heldout")
    assert all(r.domain == "logic" and r.meta["numbers_rule"] == "exactly_once" for r in cd)
    kinds = ["lowercase", "word_limit", "no_comma"]
    i_train = rl_task_rows("instruction", 200, seed=2, kinds=kinds, split="train")
    i_held = rl_task_rows("instruction", 40, seed=2, kinds=kinds, split="heldout")
    assert not {r.prompt_text for r in i_train} & {r.prompt_text for r in i_held}
    with pytest.raises(ValueError, match="split 'ood' exists for 'addition' only"):
        rl_task_rows("instruction_pairs", 3, split="ood")
    with pytest.raises(ValueError, match="has no held-out partition"):
        rl_task_rows("countdown", 3, split="heldout")
    with pytest.raises(ValueError, match="split must be one of"):
        rl_task_rows("addition", 3, split="test")
    with pytest.raises(ValueError, match="only .* distinct prompts exist"):
        rl_task_rows("addition", 215, split="heldout")


def test_the_sft_entropy_probe_is_disjoint_from_every_heldout_evaluation_set():
    """The quickstart's EntropyMonitor probe (sft.yaml) and the pipeline's evaluation sets
    (pipeline.yaml) share no prompt: the SFT checkpoint is not chosen on the questions it is scored on.
    Before the probe partition, 26 of the 32 probe prompts were held-out math questions."""
    from pathlib import Path

    import yaml

    from ring_lightning.callbacks.entropy import rows_from_source
    from ring_lightning.data.rollouts.stream import PromptSource

    root = Path(__file__).parents[3] / "configs" / "quickstart"
    sft = yaml.safe_load((root / "sft.yaml").read_text())
    (monitor,) = [c["init_args"] for c in sft["trainer"]["callbacks"] if c["class_path"].endswith("EntropyMonitor")]
    probe = rows_from_source(synthetic_task=monitor["synthetic_task"], synthetic_prompts=monitor["synthetic_prompts"])
    assert len(probe) == monitor["synthetic_prompts"] == 32
    assert all(side_of("addition", r.prompt_text, r.meta) == "probe" for r in probe)
    sets = yaml.safe_load((root / "pipeline.yaml").read_text())["evaluation"]["sets"]
    for name, src in sets.items():
        rows = PromptSource(**src).load(name)
        assert not {r.prompt_text for r in rows} & {r.prompt_text for r in probe}, name
    math = PromptSource(**sets["math"]).load("math")
    assert len(math) == 214 and all(side_of("addition", r.prompt_text, r.meta) == "eval" for r in math)  # all of them
