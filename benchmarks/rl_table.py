"""The RL section's rows of `benchmarks/run.py`, built from `bench_rl_step.compare` results.

Per system (a name, optionally `@threads` and `:precision`): end-to-end tokens/s, seconds per step and
its split, CPU seconds, generation / training tokens/s, and the training part's achieved FLOP/s against
the machine's measured fp32 matmul peak at the system's thread count (bf16 systems also against the bf16
peak). Then each base system's best setting (threads and precision with the lowest seconds per step),
and every one of our systems against TRL at *its* best setting.

Training FLOPs (stated in the table): 6 x N x T, N = active parameters per token without the input
embedding (routed experts count top_k / num_experts of their size; `flops.count_params`), T = the
step's trained (loss) tokens; achieved FLOP/s = 6 N T / the step's train seconds. Passes that do not
train (reference-model and old-logprob forwards) and attention scores are not counted, so the figure
is a lower bound of the hardware's work — and the same convention for every system, TRL included.

Levers (issue 19), each against its base system at the same thread count: the π_old pass
(`c3po-oldpass` - `c3po` train seconds), the reference forward (`c3po` - `c3po-nokl`), the one-step-ahead
overlap (`c3po` - `c3po-async` step seconds), and per-phase threads (`phase_estimate`); levers and phase
threads compare variants of one precision only.
"""

from __future__ import annotations

from typing import Any

from benchmarks.bench_rl_step import RLWorkload
from benchmarks.rl_systems import parse_system, parse_variant
from benchmarks.flops import ParamCount, train_flops

Row = tuple[str, str, str, str]  # section, metric, value, detail


def threads_of(name: str, default: int) -> int:
    """Torch threads a system ran with: its `@N`, else the command's default."""
    return parse_system(name)[1] or default


def precision_of(name: str) -> str:
    """A system's precision: its `:precision`, else fp32."""
    return parse_variant(name)[2]


def setting(name: str, default: int) -> str:
    """A variant's threads, with its precision unless fp32: "2", "2:bf16"."""
    p = precision_of(name)
    return f"{threads_of(name, default)}" + (f":{p}" if p != "fp32" else "")


def family(name: str) -> str:
    """A system's base name with its precision unless fp32: "c3po", "c3po:bf16" (threads dropped)."""
    base, _, p = parse_variant(name)
    return base + (f":{p}" if p != "fp32" else "")


def best_variants(systems: dict[str, dict[str, float]]) -> dict[str, str]:
    """{base system: the variant name with the lowest seconds per step}, in first-seen order of the bases."""
    best: dict[str, str] = {}
    for name, s in systems.items():
        base = parse_system(name)[0]
        if base not in best or s["s_step"] < systems[best[base]]["s_step"]:
            best[base] = name
    return best


def system_rows(name: str, s: dict[str, float], what: str) -> list[Row]:
    sec = f"rl {name}"
    return [
        (sec, "end-to-end tokens/s (generated + trained)", f"{s['e2e_tok_s']:,.0f}",
         f"{s['gen_tokens']:.0f} generated + {s['loss_tokens']:.0f} trained per step; {what}"),
        (sec, "seconds per step", f"{s['s_step']:.3f}",
         f"rollout {s['s_rollout']:.3f} / reward {s['s_reward']:.3f} / train {s['s_train']:.3f} / "
         f"sync {s['s_sync']:.3f} / other {s['s_other']:.3f}"),
        (sec, "CPU seconds per step; tokens per CPU second", f"{s['cpu_s_step']:.3f}; {s['e2e_tok_cpu_s']:,.0f}",
         "this process (time.process_time): less sensitive to other processes' load"),
        (sec, "generation / training tokens/s", f"{s['gen_tok_s']:,.0f} / {s['train_tok_s']:,.0f}",
         f"mean reward {s['reward_mean']:.3f}"),
    ]


def flops_rows(systems: dict[str, dict[str, float]], params: ParamCount, peaks: dict[int, float],
               default_threads: int, bf16_peaks: dict[int, float] | None = None) -> list[Row]:
    """The FLOP formula, the measured peaks, and each system's training FLOP/s against its thread count's
    fp32 peak (and bf16 peak for a bf16 system, when measured)."""
    bf16_peaks = bf16_peaks or {}
    rows: list[Row] = [
        ("rl", "training FLOPs formula", "6 x N x T",
         f"N = {params.active_matmul / 1e6:.2f}M active params per token excl. the input embedding "
         f"({params.active / 1e6:.2f}M active of {params.total / 1e6:.2f}M total; routed experts x top_k / "
         "num_experts); T = trained tokens; FLOP/s = 6 N T / train seconds (reference / old-logprob "
         "forwards and attention scores not counted)"),
    ]
    for label, table in (("fp32", peaks), ("bf16", bf16_peaks)):
        for t in sorted(table):
            rows.append(("rl", f"{label} matmul peak, {t} thread(s)", f"{table[t] / 1e9:,.1f} GFLOP/s",
                         "best of a few 2048 x 2048 torch.matmul in this process"))
    for name, s in systems.items():
        t = threads_of(name, default_threads)
        achieved = train_flops(params, s["loss_tokens"]) / s["s_train"] if s["s_train"] > 0 else 0.0
        peak, half = peaks.get(t), bf16_peaks.get(t) if precision_of(name) != "fp32" else None
        share = (f"; {achieved / peak:.1%} of peak" if peak else "") + (
            f"; {achieved / half:.1%} of the bf16 peak" if half else "")
        rows.append((f"rl {name}", "training GFLOP/s (6NT / train s)", f"{achieved / 1e9:,.2f}{share}",
                     f"{s['loss_tokens']:.0f} trained tokens in {s['s_train']:.3f} s at {t} torch thread(s)"))
    return rows


def ratio_rows(systems: dict[str, dict[str, float]], trl_version: str | None, default_threads: int) -> list[Row]:
    """Each base system's best setting (threads[:precision]), and each of our systems against TRL's best variant."""
    best = best_variants(systems)
    rows: list[Row] = []
    for base, name in best.items():
        tried = [n for n in systems if parse_system(n)[0] == base]
        if len(tried) > 1:
            rows.append((f"rl {base}", "best setting: threads[:precision] (lowest s/step)",
                         setting(name, default_threads),
                         "of " + ", ".join(f"{setting(n, default_threads)}: {systems[n]['s_step']:.2f} s" for n in tried)))
    if "trl" not in best:
        return rows
    t = best["trl"]
    trl = systems[t]
    for name, s in systems.items():
        if parse_system(name)[0] == "trl":
            continue
        rows.append((f"rl {name} / TRL best", "steps/s; e2e tokens/s; tokens/CPU-s; steps/CPU-s",
                     f"{trl['s_step'] / s['s_step']:.2f}x; {s['e2e_tok_s'] / trl['e2e_tok_s']:.2f}x; "
                     f"{s['e2e_tok_cpu_s'] / trl['e2e_tok_cpu_s']:.2f}x; {trl['cpu_s_step'] / s['cpu_s_step']:.2f}x",
                     f"vs TRL {trl_version} GRPOTrainer at its best setting ({t}: "
                     f"{threads_of(t, default_threads)} thread(s), {precision_of(t)}, HF generate) on the same "
                     "model, prompts, K, max tokens and steps"))
    return rows


# lever system: (base system, the figure compared, what the difference is)
LEVERS = {
    "c3po-oldpass": ("c3po", "s_train", "what skipping the separate no-grad π_old forward buys (our default "
                     "with one epoch; recompute_old_logprobs=True runs it)"),
    "c3po-nokl": ("c3po", "s_train", "what the reference forward costs at β > 0 (the workload's β); with β = 0 "
                  "no reference model is built"),
    "c3po-async": ("c3po", "s_step", "what overlapping the next rollout with training buys (vLLM, one step ahead)"),
    "c3po-async-hf": ("c3po-hf", "s_step", "what overlapping the next rollout with training buys (private HF copy)"),
}


def lever_base(name: str, systems, default_threads: int) -> str | None:
    """The system a lever `name` is measured against: its `LEVERS` base at the same threads and precision."""
    base = LEVERS[parse_system(name)[0]][0]
    return next((n for n in systems if parse_system(n)[0] == base and precision_of(n) == precision_of(name)
                 and threads_of(n, default_threads) == threads_of(name, default_threads)), None)


def lever_rows(systems: dict[str, dict[str, float]], default_threads: int) -> list[Row]:
    """Per lever system measured with its base at the same thread count: the seconds per step the lever
    buys (base minus lever for a pass we skip or an overlap; lever minus base for `c3po-oldpass`)."""
    rows: list[Row] = []
    for name, s in systems.items():
        base_sys, threads = parse_system(name)
        if base_sys not in LEVERS:
            continue
        _, key, what = LEVERS[base_sys]
        ref = lever_base(name, systems, default_threads)
        if ref is None:
            continue
        b = systems[ref]
        diff = s[key] - b[key] if base_sys == "c3po-oldpass" else b[key] - s[key]
        label = "train" if key == "s_train" else "step"
        rows.append((f"rl lever {name}", f"{label} seconds bought per step (vs {ref})",
                     f"{diff:.3f}; {diff / b['s_step']:.1%} of {ref}'s step",
                     f"{what}: {label} {s[key]:.3f} s vs {b[key]:.3f} s"
                     + (f"; step {s['s_step']:.3f} vs {b['s_step']:.3f} s" if key != "s_step" else "")))
    return rows


def phase_estimate(systems: dict[str, dict[str, float]], default_threads: int) -> dict[str, dict[str, Any]]:
    """Per base system and precision (`family`: "c3po", "c3po:bf16") measured at more than one thread count:
    {threads: (rollout s, train s)}, the best count of each phase, and the step estimate if each phase ran
    at its best count: min rollout + min train + the rest (step - rollout - train, `s_rest`) of the
    family's variant with the lowest seconds per step."""
    out: dict[str, dict[str, Any]] = {}
    for base in dict.fromkeys(family(n) for n in systems):
        tried = [n for n in systems if family(n) == base]
        if len(tried) < 2:
            continue
        best_name = min(tried, key=lambda n: systems[n]["s_step"])
        by_t = {threads_of(n, default_threads): (systems[n]["s_rollout"], systems[n]["s_train"]) for n in tried}
        t_roll = min(by_t, key=lambda t: by_t[t][0])
        t_train = min(by_t, key=lambda t: by_t[t][1])
        rest = systems[best_name]["s_rest"]
        out[base] = {"threads": by_t, "rollout_threads": t_roll, "train_threads": t_train, "rest": rest,
                     "best": best_name, "estimate": by_t[t_roll][0] + by_t[t_train][1] + rest}
    return out


def phase_rows(systems: dict[str, dict[str, float]], default_threads: int) -> list[Row]:
    """The per-phase threads block (`phase_estimate`), with each estimate against TRL at its best."""
    best = best_variants(systems)
    trl = systems[best["trl"]]["s_step"] if "trl" in best else None
    rows: list[Row] = []
    for base, e in phase_estimate(systems, default_threads).items():
        split = ", ".join(f"{t}: {r:.2f} / {tr:.2f}" for t, (r, tr) in sorted(e["threads"].items()))
        vs = f"; {trl / e['estimate']:.2f}x TRL best ({best['trl']})" if trl and not base.startswith("trl") else ""
        rows.append((f"rl threads {base}", "rollout / train seconds at each thread count", split,
                     f"rollout best at {e['rollout_threads']}, train best at {e['train_threads']} thread(s)"))
        rows.append((f"rl threads {base}", "step seconds with each phase at its best count (estimate)",
                     f"{e['estimate']:.3f}{vs}",
                     f"min rollout + min train + rest {e['rest']:.3f} s (step - rollout - train, median) of "
                     f"{e['best']}; measured best step {systems[e['best']]['s_step']:.3f} s"))
    return rows


def rl_rows(res: dict[str, Any], w: RLWorkload, default_threads: int, params: ParamCount | None = None,
            peaks: dict[int, float] | None = None, bf16_peaks: dict[int, float] | None = None) -> list[Row]:
    """All rows of the RL section (see the module docstring); `peaks` / `bf16_peaks`: matmul FLOP/s by threads."""
    systems = res["systems"]
    what = (f"{w.model}, L={w.prompts} K={w.samples} <= {w.max_tokens} tokens, Φ={w.phi}; medians of "
            f"{w.rounds} rounds x {w.steps - w.warmup} steps")
    rows: list[Row] = [r for name, s in systems.items() for r in system_rows(name, s, what)]
    if params is not None:
        rows += flops_rows(systems, params, peaks or {}, default_threads, bf16_peaks)
    rows += ratio_rows(systems, res.get("trl_version"), default_threads)
    rows += phase_rows(systems, default_threads) + lever_rows(systems, default_threads)
    if "c3po" in systems and "grpo" in systems:
        c, g = systems["c3po"], systems["grpo"]
        rows.append(("rl c3po / grpo", "step seconds; train seconds; step CPU-seconds",
                     f"{c['s_step'] / g['s_step']:.2f}; {c['s_train'] / g['s_train']:.2f}; "
                     f"{c['cpu_s_step'] / g['cpu_s_step']:.2f}",
                     f"C3PO trains Φ={w.phi} tokens/step, GRPO all {g['loss_tokens']:.0f}"))
    starts = res.get("engine_starts") or []
    if len(starts) == 1:
        rows.append(("rl", "vLLM engine start seconds (once)", f"{starts[0][1]:.1f}", "shared by the vLLM runs"))
    elif starts:
        rows.append(("rl", "vLLM engine start seconds", ", ".join(f"{d} {t:.1f}" for d, t in starts),
                     "one engine per dtype, restarted when the next run's dtype differs"))
    return rows
