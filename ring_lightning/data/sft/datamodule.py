"""SFTDataModule: chat data → templated, assistant-masked, packed micro-batches for SFTModule.

Ring-lite (arXiv 2506.14731, §3) trains its long-CoT SFT model on 32k-token contexts; it does not
say how samples are batched, truncated or filtered. What we do (and document as our choice):

* every source row is validated (data/sft/rows.py), templated with the tokenizer's chat template,
  and masked so only assistant tokens are targets (data/sft/masks.py: the template's `{% generation
  %}` tags, or incremental rendering for stock templates without them); one tokenizer per run: the
  policy's (taken from the LightningModule at `setup`) unless one is set, and a set one that differs
  is an error;
* a document longer than `max_length` is cut to its first `max_length` tokens (`overlong:
  truncate`; if no assistant token survives it is dropped) or dropped (`overlong: drop`); both are
  counted and logged as `data/overlong_truncated`, `data/overlong_dropped`;
* documents are shuffled with a seeded buffer (reshuffled every epoch), then packed into
  [1, micro_batch_tokens] rows (data/sft/packing.py);
* data parallelism: every rank reads and packs the same stream and takes micro-batch i when
  i % world_size == rank; the stream is padded with empty micro-batches to a multiple of
  world_size × num_workers so all ranks take the same number of steps. Each micro-batch carries its
  loss-token count; SFTModule normalises by the all-reduced total of the whole optimizer step, so
  1 process × accumulation k and k processes give the same gradient.
* resume: a checkpoint records the epoch and the index of the next micro-batch to train on
  (`ResumableLoader`, saved by Lightning with the fit loop); a resumed run rebuilds the epoch's
  stream up to that index without training on it and continues with exactly the next micro-batch,
  for files read in streaming mode as for synthetic sources. Rebuilding re-reads and re-tokenises
  the epoch so far (what the data pipeline did the first time; with num_workers >= 1 in the worker):
  we chose exactness and constant-size checkpoints over storing the shuffle buffer and open bins.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from typing import Any, Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from transformers import PreTrainedTokenizerBase

from ring_lightning.data.sft.masks import encode_conversation
from ring_lightning.data.sft.packing import PackedBatch, TokenizedDoc, collate_packed, pack_documents
from ring_lightning.data.sft.rows import SFTRowError, iter_source, parse_sft_row
from ring_lightning.models.loading import load_tokenizer, tokenizer_differences

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
        self.epoch, self.dp_rank, self.dp_size, self.start = 0, 0, 1, 0
        self.set_tokenizer(tokenizer)

    def set_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Encode (and pad) with this tokenizer from the next pass on."""
        self.tokenizer = tokenizer
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

    def set_start(self, start: int) -> None:
        """Begin the next pass at micro-batch `start` of the packed stream (all ranks together): the
        stream before it is rebuilt (read, tokenised, shuffled, packed) but not collated or yielded."""
        if start < 0:
            raise ValueError(f"stream start must be >= 0, got {start}")
        self.start = start

    def fingerprint(self) -> dict[str, Any]:
        """The settings that define the packed stream: a resumed position is only meaningful under the same."""
        return {"sources": list(self.sources), "split": self.split, "micro_batch_tokens": self.micro_batch_tokens,
                "max_length": self.max_length, "overlong": self.overlong, "skip_bad_rows": self.skip_bad_rows,
                "shuffle_buffer": self.shuffle_buffer, "open_bins": self.open_bins, "seed": self.seed,
                "synthetic_rows": list(self.synthetic_rows), "vocab_size": len(self.tokenizer)}

    def __iter__(self) -> Iterator[PackedBatch]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        consumers = self.dp_size * workers
        start = self.start

        def mine(i: int) -> bool:  # rank r's j-th batch is index start + r + j*dp_size, served by worker j % workers
            k = i - start
            return k >= 0 and k % self.dp_size == self.dp_rank and (k // self.dp_size) % workers == worker

        counters = [0, 0, 0, 0, 0]
        docs = self.documents(counters)
        if self.split == "train":
            docs = self._shuffled(docs)
        n = 0
        for i, row in enumerate(pack_documents(docs, self.micro_batch_tokens, self.open_bins)):
            n = i + 1
            if mine(i):
                yield collate_packed(row, self.micro_batch_tokens, self.pad_id, tuple(counters))
        n = max(n, start)
        for i in range(n, start + math.ceil((n - start) / consumers) * consumers):
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


class ResumableLoader(_EpochLoader):
    """The training loader; it knows how far into the packed stream training got (mid-epoch resume).

    Lightning stores `state_dict()` in every checkpoint (the fit loop's "combined_loader" states) and
    hands it to `load_state_dict` before the first pass of a resumed run. Lightning fetches a
    micro-batch ahead of training, so what the loader yielded is not what was trained on: a
    micro-batch counts as consumed when Lightning moves it to the device for a training step
    (`SFTDataModule.on_before_batch_transfer` calls `mark_consumed`). The position is global (all
    data-parallel ranks together), so a run may resume on a different number of ranks.

    Args:
        dataset: the training `PackedSFTDataset`.
        epoch_fn: returns the current epoch (the shuffle seed of the pass).
        restore: apply a loaded position (False: the epoch's stream restarts from its beginning).
        trainer_fn: returns the Trainer (None outside one); see `load_state_dict`.
        **kwargs: DataLoader arguments.
    """

    VERSION = 1

    def __init__(self, dataset: PackedSFTDataset, epoch_fn: Callable[[], int], restore: bool = True,
                 trainer_fn: Callable[[], Any] | None = None, **kwargs) -> None:
        super().__init__(dataset, epoch_fn, **kwargs)
        self.restore, self._trainer_fn = restore, trainer_fn
        self.epoch, self.start, self.consumed = 0, 0, 0
        self._pending: dict[str, Any] | None = None

    def __iter__(self):
        epoch, start = self._epoch_fn(), 0
        if self._pending is not None:
            saved, self._pending = self._pending, None
            if saved["epoch"] > epoch:
                raise RuntimeError(f"SFT data stream: the checkpoint was taken in epoch {saved['epoch']} but the "
                                   f"trainer resumed in epoch {epoch}; its data-stream state is not this run's")
            if saved["epoch"] == epoch:  # (an older saved epoch was finished: this one starts at 0)
                start = int(saved["position"])
        self.epoch, self.start, self.consumed = epoch, start, 0
        self.dataset.set_start(start)
        return super().__iter__()

    def mark_consumed(self) -> None:
        """One micro-batch of this rank went into a training step."""
        self.consumed += 1

    def position(self) -> int:
        """Index (in the packed stream of all ranks) of the next micro-batch to train on."""
        return self.start + self.consumed * self.dataset.dp_size

    def state_dict(self) -> dict[str, Any]:
        return {"version": self.VERSION, "epoch": self.epoch, "position": self.position(),
                "fingerprint": self.dataset.fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != self.VERSION:
            raise ValueError(f"SFT data stream: unknown loader state version {state.get('version')!r} in the "
                             f"checkpoint (expected {self.VERSION})")
        # A checkpoint taken after the last micro-batch of an epoch: Lightning 2.6 restores the epoch
        # loop's `is_last_batch`, ends the resumed epoch without fetching, keeps that epoch's batch
        # counters (and so shifts gradient accumulation) and reuses the exhausted iterator for the
        # next epoch, skipping it. Clearing the flag lets the loop fetch: the resumed pass, rebuilt up
        # to the end of the epoch, is empty, and Lightning ends the epoch as an uninterrupted run does.
        trainer = self._trainer_fn() if self._trainer_fn is not None else None
        if trainer is not None:
            trainer.fit_loop.epoch_loop.batch_progress.is_last_batch = False
        if not self.restore:
            if state["position"]:
                rank_zero_warn(f"SFTDataModule(resume_position=False): the data stream of epoch {state['epoch']} "
                               f"restarts from its beginning; its first {state['position']} micro-batches are "
                               "trained on again")
            return
        ours = self.dataset.fingerprint()
        changed = [k for k in ours if state["fingerprint"].get(k) != ours[k]]
        if changed and state["position"]:
            k = changed[0]
            raise ValueError(
                f"SFT data stream: the checkpoint stopped at micro-batch {state['position']} of epoch "
                f"{state['epoch']} of a stream built with {k}={state['fingerprint'].get(k)!r}, this run has "
                f"{k}={ours[k]!r} (changed: {', '.join(changed)}), so that position means nothing here. Resume "
                "with the same data settings, or set data.init_args.resume_position=false to restart the "
                "epoch's stream from its beginning.")
        self._pending = dict(state)


class SFTDataModule(L.LightningDataModule):
    """Packed SFT chat data (JSONL, Parquet, `datasets` directories or built-in synthetic tasks).

    Args:
        train: training sources: .jsonl/.json/.parquet files, directories saved with
            `Dataset.save_to_disk`, or "synthetic:arithmetic" / "synthetic:countdown" /
            "synthetic:mixed". Several sources are read one after the other.
        val: held-out sources (same forms; a synthetic source gives its held-out split, disjoint
            from its training split). None: no validation.
        tokenizer: tokenizer directory; None = the policy's: the LightningModule's `tokenizer`
            (SFTModule: the checkpoint's own, or its `tokenizer`), taken at `setup`; the shipped
            tokenizer when used without a trainer. A directory whose tokenizer differs from the
            policy's (vocabulary, special tokens, chat template) is an error at `setup`.
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
        resume_position: when resuming from a checkpoint taken mid-epoch, continue the data stream
            with exactly the next micro-batch (the stream before it is rebuilt, not trained on; this
            needs the same data settings, else an error names the changed one). False: the epoch's
            stream restarts from its beginning.
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
        resume_position: bool = True,
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
        self.num_workers, self.resume_position = num_workers, resume_position
        self._train_loader: ResumableLoader | None = None
        if self.val_sources:  # without held-out sources there is no val_dataloader, so no validation loop
            self.val_dataloader = self._val_dataloader

    def setup(self, stage: str) -> None:
        self._use_policy_tokenizer()
        kwargs = (self.trainer.distributed_sampler_kwargs or {}) if self.trainer is not None else {}
        rank, size = kwargs.get("rank", 0), kwargs.get("num_replicas", 1)
        for ds in (self.train_set, self.val_set):
            ds.set_data_parallel(rank, size)

    def _use_policy_tokenizer(self) -> None:
        """One tokenizer per run: take the policy's (tokenizer=None), or check that ours equals it."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        policy_tok = getattr(module, "tokenizer", None)
        if policy_tok is None:
            return
        if self.tokenizer_path is None:
            self.tokenizer = policy_tok
            for ds in (self.train_set, self.val_set):
                ds.set_tokenizer(policy_tok)
            return
        diffs = tokenizer_differences(self.tokenizer, policy_tok)
        if diffs:
            where = getattr(module, "tokenizer_path", None) or "the shipped tokenizer (ring_lightning/assets/tokenizer)"
            raise ValueError(
                f"SFTDataModule tokenizer {self.tokenizer_path} differs from the policy's tokenizer "
                f"({type(module).__name__}: {where}) in: {'; '.join(diffs)}. Batches would be encoded with one "
                "tokenizer and trained/decoded with the other. Set data.init_args.tokenizer: null (the policy's), "
                "or make model.init_args.tokenizer the same directory")

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        self._train_loader = ResumableLoader(self.train_set, self._epoch, restore=self.resume_position,
                                             trainer_fn=lambda: self.trainer, num_workers=self.num_workers,
                                             persistent_workers=False, pin_memory=False)
        return self._train_loader

    def _val_dataloader(self) -> DataLoader:
        return _EpochLoader(self.val_set, self._epoch, num_workers=self.num_workers, persistent_workers=False,
                            pin_memory=False)

    def on_before_batch_transfer(self, batch: PackedBatch, dataloader_idx: int) -> PackedBatch:
        """Lightning calls this for each micro-batch it is about to train on (not when it prefetches)."""
        if self._train_loader is not None and self.trainer is not None and self.trainer.training:
            self._train_loader.mark_consumed()
        return batch
