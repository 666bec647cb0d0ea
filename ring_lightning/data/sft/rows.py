"""SFT rows: schema, validation, reading (JSONL / Parquet / `datasets` directory / synthetic) and templating.

Ring-lite (arXiv 2506.14731, §3) distils long chain-of-thought chats without publishing a file format;
we accept the common shapes (docs/data_formats.md): `messages`; `prompt` + `response` (+ `system`);
TRL's `prompt` + `completion` (strings or message lists) and TRL's language-modelling `text`. Other
keys are ignored. A malformed row is an `SFTRowError` naming the file and the 0-based row, unless
the caller skips and counts it. Files are streamed through `datasets` (constant memory);
`synthetic:<task>` reads the built-in generated data (data/synthetic/problems.py).

Loss mask (data/sft/masks.py): a chat trains on its assistant tokens. Deviation from TRL: assistant
turns inside a message-list `prompt` are trained on too. A `text` row is not templated: every token
is a target (`encode_text`: plain LM text, the tokenizer's own special tokens plus EOS).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from ring_lightning.data.sft.packing import TokenizedDoc
from ring_lightning.data.synthetic.problems import TASKS, sft_rows

ROLES = ("system", "user", "assistant", "tool")
SYNTHETIC_PREFIX = "synthetic:"


class SFTRowError(ValueError):
    """A row of SFT data does not follow the schema. The message names the file and the row."""


TEXT_ROLE = "text"  # parse_sft_row's single message for a `text` row: encoded without a chat template


def _chat(msgs: Any, key: str, fail) -> list[dict[str, str]]:
    """Validate a list of {role, content} (the row's `key`)."""
    if not isinstance(msgs, (list, tuple)) or not msgs:
        raise fail(f"'{key}' must be a non-empty list of {{'role', 'content'}}")
    messages = []
    for j, m in enumerate(msgs):
        if not isinstance(m, Mapping):
            raise fail(f"{key}[{j}] must be an object with 'role' and 'content', got {m!r}")
        if m.get("role") not in ROLES:
            raise fail(f"{key}[{j}] has unknown role {m.get('role')!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise fail(f"{key}[{j}] ({m['role']}) needs a string 'content', got {m.get('content')!r}")
        if m["role"] == "assistant" and not m["content"].strip():
            raise fail(f"{key}[{j}] is an empty assistant turn")
        messages.append({"role": m["role"], "content": m["content"]})
    return messages


def _prompt_answer(raw: Mapping[str, Any], fail) -> list[dict[str, str]]:
    """`prompt` + `completion` (TRL: strings or message lists) or `prompt` + `response` (+ `system`)."""
    key = "completion" if raw.get("completion") is not None else "response"
    prompt, answer = raw.get("prompt"), raw.get(key)
    system = raw.get("system")
    if system is not None and not isinstance(system, str):
        raise fail(f"'system' must be a string, got {system!r}")
    messages = [{"role": "system", "content": system}] if system else []
    if isinstance(prompt, (list, tuple)):
        messages += _chat(prompt, "prompt", fail)
    elif isinstance(prompt, str) and prompt.strip():
        messages.append({"role": "user", "content": prompt})
    else:
        raise fail(f"'prompt' must be a non-empty string or a list of {{'role', 'content'}}, got {prompt!r}")
    if isinstance(answer, (list, tuple)):
        completion = _chat(answer, key, fail)
        if not any(m["role"] == "assistant" for m in completion):
            raise fail(f"'{key}' has no assistant turn: nothing to train on")
        return messages + completion
    if not isinstance(answer, str) or not answer.strip():
        raise fail(f"'{key}' must be a non-empty string (an empty assistant turn), got {answer!r}")
    return messages + [{"role": "assistant", "content": answer}]


def parse_sft_row(raw: Any, where: str) -> list[dict[str, str]]:
    """Validate one raw row and return its conversation as a list of {role, content}.

    A `text` row becomes one {"role": TEXT_ROLE, "content": text} (`masks.encode_conversation`
    trains on all of its tokens, `encode_text`).

    Args:
        raw: the row as read (a mapping).
        where: names the row in errors, e.g. "data/sft.jsonl row 12".
    """

    def fail(msg: str) -> SFTRowError:
        return SFTRowError(f"{where}: {msg}; fix or remove the row, or set data.init_args.skip_bad_rows: true "
                           "to skip and count bad rows")

    if not isinstance(raw, Mapping):
        raise fail(f"expected an object, got {type(raw).__name__}")
    if raw.get("messages") is not None:
        messages = _chat(raw["messages"], "messages", fail)
        if not any(m["role"] == "assistant" for m in messages):
            raise fail("no assistant turn: nothing to train on")
        return messages
    if raw.get("prompt") is not None or raw.get("response") is not None or raw.get("completion") is not None:
        return _prompt_answer(raw, fail)
    text = raw.get("text")
    if text is None:
        raise fail("needs a 'messages' list, 'prompt' and 'response' (or TRL's 'completion'), or a 'text' string")
    if not isinstance(text, str) or not text.strip():
        raise fail(f"'text' must be a non-empty string, got {text!r}")
    return [{"role": TEXT_ROLE, "content": text}]


def iter_source(source: str, split: str, *, synthetic_rows: tuple[int, int] = (4000, 64),
                seed: int = 0) -> Iterator[tuple[str, Any]]:
    """Yield (where, raw row) from one source.

    Args:
        source: a .jsonl/.json/.parquet file, a `save_to_disk` directory, or "synthetic:<task>".
        split: "train" or "val"; only changes what a synthetic source yields (its held-out split).
        synthetic_rows: (train, val) sizes of a synthetic source.
        seed: seed of a synthetic source.
    """
    if source.startswith(SYNTHETIC_PREFIX):
        task = source[len(SYNTHETIC_PREFIX):]
        if task not in TASKS:
            raise ValueError(f"unknown synthetic source {source!r}; expected synthetic:<{'|'.join(TASKS)}>")
        for i, row in enumerate(sft_rows(task, split, synthetic_rows[0], synthetic_rows[1], seed)):
            yield f"{source} ({split}) row {i}", row
        return
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"SFT data source not found: {source} (a .jsonl/.json/.parquet file, a datasets "
                                f"directory saved with save_to_disk, or synthetic:<{'|'.join(TASKS)}>)")
    import datasets

    if path.is_dir():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise ValueError(f"{path} is a DatasetDict without a 'train' split (splits: {list(ds)}); "
                                 "point to one split's directory instead")
            ds = ds["train"]
        rows = ds.to_iterable_dataset()
    elif path.suffix in (".jsonl", ".json", ".parquet"):
        builder = "parquet" if path.suffix == ".parquet" else "json"
        rows = datasets.load_dataset(builder, data_files=[str(path)], split="train", streaming=True)
    else:
        raise ValueError(f"{path}: unsupported SFT file type {path.suffix!r} (use .jsonl, .json, .parquet "
                         "or a datasets directory)")
    try:
        for i, row in enumerate(rows):
            yield f"{path} row {i}", row
    except (ValueError, OSError) as e:  # pyarrow / datasets read errors (bad JSON, corrupt parquet)
        if isinstance(e, SFTRowError):
            raise
        raise ValueError(f"{path}: could not be read ({type(e).__name__}: {e})") from e


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str, where: str) -> TokenizedDoc:
    """Plain LM text: the tokenizer's own special tokens (e.g. BOS), EOS appended; every token a target."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
    return TokenizedDoc(input_ids=tuple(ids), loss_mask=(True,) * len(ids), where=where)
