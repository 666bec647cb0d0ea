"""The prepare pipeline's internal row: one flat, fixed Arrow schema shared by every stage.

Raw prompt rows are heterogeneous (`tests` and `meta` objects have per-row keys, `prompt` vs
`messages`), which Arrow cannot hold in one column type. So every input row is validated with
`prompts.parse_row` (errors name file and row) and flattened: nested objects become JSON strings,
the conversation is always `messages`. Removal is a mark, not a deletion: a row removed by a stage
keeps flowing with `_stage`/`_reason`/`_detail` set, so one final pass (streaming or not) writes the
kept rows, the removed-rows file and the per-stage counts without evaluating any stage twice.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import datasets

from ring_lightning.rows import PromptRow, PromptRowError, parse_row

# Every row in the pipeline has exactly these columns (stages may add temporary ones and drop them).
FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "domain": datasets.Value("string"),
    "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
    "answer": datasets.Value("string"),
    "tests": datasets.Value("string"),          # JSON object or null
    "instructions": datasets.Value("string"),   # JSON list or null
    "reward": datasets.Value("string"),
    "meta": datasets.Value("string"),           # JSON object
    "_where": datasets.Value("string"),         # "<file> row <i>" of the original input row
    "_stage": datasets.Value("string"),         # "" while the row is kept, else the stage that removed it
    "_reason": datasets.Value("string"),        # why it was removed ("" while kept)
    "_detail": datasets.Value("string"),        # JSON object with the evidence ("" while kept)
})
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Removal:
    """A stage's decision to drop a row.

    Attributes:
        reason: short snake_case reason, counted in the summary (e.g. "near_duplicate").
        detail: JSON-serialisable evidence written to the removed-rows file (matched text, n-gram, ...).
    """

    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


def to_internal(raw: Mapping[str, Any], where: str, *, source: str | None, default_source: str,
                id_prefix: str = "", default_domain: str | None = None) -> dict[str, Any]:
    """Validate one raw input row and flatten it into the pipeline schema.

    `meta.source` is set to `source` when given, else kept when present, else `default_source`.
    `id_prefix` is prepended unless the id already starts with it (so re-running is a no-op).
    """
    raw = dict(raw)
    if default_domain is not None and raw.get("domain") in (None, ""):
        raw["domain"] = default_domain
    if id_prefix and raw.get("id") is not None and not str(raw["id"]).startswith(id_prefix):
        raw["id"] = f"{id_prefix}{raw['id']}"
    row = parse_row(raw, where)
    meta = dict(row.meta)
    if source is not None:
        meta["source"] = source
    else:
        meta.setdefault("source", default_source)
    try:
        meta_json = json.dumps(meta, ensure_ascii=False)
        tests_json = json.dumps(row.tests, ensure_ascii=False) if row.tests is not None else None
        instr_json = json.dumps(list(row.instructions), ensure_ascii=False) if row.instructions is not None else None
    except (TypeError, ValueError) as e:
        raise PromptRowError(f"{where}: a nested field is not JSON-serialisable ({e}); "
                             "store plain JSON values") from None
    return {"id": row.id, "domain": row.domain, "messages": [dict(m) for m in row.messages],
            "answer": row.answer, "tests": tests_json, "instructions": instr_json, "reward": row.reward,
            "meta": meta_json, "_where": where, "_stage": "", "_reason": "", "_detail": ""}


def to_prompt_row(flat: Mapping[str, Any]) -> PromptRow:
    """The validated `PromptRow` of an internal row (nested JSON strings are decoded by parse_row)."""
    raw = {k: flat[k] for k in ("id", "domain", "messages", "answer", "tests", "instructions", "reward", "meta")}
    return parse_row(raw, flat["_where"])


def output_dict(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The RL prompt-schema dict written for a kept row (`PromptRow.to_dict`)."""
    return to_prompt_row(flat).to_dict()


def user_text(flat: Mapping[str, Any]) -> str:
    """The text a problem is compared by (dedup, decontamination): its user turns joined by newlines."""
    users = [m["content"] for m in flat["messages"] if m["role"] == "user"]
    return "\n".join(users) if users else flat["messages"][-1]["content"]


def words(text: str) -> list[str]:
    """Lower-cased word tokens (`\\w+`): punctuation, LaTeX delimiters and spacing are ignored."""
    return _WORD.findall(text.lower())


def get_meta(flat: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(flat["meta"]) if flat["meta"] else {}


def set_meta(flat: dict[str, Any], meta: Mapping[str, Any]) -> None:
    flat["meta"] = json.dumps(dict(meta), ensure_ascii=False)


def mark(flat: dict[str, Any], stage: str, removal: Removal) -> None:
    """Mark `flat` as removed by `stage`."""
    flat["_stage"] = stage
    flat["_reason"] = removal.reason
    flat["_detail"] = json.dumps(removal.detail, ensure_ascii=False, default=str)


def is_kept(flat: Mapping[str, Any]) -> bool:
    return flat["_stage"] == ""


def unbatch(batch: Mapping[str, list]) -> list[dict[str, Any]]:
    keys = list(batch)
    return [dict(zip(keys, vals)) for vals in zip(*(batch[k] for k in keys))]


def rebatch(rows: list[dict[str, Any]], keys: list[str]) -> dict[str, list]:
    return {k: [r[k] for r in rows] for k in keys}


class RowMarker:
    """A batched `datasets.map` function applying `check(row)` to every still-kept row.

    `check` may edit the row in place (normalisation, annotations) and returns a `Removal` to drop
    it, or None to keep it. Picklable when `check` is (needed for `num_proc` > 1). With `columns`,
    the map passes only those columns (`input_columns`) and `check` sees a row holding just them:
    the other columns then stay in Arrow, which saves converting them to Python and back.
    """

    def __init__(self, stage: str, check: Callable[[dict[str, Any]], Removal | None],
                 columns: tuple[str, ...] | None = None):
        self.stage = stage
        self.check = check
        self.columns = columns

    def __call__(self, *args) -> dict[str, list]:
        batch = dict(zip(self.columns, args)) if self.columns else args[0]
        rows = unbatch(batch)
        for row in rows:
            if is_kept(row):
                removal = self.check(row)
                if removal is not None:
                    mark(row, self.stage, removal)
        return rebatch(rows, list(batch))


MARK_COLUMNS = ("_stage", "_reason", "_detail")


@dataclass(frozen=True)
class StageRunner:
    """How stages map over the rows: the same call works on a `Dataset` and an `IterableDataset`.

    Attributes:
        num_proc: worker processes for parallel maps on a (non-streaming) `Dataset`.
        batch_size: rows per map batch.
    """

    num_proc: int = 1
    batch_size: int = 256

    def map(self, ds: datasets.Dataset | datasets.IterableDataset, fn: Callable, desc: str, *,
            parallel: bool = True, remove_columns: list[str] | None = None,
            features: datasets.Features | None = None, batch_size: int | None = None,
            input_columns: list[str] | None = None):
        """`ds.map(fn, batched=True)`; `parallel=False` for stateful or engine-bound functions."""
        kwargs: dict[str, Any] = {"batched": True, "batch_size": batch_size or self.batch_size,
                                  "remove_columns": remove_columns, "features": features,
                                  "input_columns": input_columns}
        if isinstance(ds, datasets.IterableDataset):
            return ds.map(fn, **kwargs)
        num_proc = self.num_proc if parallel and self.num_proc > 1 and len(ds) > self.batch_size else None
        # A fresh fingerprint: stage objects are not hashed (they may hold large indexes or engines).
        return ds.map(fn, num_proc=num_proc, desc=desc, new_fingerprint=uuid.uuid4().hex, **kwargs)
