"""Peak memory of one RL micro-batch forward+backward: full logits (RLModule._forward before rl/logits.py) vs
ring_lightning/rl/logits.py (loss positions only, chunked + checkpointed head).

CPU only (no GPU here). Two figures per (shape, path), each run in a fresh subprocess with
MALLOC_MMAP_THRESHOLD_=65536 (every block > 64 KiB is mmapped and returned to the OS when freed, so
the resident set follows live memory; checked on token_logprobs_and_entropy alone: 650 MiB measured
vs ~640 MiB by hand). torch.profiler's memory events were tried and dropped: they miss the ops run
inside a custom autograd.Function (256 MiB reported where 650 MiB are live).
  peak_rss_delta  peak resident set (ru_maxrss) minus the RSS just before fwd+bwd: the step's peak
              (weights and Python excluded; parameter gradients included, the same in both paths)
  saved       bytes autograd holds for backward at the end of the forward (saved_tensors_hooks;
              a tensor saved twice counts twice)

Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rl_logits_memory.py            (all shapes, all PATHS)
       OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rl_logits_memory.py one SHAPE PATH   (one run, JSON)
"""

import json
import os
import resource
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from ring_lightning.models.loading import load_policy  # noqa: E402
from ring_lightning.models.router_losses import num_experts, router_aux_losses  # noqa: E402
from ring_lightning.rl.batch import Response, collate  # noqa: E402
from ring_lightning.rl.budget import Piece  # noqa: E402
from ring_lightning.rl.logits import masked_logprobs_and_entropy  # noqa: E402
from ring_lightning.rl.losses import token_logprobs_and_entropy  # noqa: E402

# name: (preset, overrides, dtype, rows, prompt tokens, response tokens)
SHAPES = {
    # quickstart: micro_batch_tokens 4096, prompts <= 128, responses <= 64 (configs/quickstart/rl_*.yaml)
    "quickstart": ("bailing-quickstart", {}, "float32", 21, 128, 64),
    # issue 16's bigger shape: 4 rows x 2048 tokens, 1024 prompt tokens, Ring-lite's vocabulary
    "big-4x2048-v126k": ("bailing-tiny", {"vocab_size": 126464, "norm_head": False}, "bfloat16", 4, 1024, 1025),
}


# "old" = full logits; "new-N" = rl/logits.py with chunk_tokens=N (4096 is its default)
PATHS = ("old", "new-4096", "new-1024")


def micro_batch(vocab, rows, prompt, response):
    g = torch.Generator().manual_seed(0)
    rs = [Response(prompt_ids=torch.randint(3, vocab, (prompt,), generator=g),
                   response_ids=torch.randint(3, vocab, (response,), generator=g),
                   reward=float(i % 2), group_id=0, advantage=0.5 - i % 2) for i in range(rows)]
    return collate(rs, [Piece(i, 0, response) for i in range(rows)], normalizer=rows * response)


def old_path(model, mb):
    kw = dict(input_ids=mb.input_ids, attention_mask=mb.attention_mask, position_ids=mb.position_ids,
              use_cache=False)
    if num_experts(model) > 0:
        kw["output_router_logits"] = True
    out = model(**kw)
    return (out, *token_logprobs_and_entropy(out.logits, mb.target_ids))


def new_path(model, mb, chunk_tokens):
    return masked_logprobs_and_entropy(model, mb, with_aux=True, chunk_tokens=chunk_tokens)


def step(model, mb, path, saved):
    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, logp, ent = old_path(model, mb) if path == "old" else new_path(model, mb, int(path.split("-")[1]))
        m = mb.loss_mask.to(logp)
        loss = (mb.advantages * logp * m).sum() / mb.normalizer - 0.01 * (ent * m).sum() / mb.normalizer
        aux = router_aux_losses(out, model, token_mask=mb.attention_mask)
        loss = loss + aux["loss"] if aux else loss
    loss.backward()


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def one(shape, path):
    preset, over, dtype, rows, prompt, response = SHAPES[shape]
    model = load_policy(preset, seed=0, dtype=dtype, **over)[0].train()
    mb = micro_batch(model.config.vocab_size, rows, prompt, response)
    saved = []
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    step(model, mb, path, saved)
    secs = time.perf_counter() - t0
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    B, T = mb.input_ids.shape
    return dict(shape=shape, path=path, B=B, T=T, V=model.config.vocab_size, H=model.config.hidden_size,
                dtype=dtype, loss_tokens=mb.num_loss_tokens,
                saved_MiB=sum(saved) / 2**20, rss_before_MiB=rss0 / 2**20,
                maxrss_delta_MiB=(maxrss - rss0) / 2**20, seconds=secs)


def main():
    rows = []
    for shape in SHAPES:
        for path in PATHS:
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
            p = subprocess.run([sys.executable, __file__, "one", shape, path], capture_output=True, text=True,
                               env=env)
            if p.returncode != 0:
                raise SystemExit(p.stderr[-3000:])
            rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| shape | B×T | V | dtype | loss tokens | path | peak RSS delta MiB | saved for bwd MiB | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['B']}×{r['T']} | {r['V']} | {r['dtype']} | {r['loss_tokens']} | {r['path']} | "
              f"{r['maxrss_delta_MiB']:.0f} | {r['saved_MiB']:.0f} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "one":
        print(json.dumps(one(sys.argv[2], sys.argv[3])))
    else:
        main()
