"""Packing: best-fit bins, per-document positions/targets, the block-diagonal mask, rank sharding."""

from __future__ import annotations

import pytest
import torch

from ring_lightning.data.sft.packing import (IGNORE_INDEX, TokenizedDoc, block_diagonal_mask, collate_packed,
                                         pack_documents)
from ring_lightning.data.sft.datamodule import PackedSFTDataset
from ring_lightning.models.loading import load_tokenizer


def doc(n: int, start: int = 10, assistant_from: int = 0, where: str = "") -> TokenizedDoc:
    return TokenizedDoc(tuple(range(start, start + n)), tuple(i >= assistant_from for i in range(n)), where)


def test_best_fit_fills_the_tightest_open_row_and_keeps_every_document():
    docs = [doc(6, where="a"), doc(5, where="b"), doc(4, where="c"), doc(3, where="d"), doc(1, where="e")]
    rows = list(pack_documents(docs, micro_batch_tokens=10, open_bins=4))
    # a(6) opens row 1, b(5) row 2, c(4) fits row 1 exactly (free 4), d(3) goes to row 2 (free 5 -> 2),
    # e(1) goes to the tightest row that fits: row 2 (free 2)
    assert [[d.where for d in row] for row in rows] == [["a", "c"], ["b", "d", "e"]]
    assert all(sum(len(d) for d in row) <= 10 for row in rows)


def test_full_open_bins_emit_the_fullest_row_first():
    docs = [doc(7, where="a"), doc(8, where="b"), doc(9, where="c")]
    rows = list(pack_documents(docs, micro_batch_tokens=10, open_bins=2))
    # b (8 of 10) was the fullest open row when c needed a new one; the rest flush in opening order
    assert [[d.where for d in row] for row in rows] == [["b"], ["a"], ["c"]]


def test_too_long_document_is_an_error_naming_it():
    with pytest.raises(ValueError, match="x.jsonl row 3.*exceeds micro_batch_tokens=4"):
        list(pack_documents([doc(5, where="x.jsonl row 3")], micro_batch_tokens=4))


def test_collate_restarts_positions_and_never_predicts_across_documents():
    a = doc(4, start=100, assistant_from=2)  # tokens 100..103, assistant tokens 102, 103
    b = doc(3, start=200, assistant_from=1)  # tokens 200..202, assistant tokens 201, 202
    batch = collate_packed([a, b], micro_batch_tokens=10, pad_id=0, stats=(2, 2, 0, 0, 0))
    assert batch.input_ids.tolist() == [[100, 101, 102, 103, 200, 201, 202, 0, 0, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1, 2]]
    assert batch.doc_ids.tolist() == [[0, 0, 0, 0, 1, 1, 1, -1, -1, -1]]
    I = IGNORE_INDEX
    # position t predicts token t+1 when that token is an assistant token of the same document
    assert batch.targets.tolist() == [[I, 102, 103, I, 201, 202, I, I, I, I]]
    assert (int(batch.num_loss_tokens), int(batch.num_tokens), int(batch.num_padding)) == (4, 7, 3)
    assert batch.token_mask.tolist() == [[1] * 7 + [0] * 3]
    assert batch.stats.tolist() == [2, 2, 0, 0, 0]
    empty = collate_packed([], micro_batch_tokens=4, pad_id=0)
    assert int(empty.num_loss_tokens) == 0 and empty.doc_ids.tolist() == [[-1] * 4]
    moved = batch.to("cpu")
    assert torch.equal(moved.targets, batch.targets)


def test_block_diagonal_mask_is_causal_within_documents_only():
    doc_ids = torch.tensor([[0, 0, 1, 1, 1, -1]])
    mask = block_diagonal_mask(doc_ids)[0, 0]
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(mask, expected)
    additive = block_diagonal_mask(doc_ids, torch.float32)[0, 0]
    assert torch.equal(additive == 0, expected) and additive.min() == torch.finfo(torch.float32).min


def _dataset(rows: int, micro_batch_tokens: int = 256, open_bins: int = 4) -> PackedSFTDataset:
    return PackedSFTDataset(["synthetic:arithmetic"], "train", load_tokenizer(), micro_batch_tokens=micro_batch_tokens,
                            max_length=micro_batch_tokens, overlong="truncate", skip_bad_rows=False,
                            shuffle_buffer=0, open_bins=open_bins, seed=0, synthetic_rows=(rows, 4))


def test_ranks_split_the_single_process_stream_and_take_equal_steps():
    single = [b.input_ids for b in _dataset(23)]
    assert len(single) % 2 == 1  # odd: rank 1 needs one empty micro-batch
    shards = []
    for rank in range(2):
        ds = _dataset(23)
        ds.set_data_parallel(rank, 2)
        shards.append(list(ds))
    assert len(shards[0]) == len(shards[1]) == (len(single) + 1) // 2
    interleaved = [b.input_ids for pair in zip(*shards) for b in pair]
    for i, ids in enumerate(single):
        assert torch.equal(interleaved[i], ids)
    padding = shards[1][-1]
    assert int(padding.num_loss_tokens) == 0 and int(padding.num_tokens) == 0


def test_packing_wastes_under_two_percent_in_steady_state():
    batches = list(_dataset(2000, micro_batch_tokens=1024, open_bins=64))
    assert sum(int(b.num_tokens) for b in batches) > 2000 * 60  # every document is in some row
    steady = batches[:-64]  # the last open_bins rows are the stream's partial tail
    real = sum(int(b.num_tokens) for b in steady)
    pad = sum(int(b.num_padding) for b in steady)
    assert pad / (real + pad) < 0.02


def test_loader_workers_preserve_the_stream_order():
    from ring_lightning.data.sft.datamodule import SFTDataModule

    dm = SFTDataModule(train=["synthetic:arithmetic"], micro_batch_tokens=256, shuffle_buffer=0,
                       synthetic_train_rows=30, num_workers=2)
    single = list(dm.train_set)
    assert len(single) >= 3
    loaded = list(dm.train_dataloader())  # two worker processes, each building its share
    assert len(loaded) == len(single) + len(single) % 2  # padded to a multiple of the workers
    for a, b in zip(loaded, single):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.targets, b.targets)
