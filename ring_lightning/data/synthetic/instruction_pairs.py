"""Instruction prompts with two constraints from families that pull in opposite directions.

Ring-lite's general RL stage (arXiv 2506.14731, §3.3) rewards instruction following with rules. A
one-constraint task of "lowercase / word limit / no comma" was gamed by a style (short, lowercase,
comma-free text satisfied all three); here no single style satisfies most prompts:

* families: ``case`` (all capitals | all lowercase), ``length`` (at least N words | fewer than N),
  ``keyword`` (include a given word), ``ending`` (end with a given phrase). Each prompt asks for
  two constraints of two different families, so every style that helps one prompt hurts another.
* combinations: training prompts use the pairs in `TRAIN_PAIRS`; held-out prompts use
  `HELDOUT_PAIRS`, which no training prompt combines (each family alone is trained).
* SFT answers (`pair_answer`) follow each constraint with probability `FOLLOW_RATE` (0.8) and otherwise
  draw that property at random, so the SFT policy reads the instruction a little and RL can raise
  it; on prompts that do not ask, the properties keep their random base rates (the shortcut control).
* wording: a keyword or end phrase stands in the prompt unquoted, after a space, so its tokens are
  the ones the answer must repeat (the shipped tokenizer splits "'silver" and " silver" differently).
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
AT_LEAST = (13, 14, 15)   # an answer of 4 clauses (~20 words) complies; 1 clause (~5) never does
FEWER_THAN = (9, 10)      # 1 clause + a two-word end phrase (<= 8 words) complies; 2 clauses (~10) sometimes
FOLLOW_RATE = 0.8  # measured after the quickstart's SFT: at 0.5 the model followed "capital letters" 31% vs
                   # 25% unasked (it barely read the prompt); at 0.8, 76% vs 40%
RANDOM_CASE = ("sentence", "sentence", "lower", "upper")  # an unasked case: 25% lower, 25% upper
RANDOM_EXTRA = 0.25       # an unasked keyword / end phrase appears this often
# Few keywords and end phrases, none in a topic or the answers' other words: which one the prompt names is
# a small choice a 1M-parameter model can learn to read within the quickstart's SFT (measured: copying
# one of 20 keywords / 4 phrases stayed at ~3% compliance after 1000 SFT steps).
KEYWORDS = ("silver", "salt", "glass", "wheel")
END_PHRASES = ("Thank you.", "See you.")


def _constraint(rng: random.Random, family: str, topic: str) -> tuple[str, dict[str, Any], Any]:
    """(sentence of the prompt, IFEval instruction, wanted value) for one family."""
    if family == "case":
        if rng.random() < 0.5:
            return ("Your entire response must be in capital letters.",
                    {"id": "change_case:english_capital", "kwargs": {}}, "upper")
        return ("Your entire response must be in lowercase letters.",
                {"id": "change_case:english_lowercase", "kwargs": {}}, "lower")
    if family == "length":
        if rng.random() < 0.5:
            n = rng.choice(AT_LEAST)
            return (f"Use at least {n} words.", {"id": "length_constraints:number_words",
                                                 "kwargs": {"relation": "at least", "num_words": n}}, ("at least", n))
        n = rng.choice(FEWER_THAN)
        return (f"Use fewer than {n} words.", {"id": "length_constraints:number_words",
                                               "kwargs": {"relation": "less than", "num_words": n}}, ("less than", n))
    if family == "keyword":
        word = rng.choice(KEYWORDS)
        return f"Include the word {word}.", {"id": "keywords:existence", "kwargs": {"keywords": [word]}}, word
    phrase = rng.choice(END_PHRASES)
    return (f"End your response with the words {phrase}",
            {"id": "startend:end_checker", "kwargs": {"end_phrase": phrase}}, phrase)


def pair_prompt(rng: random.Random, pairs: tuple[tuple[str, str], ...] = TRAIN_PAIRS
                ) -> tuple[str, list[dict[str, Any]], str, dict[str, Any]]:
    """(prompt, instructions, topic, wants): a prompt with the two constraints of a pair from `pairs`;
    `wants` maps each asked family to its wanted value."""
    topic = rng.choice(TOPICS)
    families = list(rng.choice(pairs))
    rng.shuffle(families)
    parts = [_constraint(rng, f, topic) for f in families]
    question = f"Write about {topic}. " + " ".join(p[0] for p in parts)
    return question, [p[1] for p in parts], topic, {f: p[2] for f, p in zip(families, parts)}


def _text(rng: random.Random, topic: str, clauses: int, keyword: str | None, ending: str | None, case: str) -> str:
    parts = [f"{topic} is {rng.choice(_ADJECTIVES)}"]
    parts += [rng.choice(_CLAUSES).format(adj=rng.choice(_ADJECTIVES)) for _ in range(clauses - 1)]
    if keyword is not None:  # replaces a clause: the length class stays what `clauses` says
        at = rng.randrange(len(parts))
        parts[at] = f"{topic} is like {keyword}" if at == 0 else f"it is like {keyword}"
    text = (", and " if rng.random() < 0.7 else " and ").join(parts) + "."
    if ending is not None:
        text += " " + ending
    if case == "upper":
        return text.upper()
    if case == "lower":
        return text.lower()
    return text[0].upper() + text[1:]


def pair_answer(rng: random.Random, topic: str, wants: dict[str, Any], follow_rate: float = FOLLOW_RATE) -> str:
    """An SFT answer that follows each asked constraint with probability `follow_rate` (module docstring);
    a followed constraint is checked with the reward's own checker."""
    follow = {f: rng.random() < follow_rate for f in wants}
    for _ in range(100):
        case = wants["case"] if follow.get("case") else rng.choice(RANDOM_CASE)
        if follow.get("length"):
            clauses = 4 if wants["length"][0] == "at least" else 1
        else:
            clauses = rng.randint(1, 4)
        keyword = wants["keyword"] if follow.get("keyword") else (
            rng.choice(KEYWORDS) if rng.random() < RANDOM_EXTRA else None)
        ending = wants["ending"] if follow.get("ending") else (
            rng.choice(END_PHRASES) if rng.random() < RANDOM_EXTRA else None)
        text = _text(rng, topic, clauses, keyword, ending, case)
        if all(_holds(f, wants[f], text) for f in wants if follow[f]):
            return text
    raise RuntimeError(f"pair_answer: no answer about {topic!r} follows {wants} in 100 draws")


def _holds(family: str, want: Any, text: str) -> bool:
    if family == "case":
        return CHECKS["change_case:english_capital" if want == "upper" else "change_case:english_lowercase"].fn(text)
    if family == "length":
        return CHECKS["length_constraints:number_words"].fn(text, num_words=want[1], relation=want[0])
    if family == "keyword":
        return CHECKS["keywords:existence"].fn(text, keywords=[want])
    return CHECKS["startend:end_checker"].fn(text, end_phrase=want)
