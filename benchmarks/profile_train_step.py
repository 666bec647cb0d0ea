"""Where an RL training step's time goes, without the engine: reference forward, policy forward,
backward, clip + AdamW of one micro-batch, per step, and optionally a `torch.profiler` table.

The step is the RL module's own path (`rl/logits.py:masked_logprobs_and_entropy`: decoder forward,
loss rows gathered, chunked head) on `rows` random sequences of `prompt` + `response` tokens with the
loss on the response tokens; the loss is their mean logprob (the objective's arithmetic is negligible
here); the reference model is a copy of the starting policy, as in `RLModule`. Every step is printed,
none left out, so warm-up shows (the first AdamW step allocates the moments). `--bf16` runs both forwards
under `torch.autocast("cpu", torch.bfloat16)`, as Lightning's `bf16-mixed` does (fp32 weights and AdamW
state; the backward follows the forward's dtypes). docs/design.md#benchmarks
quotes this script's figures.

    python benchmarks/profile_train_step.py --model runs/bench/models/qwen3-moe-mid --threads 2 --steps 5
    python benchmarks/profile_train_step.py --model runs/bench/models/qwen3-moe-mid --profile   # + op table
    python benchmarks/profile_train_step.py --model runs/bench/models/qwen3-moe-mid --bf16   # bf16 autocast
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4 python benchmarks/profile_train_step.py ...  # allocator

Numbers depend on the machine and its load; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ring_lightning.rl.logits import masked_logprobs_and_entropy  # noqa: E402


def micro_batch(rows: int, prompt: int, response: int, vocab: int, seed: int = 0) -> SimpleNamespace:
    """A right-aligned batch of `rows` sequences: loss on the `response` targets after each prompt."""
    T = prompt + response
    ids = torch.randint(0, vocab, (rows, T), generator=torch.Generator().manual_seed(seed))
    loss_mask = torch.zeros(rows, T, dtype=torch.bool)
    loss_mask[:, prompt - 1:T - 1] = True
    return SimpleNamespace(input_ids=ids, target_ids=ids.roll(-1, 1), attention_mask=torch.ones_like(ids),
                           position_ids=torch.arange(T).expand(rows, T), loss_mask=loss_mask)


def train_step(policy, ref, opt, mb, bf16: bool = False) -> dict[str, float]:
    """Seconds of each phase of one step (reference forward only when `ref` is given; `bf16`: autocast)."""
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    t0 = time.perf_counter()
    if ref is not None:
        with torch.no_grad(), autocast():
            masked_logprobs_and_entropy(ref, mb)
    t1 = time.perf_counter()
    with autocast():
        _, logp, _ = masked_logprobs_and_entropy(policy, mb, with_aux=True)
    t2 = time.perf_counter()
    (logp.sum() / max(int(mb.loss_mask.sum()), 1)).backward()
    t3 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    t4 = time.perf_counter()
    return {"ref": t1 - t0, "fwd": t2 - t1, "bwd": t3 - t2, "opt": t4 - t3, "total": t4 - t0}


def main(argv=None) -> list[dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen3-moe-tiny", help="HF model directory or ring_lightning preset")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=50)
    ap.add_argument("--response", type=int, default=256)
    ap.add_argument("--no-ref", action="store_true", help="no reference model (β = 0)")
    ap.add_argument("--bf16", action="store_true", help="forwards under bf16 autocast (Lightning's bf16-mixed)")
    ap.add_argument("--profile", action="store_true", help="profile one more step; print the top ops by self time")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from ring_lightning.models.loading import load_policy

    policy = load_policy(args.model, seed=0)[0].train()
    ref = None if args.no_ref else copy.deepcopy(policy).eval().requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    mb = micro_batch(args.rows, args.prompt, args.response, min(policy.config.vocab_size, 1000))
    print(f"model={args.model} threads={args.threads} rows={args.rows} x ({args.prompt} + {args.response}) tokens, "
          f"loss tokens {int(mb.loss_mask.sum())}, reference {'no' if ref is None else 'yes'}, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}")
    steps = []
    for i in range(args.steps):
        steps.append(train_step(policy, ref, opt, mb, args.bf16))
        print(f"step {i + 1}: " + "  ".join(f"{k} {v:.3f} s" for k, v in steps[-1].items()))
    if args.profile:
        from torch.profiler import profile

        with profile(record_shapes=True) as prof:
            train_step(policy, ref, opt, mb, args.bf16)
        print(prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=30, max_shapes_column_width=80))
    return steps


if __name__ == "__main__":
    main()
