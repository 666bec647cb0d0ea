"""Assistant-only loss masks from any chat template, with or without `{% generation %}` tags.

Ring-lite (arXiv 2506.14731, §3) trains its SFT model on the assistant turns of distilled chats; the
report says nothing about how the target tokens are found. A template with `{% generation %}` ...
`{% endgeneration %}` around assistant content (the shipped tokenizer's) gives the mask directly
(`apply_chat_template(..., return_assistant_tokens_mask=True)`). Stock templates of real chat models
(Qwen, Llama, Ling) have no such tags, so we derive the same mask by incremental rendering: for each
assistant turn i, the conversation up to it rendered with `add_generation_prompt=True` (P_i) and
rendered through it (Q_i); the characters Q_i[len(P_i):] are the turn's target (its content and
end-of-turn token; trailing whitespace the template puts between turns is not a target, as with
tags), mapped to tokens of the whole rendering exactly as transformers maps generation spans. This
needs P_i ⊑ Q_i ⊑ the whole rendering (a template that re-renders earlier turns differently, e.g.
drops their reasoning, breaks it): that is checked, and a failure is an error naming the row.
"""

from __future__ import annotations

import re

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from ring_lightning.data.sft.packing import TokenizedDoc
from ring_lightning.data.sft.rows import TEXT_ROLE, encode_text

_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
FIXES = ("add {% generation %} ... {% endgeneration %} around assistant content in the template, or give each "
         "assistant turn its own row")


class ChatTemplateMaskError(ValueError):
    """The assistant mask of a row cannot be derived from the tokenizer's chat template; names the row."""


def has_generation_tags(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's (default) chat template marks assistant content with `{% generation %}`."""
    try:
        template = tokenizer.get_chat_template()
    except ValueError:  # no chat template at all: apply_chat_template raises the named error later
        return False
    return bool(_GENERATION_TAG.search(template))


def encode_conversation(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
                        where: str) -> TokenizedDoc:
    """A parsed row (`rows.parse_sft_row`) as a TokenizedDoc: a `text` row is plain LM text (every token a
    target, `rows.encode_text`); a chat is templated and masked by `encode_chat`."""
    if len(messages) == 1 and messages[0]["role"] == TEXT_ROLE:
        return encode_text(tokenizer, messages[0]["content"], where)
    return encode_chat(tokenizer, messages, where)


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], where: str) -> TokenizedDoc:
    """Token ids of the templated conversation and its assistant-token loss mask.

    Args:
        tokenizer: a fast tokenizer with a chat template (tagged or not).
        messages: the conversation ({role, content} dicts, at least one assistant turn).
        where: names the row in errors, e.g. "data/sft.jsonl row 12".
    """
    try:
        if has_generation_tags(tokenizer):
            out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
            ids, mask = list(out["input_ids"]), [bool(x) for x in out["assistant_masks"]]
        else:
            ids, mask = incremental_assistant_mask(tokenizer, messages, where)
    except ChatTemplateMaskError:
        raise
    except (ValueError, TemplateError) as e:  # no template, or the template rejects the conversation
        raise ChatTemplateMaskError(f"{where}: the tokenizer's chat template cannot render this conversation "
                                    f"({type(e).__name__}: {e})") from e
    if not any(mask):
        raise ChatTemplateMaskError(f"{where}: the tokenizer's chat template marked no assistant tokens "
                                    "(assistant content renders empty); check the template's assistant branch")
    return TokenizedDoc(input_ids=tuple(ids), loss_mask=tuple(mask), where=where)


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)


def _divergence(a: str, b: str, at: int = 0) -> str:
    """Where `a` stops being a prefix of `b`: a short quote of both from the first differing character."""
    i = at
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    return f"at character {i}: {a[i:i + 40]!r} vs {b[i:i + 40]!r}"


def assistant_char_spans(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
                         where: str) -> tuple[str, list[tuple[int, int]]]:
    """The whole rendering and the [start, end) character span of every assistant turn in it."""
    full = _render(tokenizer, messages, prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, through = _render(tokenizer, messages[:i], prompt=True), _render(tokenizer, messages[:i + 1], False)
        if not through.startswith(before):
            raise ChatTemplateMaskError(
                f"{where}: the chat template has no {{% generation %}} tags and its generation prompt for message "
                f"{i} (assistant) is not a prefix of the rendered turn ({_divergence(before, through)}), so the "
                f"assistant tokens cannot be found by incremental rendering; {FIXES}")
        if not full.startswith(through):
            raise ChatTemplateMaskError(
                f"{where}: the chat template has no {{% generation %}} tags and renders message {i} (assistant) "
                f"differently once later messages follow ({_divergence(through, full)}; e.g. a template that "
                f"drops the reasoning of earlier turns), so the assistant tokens cannot be found by incremental "
                f"rendering; {FIXES}")
        end = len(through.rstrip())
        if end > len(before):
            spans.append((len(before), end))
    return full, spans


def incremental_assistant_mask(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
                               where: str) -> tuple[list[int], list[bool]]:
    """Token ids of the whole rendering and the mask of tokens overlapping an assistant span (a token cut
    by a span edge counts, as transformers counts generation spans)."""
    if not tokenizer.is_fast:
        raise ChatTemplateMaskError(f"{where}: assistant masks without {{% generation %}} tags need a fast "
                                    f"tokenizer (character offsets); {type(tokenizer).__name__} is not one")
    full, spans = assistant_char_spans(tokenizer, messages, where)
    enc = tokenizer(full, add_special_tokens=False)
    ids = list(enc["input_ids"])
    mask = [False] * len(ids)
    for start, end in spans:
        first = next((t for c in range(start, end) if (t := enc.char_to_token(c)) is not None), None)
        last = next((t for c in range(end - 1, start - 1, -1) if (t := enc.char_to_token(c)) is not None), None)
        if first is None or last is None:
            continue
        for t in range(first, last + 1):
            mask[t] = True
    return ids, mask
