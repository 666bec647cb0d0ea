"""Packed SFT training throughput and padding waste (prints figures; asserts nothing).

    python benchmarks/bench_sft.py [--model bailing-tiny] [--micro-batch-tokens 1024] [--steps 20]

Packs the built-in synthetic long-CoT data (data/synthetic.py) with SFTDataModule's packer and
times SFTModule's forward + backward + AdamW step on each micro-batch (after 3 warm-up steps).
Reports non-padding training tokens/s and the padding fraction: over all micro-batches of the
stream, and in steady state (without the last `open_bins` rows, which flush partially filled).
"""

from __future__ import annotations

import argparse
import time

import torch

from ring_lightning.data.sft import SFTDataModule
from ring_lightning.modules.sft import SFTModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bailing-tiny")
    parser.add_argument("--micro-batch-tokens", type=int, default=1024)
    parser.add_argument("--rows", type=int, default=2000, help="synthetic conversations to pack")
    parser.add_argument("--open-bins", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed micro-batches")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dm = SFTDataModule(train=["synthetic:mixed"], micro_batch_tokens=args.micro_batch_tokens,
                       synthetic_train_rows=args.rows, shuffle_buffer=1000, open_bins=args.open_bins)
    t0 = time.perf_counter()
    batches = list(dm.train_set)
    prep = time.perf_counter() - t0
    real = sum(int(b.num_tokens) for b in batches)
    pad = sum(int(b.num_padding) for b in batches)
    steady = batches[:-args.open_bins] if len(batches) > args.open_bins else batches
    s_real, s_pad = sum(int(b.num_tokens) for b in steady), sum(int(b.num_padding) for b in steady)
    print(f"data: {args.rows} conversations -> {len(batches)} micro-batches of {args.micro_batch_tokens} tokens "
          f"in {prep:.2f}s ({real / prep:,.0f} tokens/s templating + packing)")
    print(f"padding fraction: {pad / (real + pad):.4f} over the stream, {s_pad / max(s_real + s_pad, 1):.4f} "
          f"in steady state (target < 0.02)")

    module = SFTModule(model=args.model, seed=0, lr=1e-3)
    module.configure_model()
    opt = torch.optim.AdamW(module.policy.parameters(), lr=1e-3, weight_decay=0.1)
    n_params = sum(p.numel() for p in module.policy.parameters())
    timed = tokens = 0
    elapsed = 0.0
    for i, batch in enumerate(batches[: args.steps + 3]):
        start = time.perf_counter()
        ce, n, aux, _ = module._forward(batch)
        loss = (ce + n * aux["loss"] if aux else ce) / n.clamp_min(1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 3:
            elapsed += time.perf_counter() - start
            tokens += int(batch.num_tokens)
            timed += 1
    print(f"train: {args.model} ({n_params / 1e6:.2f}M params), {timed} micro-batches, "
          f"{tokens / elapsed:,.0f} non-padding tokens/s ({elapsed / timed * 1000:.1f} ms per micro-batch, "
          f"{torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
