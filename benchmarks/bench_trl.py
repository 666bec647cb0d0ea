"""TRL's GRPOTrainer on the RL benchmark workload, for a side-by-side throughput comparison.

`run_trl` trains with `trl.GRPOTrainer` on exactly the workload `bench_rl_step` gives ring_lightning:
the same model directory, the same prompt rows in the same order (drawn from the RL config's prompt
stream with its seed), K samples per prompt, max response tokens, temperature 1 / top-p 1 / no top-k,
the same number of optimizer steps, and the same rule rewards (ring_lightning's `RewardRouter`
called from a TRL reward function, on the completion token ids decoded as our engines decode them).

Fair settings for TRL (what a user would pick for a fast run): generation with transformers
`generate` (TRL's vLLM path needs CUDA or a vLLM server), `precision` as ours (fp32 by default; "bf16":
accelerate's bf16 autocast over fp32 weights; "bf16w": the model loaded in bfloat16 as well), no gradient
checkpointing, one generation per optimizer step (`steps_per_generation` = gradient-accumulation
steps, so TRL skips the separate π_old pass as we do), micro-batches of about `micro_batch_tokens`
padded tokens (as ours), β = kl_coef (loads a reference model, as ours), entropy bonus, router
load-balance coefficient, ε = 0.2, loss_type "grpo" (per-sequence token mean, like our GRPO mode),
group-std advantage scaling, no logging of completions, metrics logged once at the end, no
checkpoints, no progress bar.

Per step we record: generation seconds (the model's `generate`), reward seconds (our reward function),
step seconds (`on_step_begin` -> `on_step_end`: generation, reward, TRL's scoring and reference
passes, forward/backward, optimizer) and the CPU seconds of this process in it; train = step -
generation - reward; sync = 0 (TRL generates with the training model itself). Generated tokens =
completion token ids including the EOS token (as our `Completion.token_ids`); trained tokens = the
same (TRL's loss covers every completion token).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from typing import Any

import torch

from ring_lightning.rows import PromptRow


def trl_version() -> str | None:
    """The installed TRL version, or None when TRL is not installed (the `bench` extra)."""
    try:
        import trl
    except ImportError:
        return None
    return str(trl.__version__)


def micro_batch_rows(total_rows: int, row_tokens: int, micro_batch_tokens: int) -> int:
    """Rows per TRL micro-batch: the largest divisor of `total_rows` (TRL splits a generation batch
    evenly) whose padded size rows x `row_tokens` stays within `micro_batch_tokens` (at least 1)."""
    if total_rows < 1 or row_tokens < 1:
        raise ValueError(f"micro_batch_rows needs total_rows >= 1 and row_tokens >= 1, got {total_rows}, {row_tokens}")
    cap = max(1, micro_batch_tokens // row_tokens)
    return max(d for d in range(1, total_rows + 1) if total_rows % d == 0 and d <= cap)


class RouterRewardFunc:
    """A TRL reward function that scores with ring_lightning's reward router.

    TRL calls it with the dataset's extra columns; `row_id` maps each completion back to its
    `PromptRow`. The completion ids are decoded like our engines decode them (a final EOS id is
    dropped, special tokens skipped). Invalid results (`valid=False`) are None (TRL: no reward).

    Args:
        router: the reward router (e.g. the RL config's `RewardRouter`).
        rows: the prompt rows of the dataset.
        tokenizer: the policy's tokenizer.
        eos_ids: token ids that end a completion.
    """

    __name__ = "ring_lightning_rule_reward"  # TRL names metrics after the function

    def __init__(self, router, rows: Sequence[PromptRow], tokenizer, eos_ids: Sequence[int]) -> None:
        self.router, self.tokenizer, self.eos_ids = router, tokenizer, set(int(t) for t in eos_ids)
        self.by_id = {r.id: r for r in rows}
        self.calls: list[dict[str, float]] = []  # per call: seconds, completions, generated tokens

    def text(self, ids: Sequence[int]) -> str:
        ids = list(ids)
        if ids and ids[-1] in self.eos_ids:
            ids = ids[:-1]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def __call__(self, prompts, completions, completion_ids, row_id, **_: Any) -> list[float | None]:
        t0 = time.perf_counter()
        results = self.router([self.by_id[i] for i in row_id], [self.text(ids) for ids in completion_ids])
        self.calls.append({"seconds": time.perf_counter() - t0, "completions": float(len(completion_ids)),
                           "tokens": float(sum(len(ids) for ids in completion_ids)),
                           "reward_sum": float(sum(r.reward for r in results if r.valid))})
        return [float(r.reward) if r.valid else None for r in results]


def _dataset(rows: Sequence[PromptRow]):
    from datasets import Dataset

    return Dataset.from_list([{"prompt": [dict(m) for m in r.messages], "row_id": r.id} for r in rows])


def _grpo_config(output_dir: str, *, per_device: int, accumulation: int, samples: int, max_tokens: int,
                 temperature: float, kl_coef: float, entropy_coef: float, router_aux_loss_coef: float,
                 clip_eps: float, steps: int, lr: float, warmup_steps: int, grad_clip: float, seed: int,
                 precision: str = "fp32"):
    """TRL's GRPOConfig with the fair settings of the module docstring, in `precision` (`TRL_PRECISIONS`)."""
    if precision not in TRL_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(TRL_PRECISIONS)}")
    bf16, weights = TRL_PRECISIONS[precision]
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=output_dir, use_cpu=not torch.cuda.is_available(), bf16=bf16, fp16=False,
        gradient_checkpointing=False, per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation, num_generations=samples,
        max_completion_length=max_tokens, temperature=temperature, top_p=1.0, top_k=0, beta=kl_coef,
        entropy_coef=entropy_coef, router_aux_loss_coef=router_aux_loss_coef, epsilon=clip_eps,
        loss_type="grpo", scale_rewards="group", num_iterations=1, max_steps=steps, learning_rate=lr,
        lr_scheduler_type="constant_with_warmup", warmup_steps=warmup_steps, weight_decay=0.0,
        max_grad_norm=grad_clip, logging_steps=steps, report_to="none", save_strategy="no", disable_tqdm=True,
        log_completions=False, shuffle_dataset=False, dataloader_num_workers=0, seed=seed,
        model_init_kwargs={"dtype": weights},
    )


# precision (rl_systems.PRECISIONS) -> (GRPOConfig.bf16: accelerate's autocast, the model's load dtype)
TRL_PRECISIONS = {"fp32": (False, torch.float32), "bf16": (True, torch.float32), "bf16w": (True, torch.bfloat16)}


def _step_timer(gen_seconds: list[float], reward: RouterRewardFunc, steps_out: list[dict[str, float]]):
    """A TrainerCallback that appends one dict of ring_lightning's step metrics per optimizer step."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.t0, self.c0 = time.perf_counter(), time.process_time()
            self.n_gen, self.n_rew = len(gen_seconds), len(reward.calls)

        def on_step_end(self, args, state, control, **kwargs):
            step, cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
            gen = sum(gen_seconds[self.n_gen:])
            calls = reward.calls[self.n_rew:]
            rew = sum(c["seconds"] for c in calls)
            tokens = sum(c["tokens"] for c in calls)
            n = max(sum(c["completions"] for c in calls), 1.0)
            if calls and len(gen_seconds) == self.n_gen:
                raise RuntimeError("bench_trl: TRL generated without calling the timed `model.generate` (did TRL "
                                   "switch to another generation path?); the rollout time would be wrong")
            steps_out.append({"time/rollout": gen, "time/reward": rew, "time/train": step - gen - rew,
                              "time/sync": 0.0, "time/step": step, "cpu/step": cpu,
                              "rollout/generated_tokens": tokens, "train/loss_tokens": tokens,
                              "reward/mean": sum(c["reward_sum"] for c in calls) / n})

    return StepTimer()


def run_trl(model_dir: str, rows: Sequence[PromptRow], router, *, samples: int, max_tokens: int,
            temperature: float, steps: int, lr: float, warmup_steps: int, kl_coef: float, entropy_coef: float,
            router_aux_loss_coef: float, clip_eps: float, grad_clip: float, micro_batch_tokens: int,
            seed: int = 0, precision: str = "fp32") -> list[dict[str, float]]:
    """Train `steps` GRPOTrainer steps of len(rows) // steps prompts x `samples`; one dict per step with
    the keys of ring_lightning's step metrics (`time/rollout`, `time/reward`, `time/train`, `time/sync`,
    `time/step`, `rollout/generated_tokens`, `train/loss_tokens`, `reward/mean`)."""
    from transformers import AutoConfig
    from trl import GRPOTrainer

    import ring_lightning.models  # noqa: F401  (registers bailing_moe with the Auto classes)
    from ring_lightning.models.loading import load_tokenizer
    from ring_lightning.rollout.hf_engine import eos_token_ids

    if len(rows) % steps:
        raise ValueError(f"run_trl: {len(rows)} prompt rows do not split into {steps} steps")
    prompts_per_step = len(rows) // steps
    tokenizer = load_tokenizer(model_dir)
    longest_prompt = max(len(tokenizer.apply_chat_template([dict(m) for m in r.messages], add_generation_prompt=True,
                                                           tokenize=True, return_dict=False)) for r in rows)
    total = prompts_per_step * samples
    per_device = micro_batch_rows(total, longest_prompt + max_tokens, micro_batch_tokens)
    reward = RouterRewardFunc(router, rows, tokenizer, eos_token_ids(tokenizer, AutoConfig.from_pretrained(model_dir)))
    out_dir = tempfile.TemporaryDirectory(prefix="bench_trl_")
    args = _grpo_config(out_dir.name, per_device=per_device, accumulation=total // per_device, samples=samples,
                        max_tokens=max_tokens, temperature=temperature, kl_coef=kl_coef, entropy_coef=entropy_coef,
                        router_aux_loss_coef=router_aux_loss_coef, clip_eps=clip_eps, steps=steps, lr=lr,
                        warmup_steps=warmup_steps, grad_clip=grad_clip, seed=seed, precision=precision)
    trainer = GRPOTrainer(model=model_dir, reward_funcs=reward, args=args, train_dataset=_dataset(rows),
                          processing_class=tokenizer)
    gen_seconds: list[float] = []
    model = trainer.model
    generate = model.generate

    def timed_generate(*a, **k):
        t0 = time.perf_counter()
        try:
            return generate(*a, **k)
        finally:
            gen_seconds.append(time.perf_counter() - t0)

    model.generate = timed_generate
    steps_out: list[dict[str, float]] = []
    trainer.add_callback(_step_timer(gen_seconds, reward, steps_out))
    try:
        trainer.train()
    finally:
        out_dir.cleanup()
    return steps_out
