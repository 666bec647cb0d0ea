"""The RL prompt row: schema, validation (`parse_row`) and the one domain registry.

Schema (DESIGN.md)::

    {"id": str               (optional in a file: the row index),
     "domain": "math"|"science"|"code"|"logic"|"instruction"|"general"  (or the source's default),
     "prompt": str | [{"role", "content"}...]  (TRL / verl message lists) | "messages": [...],
     "answer": str            (math / science),
     "tests": {...}           (code),
     "instructions": [{"id", "kwargs"}]   (instruction),
     "reward": str            (optional: explicit reward name, overrides the domain's default),
     "meta": {...}}           (logic: the verifier's data, docs/rewards.md)

`map_fields` renames a peer's columns first (`{"answer": "solution"}`; dotted paths reach nested
objects: `{"answer": "reward_model.ground_truth"}`). A row with an unknown domain or a missing field
for its domain is an error that names the file and the row (`PromptRowError`). Loading files of rows
is `data/prompts.py` (docs/data_formats.md); scoring them is `rewards/`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DOMAINS = ("math", "science", "code", "logic", "instruction", "general")
# Which field each domain's verifier needs.
# Logic rows are scored from `meta` (rewards/logic.py: task, numbers/puzzle/grid or rg_entry); `answer` is unused.
REQUIRED_FIELD = {"math": "answer", "science": "answer", "logic": "meta", "code": "tests",
                  "instruction": "instructions", "general": None}
ROLES = ("system", "user", "assistant", "tool")
FIELDS = ("id", "domain", "prompt", "messages", "answer", "tests", "instructions", "reward", "meta")
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


def _message_list(msgs: Any, key: str, fail) -> list[dict[str, str]]:
    if not isinstance(msgs, (list, tuple)) or not msgs:
        raise fail(f"'{key}' must be a non-empty list of {{role, content}}")
    messages = []
    for j, m in enumerate(msgs):
        if not isinstance(m, Mapping) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise fail(f"{key}[{j}] must be {{'role': one of {ROLES}, 'content': str}}, got {m!r}")
        messages.append({"role": m["role"], "content": m["content"]})
    return messages


def _messages(raw: Mapping[str, Any], fail) -> list[dict[str, str]]:
    if raw.get("messages") is not None:
        return _message_list(raw["messages"], "messages", fail)
    prompt = raw.get("prompt")
    if isinstance(prompt, (list, tuple)):  # TRL / verl conversational prompt
        return _message_list(prompt, "prompt", fail)
    if isinstance(prompt, str) and prompt.strip():
        return [{"role": "user", "content": prompt}]
    raise fail("needs a non-empty 'prompt' (a string or a list of {role, content}) or a 'messages' list")


def _decoded(value: Any, key: str, fail) -> Any:
    """A field given as a JSON string (Parquet writers flatten objects and lists) decoded; others as they are."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise fail(f"'{key}' is not valid JSON: {e}") from None


def _json_object(value: Any, key: str, fail) -> Mapping[str, Any] | None:
    """An object field, given as an object or as a JSON string."""
    if value is None or isinstance(value, Mapping):
        return value
    value = _decoded(value, key, fail)
    if not isinstance(value, Mapping):
        raise fail(f"'{key}' must be an object, got {type(value).__name__}")
    return value


def check_fields(fields: Mapping[str, str] | None, where: str) -> dict[str, str]:
    """Validate a column mapping {schema field: the file's column (dotted for nested)}; `where` names the knob."""
    fields = dict(fields or {})
    for ours, theirs in fields.items():
        if ours not in FIELDS:
            raise ValueError(f"{where}: {ours!r} is not a prompt row field; map onto one of {', '.join(FIELDS)} "
                             "(e.g. fields: {answer: solution})")
        if not isinstance(theirs, str) or not theirs:
            raise ValueError(f"{where}: fields[{ours!r}] must name a column of the file, got {theirs!r}")
    return fields


def map_fields(raw: Any, fields: Mapping[str, str]) -> Any:
    """`raw` with each schema field read from its mapped column (absent column = absent field)."""
    if not fields or not isinstance(raw, Mapping):
        return raw
    out = dict(raw)
    for ours, theirs in fields.items():
        value: Any = raw
        for part in theirs.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        out[ours] = value
    return out


def _instructions(instructions: Any, fail) -> tuple[dict[str, Any], ...] | None:
    if instructions is None:
        return None
    instructions = _decoded(instructions, "instructions", fail)
    if not isinstance(instructions, (list, tuple)) or not all(
        isinstance(i, Mapping) and isinstance(i.get("id"), str) for i in instructions
    ):
        raise fail("'instructions' must be a list of {'id': str, 'kwargs': {...}}")
    instructions = tuple({"id": i["id"], "kwargs": dict(i.get("kwargs") or {})} for i in instructions)
    return instructions


def parse_row(raw: Mapping[str, Any], where: str, *, default_id: str | None = None,
              default_domain: str | None = None, fields: Mapping[str, str] | None = None) -> PromptRow:
    """Validate one raw row. `where` names it in errors, e.g. "data/math.jsonl row 12".

    Args:
        default_id: the id of a row without one (load_prompts: the row index); None = `id` required.
        default_domain: the domain of a row without one (a prompt source's `domain`); None = required.
        fields: column mapping applied first (`map_fields`), e.g. {"answer": "solution"}.
    """

    def fail(msg: str) -> PromptRowError:
        return PromptRowError(f"{where}: {msg}")

    raw = map_fields(raw, fields or {})
    if not isinstance(raw, Mapping):
        raise fail(f"expected an object, got {type(raw).__name__}")
    domain = raw.get("domain")
    domain = default_domain if domain is None or domain == "" else domain
    if domain not in DOMAINS:
        hint = "" if default_domain else " (or give the prompt source a default `domain`)"
        raise fail(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}{hint}")
    row_id = raw.get("id")
    row_id = default_id if row_id is None or str(row_id) == "" else row_id
    if row_id is None:
        raise fail("missing 'id'")
    messages = _messages(raw, fail)
    need = REQUIRED_FIELD[domain]
    if need is not None and raw.get(need) in (None, "", [], {}):
        mapped = f" (read from the column {fields[need]!r} by the source's fields)" if fields and need in fields else ""
        raise fail(f"domain {domain!r} needs the field {need!r}{mapped}")
    answer = raw.get("answer")
    if answer is not None and not isinstance(answer, str):
        answer = str(answer)
    tests = _json_object(raw.get("tests"), "tests", fail)
    instructions = _instructions(raw.get("instructions"), fail)
    meta = _json_object(raw.get("meta") or {}, "meta", fail)
    reward = raw.get("reward")
    if reward is not None and not isinstance(reward, str):
        raise fail(f"'reward' must be a reward name (string), got {reward!r}")
    return PromptRow(id=str(row_id), domain=domain, messages=tuple(messages), answer=answer,
                     tests=dict(tests) if tests is not None else None, instructions=instructions,
                     reward=reward if reward else None, meta=dict(meta))
