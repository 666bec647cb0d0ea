"""Throughput of `prepare` (cleaning + dedup + decontamination) on synthetic prompt rows.

    .venv/bin/python benchmarks/bench_prepare.py --rows 100000 --num_proc 2

Generates `--rows` synthetic math rows (random Zipf-distributed words, so the MinHash index sees
realistic diversity) with planted exact duplicates (~5%), near duplicates (~5%, one word changed),
contaminated rows (~1%, a 15-word span of a benchmark item), image / multiple-choice rows (~4%),
and a 500-item benchmark file; runs the real `Prepare` job (verify and difficulty off) and prints
rows/s overall and seconds per stage, plus how many planted rows each stage caught.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import tempfile
import time
from pathlib import Path

from ring_lightning.prepare.clean import Cleaner
from ring_lightning.prepare.decontam import BenchmarkSpec, Decontaminator
from ring_lightning.prepare.dedup import Deduplicator
from ring_lightning.prepare.difficulty import DifficultyFilter
from ring_lightning.prepare.verify import AnswerVerifier
from ring_lightning.prepare.pipeline import InputSpec, Prepare


def make_words(rng: random.Random, n: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(n)]


def sentence(rng: random.Random, vocab: list[str], cum_weights: list[float], n: int) -> str:
    toks = rng.choices(vocab, cum_weights=cum_weights, k=n)
    for _ in range(rng.randint(1, 4)):  # a few numbers and math symbols
        toks.insert(rng.randrange(len(toks)), rng.choice([str(rng.randint(0, 999)), "$x^2$", "+", "=", "\\frac{1}{2}"]))
    return " ".join(toks).capitalize() + "?"


def generate(path: Path, bench_path: Path, rows: int, seed: int = 0) -> dict[str, int]:
    rng = random.Random(seed)
    vocab = make_words(rng, 20000)
    weights = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(vocab))))  # Zipf, cumulative
    bench = [sentence(rng, vocab, weights, rng.randint(25, 60)) for _ in range(500)]
    bench_path.write_text("".join(json.dumps({"problem": b, "id": f"b{i}"}) + "\n" for i, b in enumerate(bench)))
    planted = {"exact": 0, "near": 0, "contaminated": 0, "clean_rule": 0}
    made: list[str] = []
    with path.open("w") as f:
        for i in range(rows):
            r = rng.random()
            if made and r < 0.05:
                text = "  " + rng.choice(made).upper() + " "
                planted["exact"] += 1
            elif made and r < 0.10:
                toks = rng.choice(made).split()
                if len(toks) < 30:
                    toks += rng.choices(vocab, k=30)
                toks[rng.randrange(len(toks))] = rng.choice(vocab)
                text = " ".join(toks)
                planted["near"] += 1
            elif r < 0.11:
                btoks = rng.choice(bench).split()
                start = rng.randrange(max(1, len(btoks) - 15))
                text = sentence(rng, vocab, weights, 20) + " " + " ".join(btoks[start:start + 15])
                planted["contaminated"] += 1
            elif r < 0.13:
                text = sentence(rng, vocab, weights, 30) + " ![figure](fig.png)"
                planted["clean_rule"] += 1
            elif r < 0.15:
                text = sentence(rng, vocab, weights, 30) + "\n(A) 1\n(B) 2\n(C) 3\n(D) 4"
                planted["clean_rule"] += 1
            else:
                text = sentence(rng, vocab, weights, rng.randint(30, 90))
                made.append(text)
            f.write(json.dumps({"id": f"r{i}", "domain": "math", "prompt": text, "answer": str(rng.randint(1, 999))}) + "\n")
    return planted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--num_proc", type=int, default=2)
    ap.add_argument("--batch_size", type=int, default=1000)
    ap.add_argument("--streaming", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        planted = generate(tmp / "raw.jsonl", tmp / "bench.jsonl", args.rows)
        print(f"generated {args.rows} rows in {time.perf_counter() - t0:.1f}s; planted {planted}")
        job = Prepare(
            inputs=[InputSpec(path=str(tmp / "raw.jsonl"))], output=str(tmp / "out.parquet"),
            streaming=args.streaming, num_proc=args.num_proc, batch_size=args.batch_size,
            clean=Cleaner(), dedup=Deduplicator(),
            decontam=Decontaminator(benchmarks=[BenchmarkSpec(name="bench", path=str(tmp / "bench.jsonl"))]),
            verify=AnswerVerifier(enabled=False), difficulty=DifficultyFilter(enabled=False))
        cpu0 = os.times()
        summary = job.run()
        cpu1 = os.times()
    cpu = sum(getattr(cpu1, k) - getattr(cpu0, k) for k in ("user", "system", "children_user", "children_system"))
    print(f"\nprepare (clean + dedup + decontam), {args.rows} rows, num_proc={args.num_proc}, "
          f"streaming={args.streaming}:")
    for st in summary["stages"]:
        if st["enabled"] and st["stage"] not in ("verify", "difficulty"):
            secs = f"{st['seconds']:7.1f}s" if "seconds" in st else "   lazy"
            print(f"  {st['stage']:>9}: {secs}  in {st['in']:>7}  out {st['out']:>7}  removed {st['removed']}")
    if summary["write_seconds"] is not None:
        print(f"  {'write':>9}: {summary['write_seconds']:7.1f}s")
    print(f"total {summary['seconds']:.1f}s -> {summary['rows_per_second']:.0f} rows/s "
          f"(load, 3 stages and writing the output included)")
    print(f"CPU time (this process + workers): {cpu:.1f}s -> {args.rows / cpu:.0f} rows per CPU-second "
          f"(independent of other load on the machine; load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
