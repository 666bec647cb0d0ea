"""Build the small byte-level BPE tokenizer shipped in ring_lightning/assets/tokenizer/.

The quickstart and the tests need a tokenizer without any download. This script trains one with the
`tokenizers` library on a synthetic corpus (arithmetic, Countdown, instruction-following prose) and
writes `tokenizer.json` + `tokenizer_config.json` (chat template, special tokens). The result is
committed; re-running the script is only needed to change the vocabulary.

Special tokens: <|endoftext|> (pad), <|im_start|>, <|im_end|> (eos, ends every turn), <think>, </think>.
Digits are split individually (as in Llama/Qwen) so arithmetic is learnable by a tiny model.

Usage: python scripts/build_tokenizer.py [--vocab-size 2048]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

# ChatML with {% generation %} markers so `apply_chat_template(..., return_assistant_tokens_mask=True)`
# marks exactly the assistant tokens (content + closing <|im_end|>) for the SFT loss.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

WORDS = (
    "the a an of to and in is it that for on with as was be by this are or from at which not have "
    "you your write answer question response words sentence paragraph letter title json format "
    "bullet point list section placeholder keyword include exclude without comma lowercase uppercase "
    "capital start end finish phrase language english explain describe summary story poem essay "
    "about city river mountain science history music ocean forest planet animal robot computer "
    "reason think step first then next finally therefore so because total sum product difference "
    "number numbers target use each once make equal solve compute find value result maze grid "
    "sudoku puzzle path move up down left right wall open cell row column digit box countdown "
    "please give short long brief detailed at least most exactly less than more times highlight "
    "markdown respond only yes no true false correct wrong check verify final boxed user assistant "
    "system hello world data model train learn reward policy token budget entropy expert router"
).split()


def corpus(n: int, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(n):
        kind = rng.randrange(4)
        if kind == 0:
            a, b, c = (rng.randint(0, 999) for _ in range(3))
            op1, op2 = rng.choice("+-*"), rng.choice("+-*")
            yield (f"Compute {a} {op1} {b} {op2} {c}. Think step by step. "
                   f"<think>{a} {op1} {b} = x, then x {op2} {c}.</think> The answer is \\boxed{{{a}}}.")
        elif kind == 1:
            nums = [rng.randint(1, 100) for _ in range(rng.randint(3, 5))]
            yield (f"Using the numbers {nums}, create an equation that equals {rng.randint(1, 500)}. "
                   f"Use each number once with + - * / and parentheses ( ). <answer>({nums[0]} + {nums[1]}) * {nums[2]}</answer>")
        elif kind == 2:
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
            yield words.capitalize() + rng.choice([".", "!", "?", ":", ";"])
        else:
            yield json.dumps({"title": rng.choice(WORDS), "items": [rng.choice(WORDS) for _ in range(3)]})


def build(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(60_000), trainer=trainer)
    return tok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "ring_lightning/assets/tokenizer")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tok = build(args.vocab_size)
    tok.save(str(args.out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 32768,
        "clean_up_tokenization_spaces": False,
        "additional_special_tokens": ["<|im_start|>", "<think>", "</think>"],
        "chat_template": CHAT_TEMPLATE,
    }
    (args.out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (args.out / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
         "additional_special_tokens": ["<|im_start|>", "<think>", "</think>"]}, indent=2) + "\n")
    print(f"wrote {args.out} (vocab {tok.get_vocab_size()})")


if __name__ == "__main__":
    main()
