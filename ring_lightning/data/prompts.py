"""RL prompt rows: schema, validation and loading (JSONL / Parquet / local HF datasets directory).

Schema (DESIGN.md)::

    {"id": str, "domain": "math"|"science"|"code"|"logic"|"instruction"|"general",
     "prompt": str | "messages": [{"role", "content"}...],
     "answer": str            (math / science / logic),
     "tests": {...}           (code),
     "instructions": [{"id", "kwargs"}]   (instruction),
     "reward": str            (optional: explicit reward name, overrides the domain's default),
     "meta": {...}}

A row with an unknown domain or a missing field for its domain is an error at load time that names
the file and the row (`PromptRowError`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DOMAINS = ("math", "science", "code", "logic", "instruction", "general")
# Which field each domain's verifier needs.
REQUIRED_FIELD = {"math": "answer", "science": "answer", "logic": "answer", "code": "tests",
                  "instruction": "instructions", "general": None}
ROLES = ("system", "user", "assistant", "tool")


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
    instructions = raw.get("instructions")
    if instructions is not None:
        if isinstance(instructions, str):
            instructions = json.loads(instructions)
        if not isinstance(instructions, (list, tuple)) or not all(
            isinstance(i, Mapping) and isinstance(i.get("id"), str) for i in instructions
        ):
            raise fail("'instructions' must be a list of {'id': str, 'kwargs': {...}}")
        instructions = tuple({"id": i["id"], "kwargs": dict(i.get("kwargs") or {})} for i in instructions)
    meta = raw.get("meta") or {}
    if isinstance(meta, str):
        meta = json.loads(meta)
    reward = raw.get("reward")
    return PromptRow(id=str(row_id), domain=domain, messages=tuple(messages), answer=answer,
                     tests=dict(tests) if tests is not None else None, instructions=instructions,
                     reward=reward if reward else None, meta=dict(meta))


def iter_raw_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (row index, raw dict) from a .jsonl/.json/.parquet file or a local `datasets` directory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompt file not found: {path}")
    if path.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        for i, row in enumerate(ds):
            yield i, row
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        i = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                yield i, row
                i += 1
    elif path.suffix in (".jsonl", ".json"):
        with path.open() as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    yield i, json.loads(line)
                except json.JSONDecodeError as e:
                    raise PromptRowError(f"{path} row {i}: invalid JSON ({e})") from None
    else:
        raise ValueError(f"{path}: unsupported prompt file type {path.suffix!r} (use .jsonl, .parquet or a datasets dir)")


def load_prompts(path: str | Path) -> list[PromptRow]:
    """Load and validate every row of a prompt file; the first bad row raises `PromptRowError`."""
    rows = [parse_row(raw, f"{path} row {i}") for i, raw in iter_raw_rows(path)]
    ids = [r.id for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(x for x in ids if ids.count(x) > 1)
        raise PromptRowError(f"{path}: duplicate id {dup!r}")
    return rows
