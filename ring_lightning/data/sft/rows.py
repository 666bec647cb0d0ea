"""SFT rows: schema, validation, reading (JSONL / Parquet / `datasets` directory / synthetic) and templating.

Ring-lite (arXiv 2506.14731, §3) distils long chain-of-thought chats; the report does not publish
its file format, so we accept the two common shapes:

    {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...]}
    {"prompt": str, "response": str, "system": str (optional)}

Other keys (`id`, `meta`, ...) are ignored. A row is malformed when it has neither shape, a message
has an unknown role or non-string content, or an assistant turn is empty (or there is none): that
is an `SFTRowError` naming the file and the 0-based row, unless the caller skips and counts it.

Files are read through `datasets` in streaming mode (constant memory for large files):
`.jsonl` / `.json` with the "json" builder, `.parquet` with the "parquet" builder, and a directory
written by `Dataset.save_to_disk` with `load_from_disk` (its "train" split for a DatasetDict).
`synthetic:<task>` reads the built-in generated data (data/synthetic/problems.py).

The loss mask comes from the tokenizer's chat template: `apply_chat_template(...,
return_assistant_tokens_mask=True)` needs `{% generation %}` markers around assistant content (the
shipped tokenizer has them); a template without them is an error, never a silent all-zero mask.
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


def parse_sft_row(raw: Any, where: str) -> list[dict[str, str]]:
    """Validate one raw row and return its conversation as a list of {role, content}.

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
        msgs = raw["messages"]
        if not isinstance(msgs, (list, tuple)) or not msgs:
            raise fail("'messages' must be a non-empty list of {'role', 'content'}")
        messages = []
        for j, m in enumerate(msgs):
            if not isinstance(m, Mapping):
                raise fail(f"messages[{j}] must be an object with 'role' and 'content', got {m!r}")
            if m.get("role") not in ROLES:
                raise fail(f"messages[{j}] has unknown role {m.get('role')!r}; expected one of {', '.join(ROLES)}")
            if not isinstance(m.get("content"), str):
                raise fail(f"messages[{j}] ({m['role']}) needs a string 'content', got {m.get('content')!r}")
            if m["role"] == "assistant" and not m["content"].strip():
                raise fail(f"messages[{j}] is an empty assistant turn")
            messages.append({"role": m["role"], "content": m["content"]})
        if not any(m["role"] == "assistant" for m in messages):
            raise fail("no assistant turn: nothing to train on")
        return messages
    prompt, response = raw.get("prompt"), raw.get("response")
    if prompt is None and response is None:
        raise fail("needs a 'messages' list or 'prompt' and 'response' strings")
    if not isinstance(prompt, str) or not prompt.strip():
        raise fail(f"'prompt' must be a non-empty string, got {prompt!r}")
    if not isinstance(response, str) or not response.strip():
        raise fail(f"'response' must be a non-empty string (an empty assistant turn), got {response!r}")
    system = raw.get("system")
    if system is not None and not isinstance(system, str):
        raise fail(f"'system' must be a string, got {system!r}")
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


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


def encode_conversation(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
                        where: str) -> TokenizedDoc:
    """Apply the chat template; the loss mask is the template's assistant-token mask."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids, mask = list(out["input_ids"]), [bool(x) for x in out["assistant_masks"]]
    if not any(mask):
        raise ValueError(f"{where}: the tokenizer's chat template marked no assistant tokens. The template needs "
                         "{% generation %} ... {% endgeneration %} around assistant content (see the shipped "
                         "tokenizer in ring_lightning/assets/tokenizer) for assistant-only loss.")
    return TokenizedDoc(input_ids=tuple(ids), loss_mask=tuple(mask), where=where)
