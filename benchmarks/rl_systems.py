"""The RL benchmark's system names: ours (`OURS`: loss mode, engine, staleness, lever knobs) and TRL's, each
optionally with `@N` torch threads and `:precision` (`PRECISIONS`), e.g. `c3po@2:bf16` or `trl@2:bf16w`, and the
`fit` arguments a precision sets (`precision_overrides`). Used by `bench_rl_step.py`, `rl_table.py`, `run.py`."""

from __future__ import annotations

import argparse

# ring_lightning systems: loss mode, rollout engine ("vllm": the config's engine, shared; "hf": HFEngine on
# the trainer's own model, all L x K rows in one `generate`), on-policy (max_staleness 0) or one step ahead;
# lever probes change one knob of `build`: kl_coef (None = the workload's) or recompute_old.
OURS = {
    "c3po": dict(mode="c3po", engine="vllm", staleness=0),
    "grpo": dict(mode="grpo", engine="vllm", staleness=0),
    "c3po-hf": dict(mode="c3po", engine="hf", staleness=0),
    "c3po-async": dict(mode="c3po", engine="vllm", staleness=1),
    "c3po-async-hf": dict(mode="c3po", engine="hf-copy", staleness=1),
    "grpo-async-hf": dict(mode="grpo", engine="hf-copy", staleness=1),
    "c3po-oldpass": dict(mode="c3po", engine="vllm", staleness=0, recompute_old=True),
    "c3po-nokl": dict(mode="c3po", engine="vllm", staleness=0, kl_coef=0.0),
}
SYSTEMS = (*OURS, "trl")
# `name@N` runs a system with N torch intra-op threads instead of the command's `--threads`: the
# one-step-ahead systems keep both cores busy with two Python threads at 1 thread each, so TRL is also
# measured with 2 threads (its best setting here) for a like-for-like use of the machine.
DEFAULT_SYSTEMS = ("c3po", "grpo", "c3po-hf", "c3po-async-hf", "grpo-async-hf", "trl", "trl@2")
# `name[@N]:P` runs a system in precision P (default fp32: fp32 weights and compute, an exact weight sync):
# "bf16": bf16 compute, fp32 master weights: ours under Lightning's `bf16-mixed` (torch.autocast; logprobs,
#   softmax and the loss stay fp32) with the vLLM engine in bfloat16 (the sync casts; the HF-engine systems
#   generate with the fp32 model), TRL with `bf16=True` (accelerate's autocast);
# "bf16w": bf16 weights (and AdamW state), no fp32 master copy: ours with the module's dtype bfloat16 (the
#   engine follows), TRL with the model loaded in bfloat16 and `bf16=True`.
PRECISIONS = ("fp32", "bf16", "bf16w")


def parse_variant(name: str) -> tuple[str, int | None, str]:
    """("trl", 2, "bf16") for "trl@2:bf16"; threads None and precision "fp32" when not given.
    Raises ValueError for unknown names."""
    rest, colon, precision = name.partition(":")
    base, sep, threads = rest.partition("@")
    if (base not in SYSTEMS or (sep and not (threads.isdigit() and int(threads) >= 1))
            or (colon and precision not in PRECISIONS)):
        raise ValueError(f"unknown RL system {name!r}: expected one of {', '.join(SYSTEMS)}, optionally "
                         f"followed by @<torch threads> and :<precision> ({', '.join(PRECISIONS)}), "
                         "e.g. trl@2 or c3po@2:bf16")
    return base, int(threads) if sep else None, precision if colon else "fp32"


def parse_system(name: str) -> tuple[str, int | None]:
    """("trl", 2) for "trl@2" or "trl@2:bf16"; (base, None) without a thread count (`parse_variant`)."""
    return parse_variant(name)[:2]


def precision_overrides(precision: str, engine: str) -> list[str]:
    """`fit` arguments of one of our runs in `precision` (`PRECISIONS`; `engine` as in `OURS`)."""
    if precision == "fp32":
        return []
    if precision == "bf16":
        vllm = ["--data.init_args.engine.init_args.dtype=bfloat16"] if engine == "vllm" else []
        return ["--trainer.precision=bf16-mixed", *vllm]
    if precision == "bf16w":
        return ["--model.init_args.dtype=bfloat16"]
    raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")


def system_arg(name: str) -> str:
    """argparse type of a system name (`parse_system`)."""
    try:
        parse_system(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name
