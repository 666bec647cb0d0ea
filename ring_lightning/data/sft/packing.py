"""Sequence packing for SFT: tokenised documents → fixed-size micro-batches that never mix documents.

Ring-lite (arXiv 2506.14731, §3) fine-tunes on long-CoT samples up to 32k tokens; the report does
not say how samples were batched. We pack several documents into one row of exactly
`micro_batch_tokens` tokens (shape [1, T]) so every micro-batch costs the same, and make packing
invisible to the model:

* position ids restart at 0 for every document. transformers (≥4.5x, and our BailingMoe) turns
  restarting position ids into a block-diagonal causal mask for eager / sdpa / flex attention and
  into variable-length kernels for flash-attention, as long as no 2-D attention mask and no KV
  cache are passed (SFTModule calls the policy with `use_cache=False`). `block_diagonal_mask`
  builds the same mask explicitly for models that ignore restarting positions;
* targets are shifted inside each document: the last token of a document never predicts the first
  token of the next one;
* the unused tail of a row is padding: its own pseudo-document (positions 0, 1, ...), no targets.

Bin packing is online best-fit over `open_bins` open rows (deterministic): a document goes into the
open row with the least free space that still fits it; when a new row is needed and `open_bins`
rows are open, the fullest row is emitted first; the open rows flush when the stream ends. On the
synthetic data (~110-token documents, 1024-token rows, 64 open rows) steady-state padding is
~1.2% (benchmarks/bench_sft.py prints it); longer rows waste less.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenizedDoc:
    """One templated conversation.

    Attributes:
        input_ids: token ids.
        loss_mask: per token, True when the token is an assistant token (a training target).
        where: where it came from, for messages ("data/sft.jsonl row 12").
    """

    input_ids: tuple[int, ...]
    loss_mask: tuple[bool, ...]
    where: str = ""

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_loss_tokens(self) -> int:
        """Targets this document contributes (an assistant token predicted from the one before it)."""
        return sum(self.loss_mask[1:])


@dataclass(frozen=True)
class PackedBatch:
    """One packed micro-batch (one row of `micro_batch_tokens` tokens).

    Attributes:
        input_ids: [1, T] token ids; padding uses the tokenizer's pad id.
        position_ids: [1, T] position within the document, restarting at 0 for each document.
        targets: [1, T] the next token when it is an assistant token of the same document, else -100.
        doc_ids: [1, T] index of the document within the row, -1 on padding.
        num_loss_tokens: number of targets != -100 (a 0-dim int64 tensor).
        num_tokens: number of non-padding tokens (0-dim).
        num_padding: number of padding tokens (0-dim).
        stats: [5] running counters of the data stream when this micro-batch was emitted (same on
            every rank): rows read, documents packed, bad rows skipped, overlong documents
            truncated, overlong documents dropped.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    doc_ids: torch.Tensor
    num_loss_tokens: torch.Tensor
    num_tokens: torch.Tensor
    num_padding: torch.Tensor
    stats: torch.Tensor

    STAT_NAMES = ("rows_read", "docs_packed", "bad_rows_skipped", "overlong_truncated", "overlong_dropped")

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        """A copy on `device` (Lightning moves batches through this method)."""
        return PackedBatch(**{name: getattr(self, name).to(device, non_blocking=non_blocking)
                              for name in self.__dataclass_fields__})

    @property
    def token_mask(self) -> torch.Tensor:
        """[1, T] 1 for real tokens, 0 for padding."""
        return (self.doc_ids >= 0).long()


def pack_documents(docs: Iterable[TokenizedDoc], micro_batch_tokens: int,
                   open_bins: int = 64) -> Iterator[list[TokenizedDoc]]:
    """Group documents into rows of at most `micro_batch_tokens` tokens (online best-fit).

    Every document must already fit (callers truncate or drop longer ones).
    """
    if micro_batch_tokens < 1 or open_bins < 1:
        raise ValueError(f"micro_batch_tokens ({micro_batch_tokens}) and open_bins ({open_bins}) must be >= 1")
    bins: list[list[TokenizedDoc]] = []
    free: list[int] = []
    for doc in docs:
        n = len(doc)
        if n > micro_batch_tokens:
            raise ValueError(f"{doc.where}: document of {n} tokens exceeds micro_batch_tokens={micro_batch_tokens}")
        fits = [i for i, f in enumerate(free) if f >= n]
        if fits:
            best = min(fits, key=lambda i: free[i])
            bins[best].append(doc)
            free[best] -= n
            continue
        if len(bins) >= open_bins:
            fullest = min(range(len(bins)), key=lambda i: free[i])
            yield bins.pop(fullest)
            free.pop(fullest)
        bins.append([doc])
        free.append(micro_batch_tokens - n)
    yield from bins


def collate_packed(docs: list[TokenizedDoc], micro_batch_tokens: int, pad_id: int,
                   stats: tuple[int, ...] = (0, 0, 0, 0, 0)) -> PackedBatch:
    """Lay documents side by side in one [1, micro_batch_tokens] row (an empty list → all padding)."""
    T = micro_batch_tokens
    input_ids = torch.full((T,), pad_id, dtype=torch.long)
    position_ids = torch.empty(T, dtype=torch.long)
    targets = torch.full((T,), IGNORE_INDEX, dtype=torch.long)
    doc_ids = torch.full((T,), -1, dtype=torch.long)
    start = 0
    for d, doc in enumerate(docs):
        n = len(doc)
        if start + n > T:
            raise ValueError(f"documents add up to more than micro_batch_tokens={T}")
        ids = torch.tensor(doc.input_ids, dtype=torch.long)
        mask = torch.tensor(doc.loss_mask, dtype=torch.bool)
        input_ids[start:start + n] = ids
        position_ids[start:start + n] = torch.arange(n)
        doc_ids[start:start + n] = d
        # position t predicts token t+1 of the same document, when that token is an assistant token
        shifted = torch.where(mask[1:], ids[1:], torch.full_like(ids[1:], IGNORE_INDEX))
        targets[start:start + n - 1] = shifted
        start += n
    position_ids[start:] = torch.arange(T - start)
    num_loss = int((targets != IGNORE_INDEX).sum())
    return PackedBatch(
        input_ids=input_ids[None], position_ids=position_ids[None], targets=targets[None], doc_ids=doc_ids[None],
        num_loss_tokens=torch.tensor(num_loss), num_tokens=torch.tensor(start), num_padding=torch.tensor(T - start),
        stats=torch.tensor(stats, dtype=torch.long),
    )


def block_diagonal_mask(doc_ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Causal mask that never crosses documents: [B, 1, T, T].

    Args:
        doc_ids: [B, T] document index per token (padding, -1, forms its own block).
        dtype: None → bool (True = attend; for sdpa); a float dtype → additive mask (0 / dtype min;
            for eager attention).
    """
    T = doc_ids.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()  # [T, T]
    same = doc_ids[:, :, None] == doc_ids[:, None, :]  # [B, T, T]
    allowed = (same & causal)[:, None]  # [B, 1, T, T]
    if dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=doc_ids.device).masked_fill(~allowed, torch.finfo(dtype).min)
