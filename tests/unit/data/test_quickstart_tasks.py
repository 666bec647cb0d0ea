"""The quickstart's synthetic tasks (data/synthetic/problems.py, synthetic_instruction.py, rl_tasks.py): the
held-out partition is never trained on, the addition traces reason correctly (or guess, wrongly, at
the documented rate), instruction answers comply only by chance, and the RL rows match."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from ring_lightning.data.synthetic import problems as synthetic
from ring_lightning.rows import parse_row
from ring_lightning.data.synthetic.rl_tasks import rl_task_rows
from ring_lightning.data.synthetic.problems import generate_problems, is_heldout, prompt_rows, sft_rows
from ring_lightning.rewards.instruction import InstructionReward

ADDITION = re.compile(r"Compute (\d) \+ (\d) \+ (\d)\. Answer in \\boxed\{\}\.")


def test_partitioned_tasks_never_train_on_heldout_questions():
    for task in ("addition", "instruction", "quickstart"):
        split = generate_problems(task, 600, 40, seed=3)
        assert len(split["train"]) == 600 and len(split["val"]) == 40
        assert not any(is_heldout(p.question) for p in split["train"])
        assert all(is_heldout(p.question) for p in split["val"])
        assert len({p.question for p in split["val"]}) == 40  # distinct
        assert sft_rows(task, "train", 50, 5, seed=3) == sft_rows(task, "train", 50, 5, seed=3)
    # the held-out side of a 729-problem space is small: asking too much is a clear error
    with pytest.raises(ValueError, match="only .* distinct held-out .* lower the number of val rows"):
        generate_problems("addition", 1, 500)


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


def test_instruction_answers_comply_only_by_chance():
    problems = generate_problems("instruction", 600, 0, seed=2)["train"]
    rows = prompt_rows("instruction", "train", 600, 0, seed=2)
    parsed = [parse_row(r, f"row {i}") for i, r in enumerate(rows)]
    assert {p.instructions[0]["id"] for p in parsed} == {
        "change_case:english_lowercase", "length_constraints:number_words", "punctuation:no_comma"}
    results = InstructionReward()(parsed, [p.answer for p in problems])
    by_kind: dict[str, list[float]] = {}
    for row, res in zip(parsed, results):
        by_kind.setdefault(row.instructions[0]["id"], []).append(res.reward)
    for kind, rewards in by_kind.items():
        assert 0.25 < sum(rewards) / len(rewards) < 0.85, kind  # neither ignored nor followed
    chat = synthetic.sft_messages(problems[0])[1]["content"]
    assert chat == f"<think>\n\n</think>\n{problems[0].answer}"


def test_quickstart_interleaves_addition_and_instruction_3_to_1():
    kinds = Counter(p.task for p in generate_problems("quickstart", 400, 0)["train"])
    assert kinds == {"addition": 300, "instruction": 100}
    rows = [parse_row(r, f"row {i}") for i, r in enumerate(prompt_rows("quickstart", "val", 10, 8))]
    assert [r.domain for r in rows] == ["math", "math", "math", "instruction"] * 2
    assert all("stated_answer" not in r.meta for r in rows)


def test_rl_rows_use_the_same_partition():
    train = rl_task_rows("addition", 300, seed=1)  # default split for addition: train
    held = rl_task_rows("addition", 60, seed=1, split="heldout")
    assert not any(is_heldout(r.prompt_text) for r in train) and all(is_heldout(r.prompt_text) for r in held)
    assert not {r.prompt_text for r in train} & {r.prompt_text for r in held}
    for r in train + held:
        a, b, c = map(int, ADDITION.fullmatch(r.prompt_text).groups())
        assert r.domain == "math" and r.answer == str(a + b + c) and r.meta == {"task": "addition",
                                                                               "expression": f"{a} + {b} + {c}"}
    kinds = ["lowercase", "word_limit", "no_comma"]
    i_train = rl_task_rows("instruction", 200, seed=2, kinds=kinds, split="train")
    i_held = rl_task_rows("instruction", 40, seed=2, kinds=kinds, split="heldout")
    assert not {r.prompt_text for r in i_train} & {r.prompt_text for r in i_held}
    assert all(is_heldout(r.prompt_text) for r in i_held)
    # the instruction task's default draws from the whole space, as before
    assert any(is_heldout(r.prompt_text) for r in rl_task_rows("instruction", 300, seed=2, kinds=kinds))
    with pytest.raises(ValueError, match="has no held-out partition"):
        rl_task_rows("countdown", 3, split="heldout")
    with pytest.raises(ValueError, match="split must be one of"):
        rl_task_rows("addition", 3, split="test")
    with pytest.raises(ValueError, match="only .* distinct prompts exist"):
        rl_task_rows("addition", 200, split="heldout")


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
    assert all(synthetic.is_probe(r.prompt_text) for r in probe)
    sets = yaml.safe_load((root / "pipeline.yaml").read_text())["evaluation"]["sets"]
    for name, src in sets.items():
        rows = PromptSource(**src).load(name)
        assert not {r.prompt_text for r in rows} & {r.prompt_text for r in probe}, name
    math = PromptSource(**sets["math"]).load("math")
    assert len(math) == 73 and all(synthetic.is_eval(r.prompt_text) for r in math)  # every eval question
