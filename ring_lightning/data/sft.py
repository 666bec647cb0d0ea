"""SFTDataModule: chat data → templated, assistant-masked, packed micro-batches for SFTModule.

Ring-lite (arXiv 2506.14731, §3) trains its long-CoT SFT model on 32k-token contexts; it does not
say how samples are batched, truncated or filtered. What we do (and document as our choice):

* every source row is validated (data/sft_rows.py), templated with the tokenizer's chat template,
  and masked so only assistant tokens are targets;
* a document longer than `max_length` is cut to its first `max_length` tokens (`overlong:
  truncate`; if no assistant token survives it is dropped) or dropped (`overlong: drop`); both are
  counted and logged as `data/overlong_truncated`, `data/overlong_dropped`;
* documents are shuffled with a seeded buffer (reshuffled every epoch), then packed into
  [1, micro_batch_tokens] rows (data/packing.py);
* data parallelism: every rank reads and packs the same stream and takes micro-batch i when
  i % world_size == rank; the stream is padded with empty micro-batches to a multiple of
  world_size × num_workers so all ranks take the same number of steps. Each micro-batch carries its
  loss-token count; SFTModule normalises by the all-reduced total of the whole optimizer step, so
  1 process × accumulation k and k processes give the same gradient.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from typing import Literal

import lightning as L
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from transformers import PreTrainedTokenizerBase

from ring_lightning.data.packing import PackedBatch, TokenizedDoc, collate_packed, pack_documents
from ring_lightning.data.sft_rows import SFTRowError, encode_conversation, iter_source, parse_sft_row
from ring_lightning.models.loading import load_tokenizer

Overlong = Literal["truncate", "drop"]


class PackedSFTDataset(IterableDataset):
    """Packed micro-batches of one split. Arguments as in `SFTDataModule`; `split` is "train" or "val"."""

    def __init__(self, sources: list[str], split: str, tokenizer: PreTrainedTokenizerBase, *,
                 micro_batch_tokens: int, max_length: int, overlong: Overlong, skip_bad_rows: bool,
                 shuffle_buffer: int, open_bins: int, seed: int, synthetic_rows: tuple[int, int]) -> None:
        self.sources, self.split, self.tokenizer = list(sources), split, tokenizer
        self.micro_batch_tokens, self.max_length, self.overlong = micro_batch_tokens, max_length, overlong
        self.skip_bad_rows, self.shuffle_buffer, self.open_bins = skip_bad_rows, shuffle_buffer, open_bins
        self.seed, self.synthetic_rows = seed, synthetic_rows
        self.epoch, self.dp_rank, self.dp_size = 0, 0, 1
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for this epoch (same permutation on every rank)."""
        self.epoch = epoch

    def set_data_parallel(self, rank: int, size: int) -> None:
        """Take every `size`-th micro-batch, starting at `rank`."""
        if not 0 <= rank < size:
            raise ValueError(f"data-parallel rank {rank} outside [0, {size})")
        self.dp_rank, self.dp_size = rank, size

    def documents(self, counters: list[int]) -> Iterator[TokenizedDoc]:
        """Validated, templated, length-checked documents in source order; updates `counters` (PackedBatch.stats)."""
        for source in self.sources:
            for where, raw in iter_source(source, self.split, synthetic_rows=self.synthetic_rows, seed=self.seed):
                counters[0] += 1
                try:
                    messages = parse_sft_row(raw, where)
                except SFTRowError:
                    if not self.skip_bad_rows:
                        raise
                    counters[2] += 1
                    continue
                doc = encode_conversation(self.tokenizer, messages, where)
                if len(doc) > self.max_length:
                    if self.overlong == "drop":
                        counters[4] += 1
                        continue
                    doc = TokenizedDoc(doc.input_ids[:self.max_length], doc.loss_mask[:self.max_length], where)
                    if doc.num_loss_tokens == 0:
                        counters[4] += 1
                        continue
                    counters[3] += 1
                counters[1] += 1
                yield doc

    def _shuffled(self, docs: Iterator[TokenizedDoc]) -> Iterator[TokenizedDoc]:
        if self.shuffle_buffer <= 1:
            yield from docs
            return
        rng = random.Random(f"{self.seed}-{self.epoch}")
        buffer: list[TokenizedDoc] = []
        for doc in docs:
            buffer.append(doc)
            if len(buffer) >= self.shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self) -> Iterator[PackedBatch]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        consumers = self.dp_size * workers

        def mine(i: int) -> bool:  # rank r's j-th batch is global index r + j*dp_size, served by worker j % workers
            return i % self.dp_size == self.dp_rank and (i // self.dp_size) % workers == worker

        counters = [0, 0, 0, 0, 0]
        docs = self.documents(counters)
        if self.split == "train":
            docs = self._shuffled(docs)
        n = 0
        for i, row in enumerate(pack_documents(docs, self.micro_batch_tokens, self.open_bins)):
            n = i + 1
            if mine(i):
                yield collate_packed(row, self.micro_batch_tokens, self.pad_id, tuple(counters))
        for i in range(n, math.ceil(n / consumers) * consumers):
            if mine(i):  # empty micro-batches: every rank takes the same number of steps
                yield collate_packed([], self.micro_batch_tokens, self.pad_id, tuple(counters))


class _EpochLoader(DataLoader):
    """A DataLoader that tells its dataset the epoch before each pass (workers get the updated copy)."""

    def __init__(self, dataset: PackedSFTDataset, epoch_fn: Callable[[], int], **kwargs) -> None:
        super().__init__(dataset, batch_size=None, **kwargs)
        self._epoch_fn = epoch_fn

    def __iter__(self):
        self.dataset.set_epoch(self._epoch_fn())
        return super().__iter__()


class SFTDataModule(L.LightningDataModule):
    """Packed SFT chat data (JSONL, Parquet, `datasets` directories or built-in synthetic tasks).

    Args:
        train: training sources: .jsonl/.json/.parquet files, directories saved with
            `Dataset.save_to_disk`, or "synthetic:arithmetic" / "synthetic:countdown" /
            "synthetic:mixed". Several sources are read one after the other.
        val: held-out sources (same forms; a synthetic source gives its held-out split, disjoint
            from its training split). None: no validation.
        tokenizer: tokenizer directory; None = the tokenizer shipped with the package. It must be
            the policy's tokenizer (in YAML: `tokenizer: ${model.init_args.tokenizer}`).
        micro_batch_tokens: tokens per micro-batch (one packed row, padded to exactly this size).
        max_length: longest document in tokens; None = micro_batch_tokens. Must be <= micro_batch_tokens.
        overlong: what happens to a longer document: "truncate" (keep its first max_length tokens;
            dropped if no assistant token is left) or "drop". Both are counted.
        skip_bad_rows: skip (and count) malformed rows instead of raising `SFTRowError`.
        shuffle_buffer: documents held for shuffling the training stream (reseeded each epoch);
            0 or 1 = source order.
        open_bins: rows kept open by the best-fit packer (more = less padding, more memory).
        seed: shuffle seed, and the seed of synthetic sources.
        synthetic_train_rows: rows in a synthetic source's training split.
        synthetic_val_rows: rows in a synthetic source's held-out split.
        num_workers: DataLoader worker processes per rank (each reads the whole stream and builds
            its share of micro-batches; 1 overlaps data preparation with training).
    """

    def __init__(
        self,
        train: list[str],
        val: list[str] | None = None,
        tokenizer: str | None = None,
        micro_batch_tokens: int = 4096,
        max_length: int | None = None,
        overlong: Overlong = "truncate",
        skip_bad_rows: bool = False,
        shuffle_buffer: int = 10000,
        open_bins: int = 64,
        seed: int = 0,
        synthetic_train_rows: int = 4000,
        synthetic_val_rows: int = 64,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not train:
            raise ValueError("SFTDataModule needs at least one training source in `train`")
        max_length = micro_batch_tokens if max_length is None else max_length
        if not 1 <= max_length <= micro_batch_tokens:
            raise ValueError(f"max_length ({max_length}) must be in [1, micro_batch_tokens={micro_batch_tokens}]")
        if overlong not in ("truncate", "drop"):
            raise ValueError(f"overlong must be 'truncate' or 'drop', got {overlong!r}")
        self.save_hyperparameters()
        self.train_sources, self.val_sources = list(train), list(val or [])
        self.tokenizer_path = tokenizer
        self.tokenizer = load_tokenizer(tokenizer)
        common = dict(micro_batch_tokens=micro_batch_tokens, max_length=max_length, overlong=overlong,
                      skip_bad_rows=skip_bad_rows, open_bins=open_bins, seed=seed,
                      synthetic_rows=(synthetic_train_rows, synthetic_val_rows))
        self.train_set = PackedSFTDataset(self.train_sources, "train", self.tokenizer,
                                          shuffle_buffer=shuffle_buffer, **common)
        self.val_set = PackedSFTDataset(self.val_sources, "val", self.tokenizer, shuffle_buffer=0, **common)
        self.num_workers = num_workers
        if self.val_sources:  # without held-out sources there is no val_dataloader, so no validation loop
            self.val_dataloader = self._val_dataloader

    def setup(self, stage: str) -> None:
        kwargs = (self.trainer.distributed_sampler_kwargs or {}) if self.trainer is not None else {}
        rank, size = kwargs.get("rank", 0), kwargs.get("num_replicas", 1)
        for ds in (self.train_set, self.val_set):
            ds.set_data_parallel(rank, size)

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def _loader(self, dataset: PackedSFTDataset) -> DataLoader:
        return _EpochLoader(dataset, self._epoch, num_workers=self.num_workers,
                            persistent_workers=False, pin_memory=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set)

    def _val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)
