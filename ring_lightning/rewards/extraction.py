"""Finding the final answer in a long chain-of-thought response (never by evaluating it).

Ring-lite's responses are a ``<think>…</think>`` trace followed by the answer (arXiv 2506.14731,
the long-CoT format of the SFT data); math answers are boxed, logic answers are boxed or in
``<answer>`` tags, code is in a fenced block. These helpers are plain string scanners.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

THINK_END = "</think>"
THINK_START = "<think>"


def strip_thinking(response: str) -> str:
    """The part after the last ``</think>``; "" when a ``<think>`` block is never closed."""
    end = response.rfind(THINK_END)
    if end >= 0:
        return response[end + len(THINK_END):]
    if THINK_START in response:
        return ""
    return response


def _braced(text: str, open_at: int) -> str | None:
    """Content of the brace group opening at `text[open_at] == "{"`, honouring nesting and ``\\{``."""
    depth, i = 0, open_at
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1:i]
        i += 1
    return None


def last_boxed(text: str, commands: Sequence[str] = ("\\boxed", "\\fbox")) -> str | None:
    """Content of the last ``\\boxed{…}`` (nested braces handled), or None.

    The last occurrence decides: if it is unterminated (a truncated response) the answer is None
    rather than an earlier box from the reasoning. ``\\boxed 5`` (no braces) yields "5".
    """
    best = -1
    cmd_len = 0
    for cmd in commands:
        for m in re.finditer(re.escape(cmd) + r"(?![A-Za-z])", text):
            if m.start() > best:
                best, cmd_len = m.start(), len(cmd)
    if best < 0:
        return None
    i = best + cmd_len
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        return _braced(text, i)
    m = re.match(r"[^\s$]+", text[i:])
    return m.group(0) if m else None


def last_tagged(text: str, tag: str = "answer") -> str | None:
    """Content of the last complete ``<tag>…</tag>``, or None."""
    close = text.rfind(f"</{tag}>")
    if close < 0:
        return None
    open_ = text.rfind(f"<{tag}>", 0, close)
    if open_ < 0:
        return None
    return text[open_ + len(tag) + 2:close]


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+#.-]*)[^\n]*\n(.*?)```", re.DOTALL)


def last_fenced_block(text: str, tags: Sequence[str]) -> str | None:
    """Body of the last complete fenced block whose info string is one of `tags` (case-insensitive)."""
    wanted = {t.lower() for t in tags}
    found = None
    for m in _FENCE.finditer(text):
        if m.group(1).lower() in wanted:
            found = m.group(2)
    return found
