"""Mid-epoch resume of the SFT data stream: a resumed loader continues with exactly the next micro-batch
(Lightning's prefetch included), for synthetic and streamed JSONL sources, with workers, across epoch
ends and across a change of the number of data-parallel ranks; a changed stream is refused."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ring_lightning.data.sft.datamodule import ResumableLoader, SFTDataModule


def data(**kwargs) -> SFTDataModule:
    args = dict(train=["synthetic:mixed"], micro_batch_tokens=256, shuffle_buffer=16, synthetic_train_rows=60)
    return SFTDataModule(**{**args, **kwargs})


def same(a, b) -> bool:
    return torch.equal(a.input_ids, b.input_ids) and torch.equal(a.targets, b.targets) and \
        torch.equal(a.stats, b.stats)


def consume(loader: ResumableLoader, k: int, prefetch: int = 1) -> list:
    """Train on k micro-batches the way Lightning does: fetch one ahead, count what is trained on."""
    it = iter(loader)
    got = [next(it) for _ in range(k + prefetch)]
    for _ in range(k):
        loader.mark_consumed()
    return got[:k]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_resumed_loader_continues_with_the_next_micro_batch(tmp_path, num_workers):
    rows = [{"prompt": f"What is {i} + {i}?", "response": f"<think>\n{i}+{i}={2 * i}\n</think>\n\\boxed{{{2 * i}}}"}
            for i in range(40)]
    jsonl = tmp_path / "sft.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sources = [str(jsonl), "synthetic:arithmetic"]  # a file read in streaming mode, then a synthetic one
    full = list(data(train=sources).train_set)
    assert len(full) > 8
    first = data(train=sources, num_workers=num_workers).train_dataloader()
    assert all(same(a, b) for a, b in zip(consume(first, 5), full))
    state = first.state_dict()
    assert (state["epoch"], state["position"]) == (0, 5)
    resumed = data(train=sources, num_workers=num_workers).train_dataloader()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(full) - 5 and all(same(a, b) for a, b in zip(rest, full[5:]))
    assert resumed.state_dict()["position"] == 5  # nothing of the resumed pass trained on yet
    again = list(resumed)  # the loaded position applies to one pass only; the next starts at 0
    assert len(again) == len(full) and all(same(a, b) for a, b in zip(again, full))


def test_position_is_global_so_the_number_of_ranks_may_change():
    full = list(data().train_set)
    ranks = []
    for rank in range(2):
        dm = data()
        dm.train_set.set_data_parallel(rank, 2)
        loader = dm.train_dataloader()
        ranks.append(consume(loader, 3))
    assert all(same(a, b) for a, b in zip([b for pair in zip(*ranks) for b in pair], full[:6]))
    assert loader.state_dict()["position"] == 6  # 3 micro-batches on each of 2 ranks
    single = data().train_dataloader()
    single.load_state_dict(loader.state_dict())
    rest = list(single)  # one rank takes over at micro-batch 6
    assert len(rest) == len(full) - 6 and all(same(a, b) for a, b in zip(rest, full[6:]))


def test_a_changed_stream_is_refused_naming_the_setting():
    loader = data().train_dataloader()
    consume(loader, 2)
    state = loader.state_dict()
    other = data(micro_batch_tokens=512).train_dataloader()
    with pytest.raises(ValueError, match=r"micro_batch_tokens=256, this run has micro_batch_tokens=512 .*"
                                         r"resume_position=false"):
        other.load_state_dict(state)
    restart = data(micro_batch_tokens=512, resume_position=False).train_dataloader()
    with pytest.warns(UserWarning, match="restarts from its beginning"):
        restart.load_state_dict(state)
    assert len(list(restart)) == len(list(data(micro_batch_tokens=512).train_set))


class Recorder(L.LightningModule):
    """Records which micro-batches it trains on (no model: the data stream is under test)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[int, tuple[int, ...]]] = []  # (optimizer step, first tokens) per micro-batch

    def training_step(self, batch, batch_idx):
        self.seen.append((self.global_step, tuple(batch.input_ids[0].tolist())))
        return self.w * batch.num_tokens.float()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def fit(dm: SFTDataModule, max_steps: int, ckpt_dir=None, ckpt_path=None) -> Recorder:
    module = Recorder()
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, filename="{step}", every_n_train_steps=1, save_top_k=-1),
                 ModelCheckpoint(dirpath=ckpt_dir, filename="end-of-epoch-{epoch}", every_n_epochs=1, save_top_k=-1)
                 ] if ckpt_dir else []
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, accumulate_grad_batches=2, logger=False,
                        callbacks=callbacks, enable_checkpointing=bool(ckpt_dir), enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return module


def test_trainer_resumes_mid_epoch_and_at_epoch_ends_with_the_next_micro_batch(tmp_path):
    """Every step's checkpoint and every end-of-epoch checkpoint resumes with the micro-batches, and the
    optimizer-step grouping under accumulation, of the uninterrupted run."""
    small = dict(synthetic_train_rows=14, shuffle_buffer=8)  # a few micro-batches per epoch: epochs end often
    per_epoch = len(list(data(**small).train_set))
    assert per_epoch % 2 == 1  # an odd epoch: its last optimizer step takes one micro-batch
    steps = per_epoch + 2  # accumulation 2: about two epochs
    whole = fit(data(**small), steps, ckpt_dir=tmp_path).seen
    assert len(whole) > 2 * per_epoch
    assert [ids for _, ids in whole[:per_epoch]] != [ids for _, ids in whole[per_epoch:2 * per_epoch]]  # reshuffled
    ckpts = sorted(tmp_path.glob("*.ckpt"))
    names = {c.name for c in ckpts}
    assert {f"step={i}.ckpt" for i in range(1, steps)} | {"end-of-epoch-epoch=0.ckpt", "end-of-epoch-epoch=1.ckpt"} <= names
    for ckpt in ckpts:
        step = torch.load(ckpt, weights_only=False)["global_step"]
        resumed = fit(data(**small), steps, ckpt_path=ckpt).seen
        assert resumed == [s for s in whole if s[0] >= step], f"resumed from {ckpt.name} (epoch of {per_epoch})"
