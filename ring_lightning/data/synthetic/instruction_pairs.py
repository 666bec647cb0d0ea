"""Instruction prompts with two constraints from binary families; no fixed style beats chance.

Ring-lite's general RL (arXiv 2506.14731, §3.3) rewards instruction following with rules. An earlier
one-constraint task was gamed by a style (short, lowercase, comma-free text met most prompts). Here:
* four families, two opposite sides each, and every answer takes one side of every family: ``case``
  (capitals | lowercase), ``length`` (at least | fewer than `LENGTH_WORDS` words), ``keyword``
  (includes | leaves out `KEYWORD`), ``ending`` (one of two `END_PHRASES`). A fixed style meets half
  of each family's prompts, as chance does: only reading the prompt raises the reward.
* a prompt asks two families; held-out prompts use `HELDOUT_PAIRS`, which no training prompt combines.
* SFT: the ``<think>`` trace restates the asked constraints (`pair_plan`; without it a 1M model met
  the end phrase and keyword at chance after SFT and RL); the answer follows each at `FOLLOW_RATE`,
  else a random side; an unasked family takes its `DEFAULT` side (lowercase, no keyword: with 50/50
  there, RL drifted unasked answers +23 points to lowercase, which costs half the tokens of capitals)
  or, for length and ending, a random one. That is the shortcut control's base rate.
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
LENGTH_WORDS = 10  # "at least 10" | "fewer than 10": every answer meets exactly one. A short answer is one
                   # clause (<= 9 words with keyword and end phrase), a long one three (>= 14; <= 96 tokens in capitals)
SHORT_CLAUSES, LONG_CLAUSES = 1, 3
FOLLOW_RATE = 0.8  # measured after the quickstart's SFT (earlier task): at 0.5 the model followed "capital
                   # letters" 31% vs 25% unasked (it barely read the prompt); at 0.8, 76% vs 40%
KEYWORD, OTHER_WORD = "silver", "glass"  # an answer names one of the two (the other when told not to)
# Two end phrases of the same token count in either case (5 lowercase, 9 in capitals; "Thank you." / "See you."
# are not, and RL moved unasked answers +21 points to the cheaper one). These still drift where unasked (±19
# points in the README's run): the policy barely reads the end phrase, so its unasked choice is free.
END_PHRASES = ("See you.", "Bye now.")
DEFAULT: dict[str, Any] = {"case": "lower", "keyword": "exclude"}  # an unasked family's side; others: random
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


def pair_prompt(rng: random.Random, pairs: tuple[tuple[str, str], ...] = TRAIN_PAIRS
                ) -> tuple[str, list[dict[str, Any]], str, dict[str, Any]]:
    """(prompt, instructions, topic, wants): a prompt with the two constraints of a pair from `pairs`;
    `wants` maps each asked family to its wanted side (SIDES)."""
    topic = rng.choice(TOPICS)
    families = list(rng.choice(pairs))
    rng.shuffle(families)
    wants = {f: rng.choice(SIDES[f]) for f in families}
    parts = [_constraint(f, wants[f]) for f in families]
    question = f"Write about {topic}. " + " ".join(p[0] for p in parts)
    return question, [p[1] for p in parts], topic, wants


def pair_plan(wants: dict[str, Any]) -> tuple[str, ...]:
    """The SFT trace: one line per asked constraint, in the prompt's order (module docstring)."""
    lines = {"case": lambda v: "Capital letters." if v == "upper" else "Lowercase letters.",
             "length": lambda v: f"{'At least' if v == 'at least' else 'Fewer than'} {LENGTH_WORDS} words.",
             "keyword": lambda v: f"{'Include' if v == 'include' else 'No'} {KEYWORD}.",
             "ending": lambda v: f"End with {v}"}
    return tuple(lines[f](v) for f, v in wants.items())


def _text(rng: random.Random, topic: str, side: dict[str, Any]) -> str:
    clauses = LONG_CLAUSES if side["length"] == "at least" else SHORT_CLAUSES
    parts = [f"{topic} is {rng.choice(_ADJECTIVES)}"]
    parts += [rng.choice(_CLAUSES).format(adj=rng.choice(_ADJECTIVES)) for _ in range(clauses - 1)]
    word = KEYWORD if side["keyword"] == "include" else OTHER_WORD
    at = rng.randrange(len(parts))  # the word replaces a clause: the length class stays the same
    parts[at] = f"{topic} is like {word}" if at == 0 else f"it is like {word}"
    text = (", and " if rng.random() < 0.7 else " and ").join(parts) + ". " + side["ending"]
    return text.upper() if side["case"] == "upper" else text.lower()


def pair_answer(rng: random.Random, topic: str, wants: dict[str, Any], follow_rate: float = FOLLOW_RATE) -> str:
    """An SFT answer with one side of every family: an asked family's wanted side with probability
    `follow_rate`, else a side at random; an unasked family its DEFAULT or a random side. Every side is
    checked with the reward's own checker."""
    side = {f: (wants[f] if rng.random() < follow_rate else rng.choice(SIDES[f])) if f in wants
            else DEFAULT.get(f) or rng.choice(SIDES[f]) for f in FAMILIES}
    text = _text(rng, topic, side)
    broken = [f for f in FAMILIES if not _holds(f, side[f], text)]
    if broken:  # a topic or clause that breaks a side (e.g. one that names a keyword) would land here
        raise RuntimeError(f"pair_answer: the answer {text!r} breaks its sides {side} of {broken}")
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
