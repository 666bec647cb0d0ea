"""Built-in IFEval-style instruction prompts, and SFT answers to them that comply only by chance.

Ring-lite (arXiv 2506.14731, §3.3) runs a second, general RL stage after reasoning RL; among its
data are instruction-following prompts with verifiable constraints. No corpus can be downloaded
here, so this file generates tiny prompts of that shape (IFEval instruction ids, checked by
`rewards/instruction.py`):

* `instruction_prompt(rng, kinds)`: one prompt with one constraint of a kind drawn from `kinds`
  (bullet count, lowercase, keyword, word limit, no comma, end phrase) and its
  ``instructions=[{"id", "kwargs"}]``. `data/synthetic/rl_tasks.py`'s ``instruction`` task draws these.
* `instruction_answer(rng, topic)`: a short answer about the topic for the synthetic SFT data.

Choices and details: docs/design.md#data-synthetic-instruction.
"""

from __future__ import annotations

import random
from typing import Any

TOPICS = ("the sea", "a small robot", "autumn leaves", "a quiet library", "mountain trains", "honey bees",
          "the night sky", "a lost key", "fresh bread", "a rainy city", "an old bridge", "a paper boat",
          "winter mornings", "a busy market", "desert flowers", "a lighthouse", "city pigeons", "a chess game",
          "a first bicycle", "thunderstorms", "a tea kettle", "the moon", "a school garden", "a red kite",
          "river stones", "a night train", "a village bakery", "snowy owls", "a music box", "summer rain",
          "a broken clock", "forest paths", "a harbour at dawn", "a sleepy cat", "wind turbines",
          "a museum hall", "a campfire", "an empty beach", "a map of stars", "a window garden")
KEYWORDS = ("blue", "river", "clock", "garden", "light", "stone", "window", "song", "paper", "silver",
            "bread", "shadow", "green", "bridge", "cloud", "quiet", "morning", "glass", "salt", "wheel")
END_PHRASES = ("Is there anything else?", "That is all.", "The end.", "Thank you.")
INSTRUCTION_KINDS = ("bullets", "lowercase", "keyword", "word_limit", "no_comma", "end_phrase")
# The constraints the quickstart trains and evaluates: each is decided by a few tokens of a short answer.
QUICKSTART_KINDS = ("lowercase", "word_limit", "no_comma")

_ADJECTIVES = ("calm", "bright", "old", "quiet", "warm", "small", "green", "soft", "busy", "cold", "gentle",
               "lovely", "slow", "clear", "still", "kind")
_CLAUSES = ("it feels {adj}", "people like it", "it is {adj} at night", "the air is {adj}", "it makes me smile",
            "children love it", "it looks {adj} today", "we visit it often", "it stays {adj} all day")


def instruction_prompt(rng: random.Random, kinds: tuple[str, ...] = INSTRUCTION_KINDS
                       ) -> tuple[str, list[dict[str, Any]], str]:
    """(prompt, instructions, topic): one prompt with one constraint of a kind drawn from `kinds`."""
    topic = rng.choice(TOPICS)
    kind = INSTRUCTION_KINDS.index(rng.choice(kinds))
    if kind == 0:
        n = rng.randint(2, 5)
        return (f"Write exactly {n} bullet points about {topic}. Use markdown bullets such as '* item'.",
                [{"id": "detectable_format:number_bullet_lists", "kwargs": {"num_bullets": n}}], topic)
    if kind == 1:
        what = rng.choice(("one sentence", "two sentences", "a short note", "a title"))
        return (f"Write {what} about {topic}. Your entire response must be in lowercase letters.",
                [{"id": "change_case:english_lowercase", "kwargs": {}}], topic)
    if kind == 2:
        word = rng.choice(KEYWORDS)
        what = rng.choice(("a short sentence", "one line", "a short description"))
        return (f"Write {what} about {topic} that includes the word '{word}'.",
                [{"id": "keywords:existence", "kwargs": {"keywords": [word]}}], topic)
    if kind == 3:
        n = rng.randint(5, 25)
        return (f"Describe {topic} in fewer than {n} words.",
                [{"id": "length_constraints:number_words", "kwargs": {"relation": "less than", "num_words": n}}],
                topic)
    if kind == 4:
        what = rng.choice(("one sentence", "two sentences", "a short note", "a short answer"))
        return (f"Write {what} about {topic} without using any commas.",
                [{"id": "punctuation:no_comma", "kwargs": {}}], topic)
    phrase = rng.choice(END_PHRASES)
    return (f"Write a short note about {topic}. End your response with the exact phrase '{phrase}'.",
            [{"id": "startend:end_checker", "kwargs": {"end_phrase": phrase}}], topic)


def instruction_answer(rng: random.Random, topic: str) -> str:
    """A 1-4 clause sentence about `topic`; case, commas and length drawn at random (module docstring).

    About 40% are all lowercase, about half contain a comma, and the length is 1-4 clauses
    (about 5, 9, 13 or 17 words), whatever the instruction asked."""
    clauses = [f"{topic} is {rng.choice(_ADJECTIVES)}"]
    for _ in range(rng.randint(0, 3)):
        clauses.append(rng.choice(_CLAUSES).format(adj=rng.choice(_ADJECTIVES)))
    joiner = ", and " if rng.random() < 0.7 else " and "
    text = joiner.join(clauses) + "."
    return text if rng.random() < 0.4 else text[0].upper() + text[1:]
