"""The RL prompt row: schema, validation (`parse_row`) and the one domain registry.

Schema (DESIGN.md)::

    {"id": str, "domain": "math"|"science"|"code"|"logic"|"instruction"|"general",
     "prompt": str | "messages": [{"role", "content"}...],
     "answer": str            (math / science / logic),
     "tests": {...}           (code),
     "instructions": [{"id", "kwargs"}]   (instruction),
     "reward": str            (optional: explicit reward name, overrides the domain's default),
     "meta": {...}}

A row with an unknown domain or a missing field for its domain is an error that names the file and
the row (`PromptRowError`). Loading files of rows is `data/prompts.py`; scoring them is `rewards/`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DOMAINS = ("math", "science", "code", "logic", "instruction", "general")
# Which field each domain's verifier needs.
REQUIRED_FIELD = {"math": "answer", "science": "answer", "logic": "answer", "code": "tests",
                  "instruction": "instructions", "general": None}
ROLES = ("system", "user", "assistant", "tool")
BAD_ROW_HINT = ("fix or remove the row, or drop malformed rows with `python -m ring_lightning prepare` "
                "(on_malformed: drop)")


class PromptRowError(ValueError):
    """A prompt row does not follow the schema. The message names the source and the row."""


@dataclass(frozen=True)
class PromptRow:
    """One validated RL prompt.

    Attributes:
        id: unique id within its source.
        domain: one of DOMAINS; picks the reward unless `reward` is set.
        messages: the conversation to continue (a plain `prompt` becomes one user message).
        answer: gold answer (math / science / logic).
        tests: code test specification (code).
        instructions: IFEval-style constraints [{"id", "kwargs"}] (instruction).
        reward: explicit reward name overriding the domain default.
        meta: free-form annotations (source, difficulty, task-specific verifier data, ...).
    """

    id: str
    domain: str
    messages: tuple[dict[str, str], ...]
    answer: str | None = None
    tests: dict[str, Any] | None = None
    instructions: tuple[dict[str, Any], ...] | None = None
    reward: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_text(self) -> str:
        """The last user message (what a verifier or reward model sees as the question)."""
        users = [m["content"] for m in self.messages if m["role"] == "user"]
        return users[-1] if users else self.messages[-1]["content"]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "domain": self.domain, "messages": [dict(m) for m in self.messages]}
        for key in ("answer", "tests", "reward"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        if self.instructions is not None:
            d["instructions"] = [dict(i) for i in self.instructions]
        d["meta"] = dict(self.meta)
        return d


def _messages(raw: Mapping[str, Any], fail) -> list[dict[str, str]]:
    if raw.get("messages") is not None:
        msgs = raw["messages"]
        if not isinstance(msgs, (list, tuple)) or not msgs:
            raise fail("'messages' must be a non-empty list of {role, content}")
        messages = []
        for j, m in enumerate(msgs):
            if not isinstance(m, Mapping) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise fail(f"messages[{j}] must be {{'role': one of {ROLES}, 'content': str}}, got {m!r}")
            messages.append({"role": m["role"], "content": m["content"]})
    elif isinstance(raw.get("prompt"), str) and raw["prompt"].strip():
        messages = [{"role": "user", "content": raw["prompt"]}]
    else:
        raise fail("needs a non-empty 'prompt' string or a 'messages' list")
    return messages


def _instructions(instructions: Any, fail) -> tuple[dict[str, Any], ...] | None:
    if instructions is None:
        return None
    if isinstance(instructions, str):
        try:
            instructions = json.loads(instructions)
        except json.JSONDecodeError as e:
            raise fail(f"'instructions' is not valid JSON: {e}") from None
    if not isinstance(instructions, (list, tuple)) or not all(
        isinstance(i, Mapping) and isinstance(i.get("id"), str) for i in instructions
    ):
        raise fail("'instructions' must be a list of {'id': str, 'kwargs': {...}}")
    instructions = tuple({"id": i["id"], "kwargs": dict(i.get("kwargs") or {})} for i in instructions)
    return instructions


def parse_row(raw: Mapping[str, Any], where: str) -> PromptRow:
    """Validate one raw row. `where` names it in errors, e.g. "data/math.jsonl row 12"."""

    def fail(msg: str) -> PromptRowError:
        return PromptRowError(f"{where}: {msg}")

    if not isinstance(raw, Mapping):
        raise fail(f"expected an object, got {type(raw).__name__}")
    domain = raw.get("domain")
    if domain not in DOMAINS:
        raise fail(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    row_id = raw.get("id")
    if row_id is None or str(row_id) == "":
        raise fail("missing 'id'")
    messages = _messages(raw, fail)
    need = REQUIRED_FIELD[domain]
    if need is not None and raw.get(need) in (None, "", [], {}):
        raise fail(f"domain {domain!r} needs the field {need!r}")
    answer = raw.get("answer")
    if answer is not None and not isinstance(answer, str):
        answer = str(answer)
    tests = raw.get("tests")
    if tests is not None and not isinstance(tests, Mapping):
        if isinstance(tests, str):
            try:
                tests = json.loads(tests)
            except json.JSONDecodeError as e:
                raise fail(f"'tests' is not valid JSON: {e}") from None
        if not isinstance(tests, Mapping):
            raise fail("'tests' must be an object")
    instructions = _instructions(raw.get("instructions"), fail)
    meta = raw.get("meta") or {}
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError as e:
            raise fail(f"'meta' is not valid JSON: {e}") from None
    if not isinstance(meta, Mapping):
        raise fail(f"'meta' must be an object, got {type(meta).__name__}")
    reward = raw.get("reward")
    if reward is not None and not isinstance(reward, str):
        raise fail(f"'reward' must be a reward name (string), got {reward!r}")
    return PromptRow(id=str(row_id), domain=domain, messages=tuple(messages), answer=answer,
                     tests=dict(tests) if tests is not None else None, instructions=instructions,
                     reward=reward if reward else None, meta=dict(meta))
