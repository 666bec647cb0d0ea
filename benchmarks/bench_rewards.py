"""Reward throughput per domain (samples/s), and sandboxed code executions/s.

    python benchmarks/bench_rewards.py [--n 64] [--code-workers 0] [--skip-rm] [--repeat 3]

Prints one line per reward (the `bench_*` functions also return the figures; `benchmarks/run.py`
uses them). Workloads are small synthetic ones (half right, half wrong answers); figures depend on
the CPU count and load: each workload is timed `--repeat` times and the best pass is reported (a
pass of the fast rewards takes well under a millisecond, so one pass is mostly scheduler noise),
with the first pass beside it (per-prompt caches cold: in RL each prompt is scored K times).
Code: stdio tasks (3 cases each) and assert tasks; "executions/s" counts test-case executions
(stdio) and sandbox runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, Python puts benchmarks/ first on sys.path and the editable install then resolves
# ring_lightning as a namespace package (package data lookups fail); import it from the repo root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ring_lightning.rows import PromptRow  # noqa: E402

REPEAT = 3  # timed passes per workload (--repeat); the best one is reported, the first one too


def row(domain: str, i: int, **fields) -> PromptRow:
    return PromptRow(id=f"{domain}-{i}", domain=domain, messages=({"role": "user", "content": "q"},), **fields)


def timed(name: str, fn, rows, responses, unit_per_sample: float = 1.0, unit: str = "", quiet: bool = False
          ) -> dict[str, float | str]:
    """Score `responses` `REPEAT` times after a 2-sample warm-up; the best pass's samples/s (and
    `unit`/s), the first pass's samples/s (``first_samples_s``: per-prompt caches still cold) and the
    mean reward."""
    fn(rows[:2], responses[:2])  # warm-up: worker start-up, imports
    times = []
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        out = fn(rows, responses)
        times.append(time.perf_counter() - t0)
    dt = min(times)
    mean = sum(r.reward for r in out) / len(out)
    result = {"name": name, "samples": float(len(rows)), "seconds": dt, "samples_s": len(rows) / dt,
              "first_samples_s": len(rows) / times[0],
              "unit": unit, "unit_s": len(rows) * unit_per_sample / dt if unit else float("nan"), "mean_reward": mean}
    if not quiet:
        extra = f", {result['unit_s']:8.1f} {unit}/s" if unit else ""
        print(f"{name:<28} {len(rows):5d} samples in {dt:7.3f} s: {len(rows) / dt:9.1f} samples/s{extra}"
              f"  (first pass {result['first_samples_s']:9.1f}/s; mean reward {mean:.2f})")
    return result


def bench_math(n: int, quiet: bool = False) -> list[dict]:
    from ring_lightning.rewards.math import MathReward

    reward = MathReward(num_workers=max(1, (os.cpu_count() or 2)))
    rows = [row("math", i, answer=f"\\frac{{{i}}}{{{i + 1}}}") for i in range(n)]
    responses = [f"<think>...</think> \\boxed{{{i}/{i + 1 + (i % 2)}}}" for i in range(n)]
    out = [timed("math (math-verify)", reward, rows, responses, quiet=quiet)]
    reward.close()
    return out


def bench_code(n: int, workers: int, quiet: bool = False) -> list[dict]:
    from ring_lightning.rewards.code.reward import CodeReward

    reward = CodeReward(max_workers=workers)
    stdio = {"type": "stdio", "cases": [{"input": f"{a} {a + 1}\n", "output": f"{2 * a + 1}\n"} for a in range(3)]}
    rows = [row("code", i, tests=stdio) for i in range(n)]
    good = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    bad = "```python\na, b = map(int, input().split())\nprint(a * b)\n```"
    responses = [good if i % 2 == 0 else bad for i in range(n)]
    # Wrong programs stop at their first failing case (early stop), right ones run all 3.
    out = [timed(f"code stdio x3 ({reward.sandbox.isolation})", reward, rows, responses, 2.0, "case executions",
                 quiet=quiet)]
    asserts = {"type": "assert", "code": "assert add(1, 2) == 3\nassert add(2, 2) == 4\nassert add(0, 0) == 0\n"}
    rows = [row("code", i, tests=asserts) for i in range(n)]
    responses = ["```python\ndef add(a, b):\n    return a + b" + (" + 1" if i % 2 else "") + "\n```" for i in range(n)]
    out.append(timed("code assert x3", reward, rows, responses, 1.0, "sandbox runs", quiet=quiet))
    return out


def bench_logic(n: int, quiet: bool = False, tasks: tuple[str, ...] = ("countdown", "sudoku", "maze")) -> list[dict]:
    from ring_lightning.rewards.logic import LogicReward, make_logic_rows

    reward = LogicReward()
    out = []
    for task in tasks:
        rows = make_logic_rows(task, n, seed=0)
        responses = [f"<answer>{r.answer}</answer>" if i % 2 == 0 else "<answer>1</answer>" for i, r in enumerate(rows)]
        out.append(timed(f"logic {task}", reward, rows, responses, quiet=quiet))
    return out


def bench_instruction(n: int, quiet: bool = False) -> list[dict]:
    from ring_lightning.rewards.instruction import InstructionReward

    inst = ({"id": "length_constraints:number_words", "kwargs": {"num_words": 20, "relation": "at least"}},
            {"id": "punctuation:no_comma", "kwargs": {}}, {"id": "detectable_format:title", "kwargs": {}},
            {"id": "language:response_language", "kwargs": {"language": "en"}})
    rows = [row("instruction", i, instructions=inst) for i in range(n)]
    text = "<<A title>>\n" + "this is the answer and it is written in plain english words " * 3
    responses = [text if i % 2 == 0 else text + ", with a comma" for i in range(n)]
    return [timed("instruction (4 rules)", InstructionReward(), rows, responses, quiet=quiet)]


def bench_reward_model(n: int, quiet: bool = False) -> list[dict]:
    import torch
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    from ring_lightning.models.loading import load_tokenizer
    from ring_lightning.rewards.reward_model import RewardModelReward

    tok = load_tokenizer()
    with tempfile.TemporaryDirectory() as d:
        torch.manual_seed(0)
        cfg = Qwen3Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_labels=1,
                          pad_token_id=tok.pad_token_id)
        Qwen3ForSequenceClassification(cfg).save_pretrained(d)
        tok.save_pretrained(d)
        reward = RewardModelReward(d, batch_size=16)
        rows = [row("general", i) for i in range(n)]
        responses = ["a reasonably long open-ended answer " * 8 for _ in range(n)]
        return [timed("reward model (tiny Qwen3)", reward, rows, responses, quiet=quiet)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=64, help="samples per workload")
    ap.add_argument("--code-workers", type=int, default=0, help="concurrent sandboxes (0 = CPU count)")
    ap.add_argument("--skip-rm", action="store_true", help="skip the reward-model benchmark (imports torch)")
    ap.add_argument("--repeat", type=int, default=REPEAT, help="timed passes per workload (best reported)")
    args = ap.parse_args()
    globals()["REPEAT"] = max(1, args.repeat)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    bench_instruction(args.n)
    bench_logic(args.n)
    bench_math(args.n)
    bench_code(args.n, args.code_workers)
    if not args.skip_rm:
        bench_reward_model(args.n)


if __name__ == "__main__":
    main()
