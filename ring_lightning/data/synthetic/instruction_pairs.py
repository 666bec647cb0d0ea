"""Instruction prompts with two constraints from binary families; no fixed style beats chance.

Ring-lite's general RL (arXiv 2506.14731, §3.3) rewards instruction following with rules. An earlier
one-constraint task was gamed by a style (short, lowercase, comma-free text met most prompts). Here:
* four families, two opposite sides each, and every answer takes one side of every family: ``case``
  (capitals | lowercase), ``length`` (at least | fewer than `LENGTH_WORDS` words), ``keyword``
  (names `KEYWORD` | `OTHER_WORD`, same token count), ``ending`` (one of two `END_PHRASES`). A fixed
  style meets half of each family's prompts, as chance does: only reading the prompt raises the reward.
* a prompt asks two families; held-out prompts use `HELDOUT_PAIRS`, which no training prompt combines.
  A *control prompt* (`NO_CONSTRAINT`, one of `CONTROL_OPENERS`) asks nothing: SFT sees its train
  side, RL never; its held-out side is the shortcut control group (rl_tasks split "control").
* SFT trace (`pair_plan`): one line per family in `PLAN_ORDER` naming the side the answer takes, and
  the answer takes exactly those sides. The teacher reads an asked family right at `FOLLOW_RATE`, else
  picks a side at random; an unasked family always takes its `DEFAULT`. Measured on the quickstart
  (2026-12-07): restating only the asked constraints, with 50/50 or partial defaults elsewhere, let RL
  move unasked properties by up to 22 points (free drift, sharpening of half-learned defaults).
* answers are the same few clauses about "it" (no topic): the text carries no constraint, and a 1M
  model that garbles topics, in capitals letter by letter, made the case controls move as RL cleaned
  the garble up.
"""

from __future__ import annotations

import random
from itertools import combinations
from typing import Any

from ring_lightning.data.synthetic.instruction import TOPICS, _ADJECTIVES, _CLAUSES
from ring_lightning.rewards.instruction_checks import CHECKS

FAMILIES = ("case", "ending", "keyword", "length")
HELDOUT_PAIRS = (("case", "ending"), ("keyword", "length"))  # sorted family names
ALL_PAIRS = tuple(combinations(FAMILIES, 2))
TRAIN_PAIRS = tuple(p for p in ALL_PAIRS if p not in HELDOUT_PAIRS)
NO_CONSTRAINT: tuple[str, ...] = ()  # a control prompt: asks nothing (the shortcut control group)
SFT_PAIRS = (*ALL_PAIRS, NO_CONSTRAINT)  # SFT draws each equally: 1 prompt in 7 is a control prompt
CONTROL_OPENERS = ("Write about {topic}.", "Tell me about {topic}.", "Describe {topic}.",
                   "Say something about {topic}.", "Share a thought about {topic}.",
                   "Write a line about {topic}.")  # 240 control prompts, split by question text (76 eval)
LENGTH_WORDS = 10  # "at least 10" | "fewer than 10": every answer meets exactly one. A short answer is one
                   # clause (<= 9 words with keyword and end phrase), a long one three (>= 14; <= 96 tokens in capitals)
SHORT_CLAUSES, LONG_CLAUSES = 1, 3
FOLLOW_RATE = 0.8  # measured after the quickstart's SFT (earlier task): at 0.5 the model followed "capital
                   # letters" 31% vs 25% unasked (it barely read the prompt); at 0.8, 76% vs 40%
KEYWORD, OTHER_WORD = "silver", "copper"  # an answer names one of the two (the other when told not to);
                                          # 10 tokens either way in "it is like ___.", 18 in capitals
# Two end phrases of the same token count in either case (5 lowercase, 9 in capitals; "Thank you." / "See you."
# are not, and RL moved unasked answers +21 points to the cheaper one).
END_PHRASES = ("See you.", "Bye now.")
DEFAULT: dict[str, Any] = {"case": "lower", "length": "less than", "keyword": "exclude", "ending": END_PHRASES[0]}
PLAN_ORDER = ("case", "length", "keyword", "ending")  # the trace's slots: the order an answer is written in
SIDES: dict[str, tuple[Any, ...]] = {"case": ("upper", "lower"), "length": ("at least", "less than"),
                                     "keyword": ("include", "exclude"), "ending": END_PHRASES}


def _constraint(family: str, side: Any) -> tuple[str, dict[str, Any]]:
    """(sentence of the prompt, IFEval instruction) asking for one side of a family."""
    if family == "case":
        if side == "upper":
            return "Your entire response must be in capital letters.", {"id": "change_case:english_capital", "kwargs": {}}
        return "Your entire response must be in lowercase letters.", {"id": "change_case:english_lowercase", "kwargs": {}}
    if family == "length":
        words = "at least" if side == "at least" else "fewer than"
        return (f"Use {words} {LENGTH_WORDS} words.", {"id": "length_constraints:number_words",
                                                       "kwargs": {"relation": side, "num_words": LENGTH_WORDS}})
    if family == "keyword":
        if side == "include":
            return f"Include the word {KEYWORD}.", {"id": "keywords:existence", "kwargs": {"keywords": [KEYWORD]}}
        return (f"Do not include the word {KEYWORD}.",
                {"id": "keywords:forbidden_words", "kwargs": {"forbidden_words": [KEYWORD]}})
    return f"End your response with the words {side}", {"id": "startend:end_checker", "kwargs": {"end_phrase": side}}


def pair_prompt(rng: random.Random, pairs: tuple[tuple[str, ...], ...] = TRAIN_PAIRS
                ) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    """(prompt, instructions, wants): a prompt about one of TOPICS with the constraints of a pair from `pairs`
    (none for NO_CONSTRAINT: a control prompt, one of CONTROL_OPENERS); `wants` maps each asked family
    to its wanted side (SIDES)."""
    topic = rng.choice(TOPICS)
    families = list(rng.choice(pairs))
    if not families:
        return rng.choice(CONTROL_OPENERS).format(topic=topic), [], {}
    rng.shuffle(families)
    wants = {f: rng.choice(SIDES[f]) for f in families}
    parts = [_constraint(f, wants[f]) for f in families]
    question = f"Write about {topic}. " + " ".join(p[0] for p in parts)
    return question, [p[1] for p in parts], wants


def pair_sides(rng: random.Random, wants: dict[str, Any], follow_rate: float = FOLLOW_RATE) -> dict[str, Any]:
    """The side the SFT teacher takes of every family: an asked family's wanted side with probability
    `follow_rate`, else a side at random (a misread prompt); an unasked family its DEFAULT."""
    return {f: (wants[f] if rng.random() < follow_rate else rng.choice(SIDES[f])) if f in wants else DEFAULT[f]
            for f in PLAN_ORDER}


def pair_plan(sides: dict[str, Any]) -> tuple[str, ...]:
    """The SFT trace: one line per family in PLAN_ORDER, naming the side the answer takes."""
    lines = {"case": lambda v: "Capital letters." if v == "upper" else "Lowercase letters.",
             "length": lambda v: f"{'At least' if v == 'at least' else 'Fewer than'} {LENGTH_WORDS} words.",
             "keyword": lambda v: f"Like {KEYWORD if v == 'include' else OTHER_WORD}.",
             "ending": lambda v: f"End with {v}"}
    return tuple(lines[f](sides[f]) for f in PLAN_ORDER)


def _text(rng: random.Random, side: dict[str, Any]) -> str:
    clauses = LONG_CLAUSES if side["length"] == "at least" else SHORT_CLAUSES
    parts = [f"it is {rng.choice(_ADJECTIVES)}"]
    parts += [rng.choice(_CLAUSES).format(adj=rng.choice(_ADJECTIVES)) for _ in range(clauses - 1)]
    word = KEYWORD if side["keyword"] == "include" else OTHER_WORD
    at = rng.randrange(len(parts))  # the word replaces a clause: the length class stays the same
    parts[at] = f"it is like {word}"
    text = (", and " if rng.random() < 0.7 else " and ").join(parts) + ". " + side["ending"]
    return text.upper() if side["case"] == "upper" else text.lower()


def pair_answer(rng: random.Random, sides: dict[str, Any]) -> str:
    """An SFT answer taking exactly `sides` (`pair_sides`), each checked with the reward's own checker."""
    text = _text(rng, sides)
    broken = [f for f in FAMILIES if not _holds(f, sides[f], text)]
    if broken:  # a clause that breaks a side (e.g. one that names a keyword) would land here
        raise RuntimeError(f"pair_answer: the answer {text!r} breaks its sides {sides} of {broken}")
    return text


def _holds(family: str, want: Any, text: str) -> bool:
    if family == "case":
        return CHECKS["change_case:english_capital" if want == "upper" else "change_case:english_lowercase"].fn(text)
    if family == "length":
        return CHECKS["length_constraints:number_words"].fn(text, num_words=LENGTH_WORDS, relation=want)
    if family == "keyword":
        if want == "include":
            return CHECKS["keywords:existence"].fn(text, keywords=[KEYWORD])
        return CHECKS["keywords:forbidden_words"].fn(text, forbidden_words=[KEYWORD])
    return CHECKS["startend:end_checker"].fn(text, end_phrase=want)
