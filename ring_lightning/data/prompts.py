"""Loading RL prompt rows from JSONL / Parquet / a local HF datasets directory.

Each raw row is validated by `ring_lightning.rows.parse_row`. `load_prompts(..., skip_bad_rows=True)`
skips bad rows instead (invalid JSON lines and duplicate ids too), logs each one with its file and
row, and reports them in `skipped`; a file whose every row is bad is still an error.

Peers' files load as they are: a row without `id` gets its row index (stable across runs, as long as
the file is unchanged), a row without `domain` the source's default `domain`, and `fields` maps the
file's columns onto the schema (TRL / verl: `{answer: reward_model.ground_truth}`); docs/data_formats.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ring_lightning.rows import (BAD_ROW_HINT, DOMAINS, REQUIRED_FIELD, ROLES, PromptRow, PromptRowError,
                                 check_fields, parse_row)

__all__ = ["BAD_ROW_HINT", "DOMAINS", "REQUIRED_FIELD", "ROLES", "PromptRow", "PromptRowError", "parse_row",
           "iter_raw_rows", "load_prompts"]

log = logging.getLogger(__name__)


def iter_raw_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (row index, raw dict) from a .jsonl/.json/.parquet file or a local `datasets` directory."""
    for i, raw in _iter_raw(path):
        if isinstance(raw, PromptRowError):
            raise raw
        yield i, raw


def _iter_raw(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | PromptRowError]]:
    """Like `iter_raw_rows`, but an invalid JSON line is yielded as its `PromptRowError` (reading goes on)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompt file not found: {path}; check the path (relative paths are relative to "
                                "the working directory)")
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError as e:
            raise PromptRowError(f"{path}: a directory, but not one written by `datasets` save_to_disk ({e}); "
                                 "pass a .jsonl / .parquet file or a save_to_disk directory") from None
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        for i, row in enumerate(ds):
            yield i, row
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except pa.ArrowException as e:
            raise PromptRowError(f"{path}: not a readable Parquet file ({e}); re-write it or convert it to JSONL") from None
        i = 0
        for batch in parquet.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                yield i, row
                i += 1
    elif path.suffix in (".jsonl", ".json"):
        with path.open() as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as e:
                    raw = PromptRowError(f"{path} row {i}: invalid JSON ({e})")
                yield i, raw
    else:
        raise ValueError(f"{path}: unsupported prompt file type {path.suffix!r} (use .jsonl, .parquet or a datasets dir)")


def load_prompts(path: str | Path, *, skip_bad_rows: bool = False, skipped: list[str] | None = None,
                 domain: str | None = None, fields: Mapping[str, str] | None = None) -> list[PromptRow]:
    """Load and validate every row of a prompt file (rows are numbered from 0, blank lines counted).

    Args:
        path: a .jsonl / .json / .parquet file or a `datasets` save_to_disk directory.
        skip_bad_rows: skip malformed rows (schema errors, invalid JSON lines, repeated ids) instead of
            raising on the first; each is logged as a warning naming the file and row.
        skipped: if given, the error message of every skipped row is appended to it.
        domain: the domain of rows without a `domain` (one of DOMAINS); None = every row names its own.
        fields: {schema field: the file's column}, dotted for nested columns, e.g. {"answer": "solution"}.
            A row without `id` is always given its row index as id.

    Raises:
        PromptRowError: the first bad row (without `skip_bad_rows`), or every row bad (with it).
        ValueError: `domain` or `fields` is not valid (before any row is read).
    """
    if domain is not None and domain not in DOMAINS:
        raise ValueError(f"prompt file {path}: default domain {domain!r} is not one of {', '.join(DOMAINS)}")
    fields = check_fields(fields, f"prompt file {path}: fields")
    rows: list[PromptRow] = []
    errors: list[str] = []
    first_at: dict[str, int] = {}
    for i, raw in _iter_raw(path):
        try:
            if isinstance(raw, PromptRowError):
                raise raw
            row = parse_row(raw, f"{path} row {i}", default_id=str(i), default_domain=domain, fields=fields)
            if row.id in first_at:
                raise PromptRowError(f"{path} row {i}: duplicate id {row.id!r} (first at row {first_at[row.id]}); "
                                     "ids must be unique within a file")
        except PromptRowError as e:
            if not skip_bad_rows:
                raise PromptRowError(f"{e}; {BAD_ROW_HINT}") from None
            errors.append(str(e))
            log.warning("skipped malformed prompt row: %s", e)
            continue
        first_at[row.id] = i
        rows.append(row)
    if errors:
        if skipped is not None:
            skipped.extend(errors)
        if not rows:
            raise PromptRowError(f"{path}: every row is malformed ({len(errors)} skipped); first: {errors[0]}")
        log.warning("%s: skipped %d malformed prompt rows (skip_bad_rows=True), kept %d", path, len(errors), len(rows))
    return rows
