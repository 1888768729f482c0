"""A tiny byte-level BPE tokenizer in Qwen's format, trained offline on a small corpus.

Tests and examples use it instead of a downloaded Qwen tokenizer: same pre-tokenizer
regex, same special tokens and chat-template conventions, a few hundred tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

# Qwen2/Qwen3's split regex (what llama.cpp calls the "qwen2" pre-tokenizer).
QWEN_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
# Llama 3's (GLM-4.5's too; llama.cpp's "llama-bpe" / "glm4"): digits in runs of up to 3
LLAMA3_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
# Qwen3.5's (llama.cpp's "qwen35"): combining marks join letters
QWEN35_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# Qwen3-VL's special tokens, in its order (ids follow the learned vocabulary).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# A Qwen-style chat template: image parts become <|vision_start|><|image_pad|><|vision_end|>
# (the processor expands the pad to one token per merged patch); a text part that is a
# runtime's media marker passes through as text.
QWEN_VL_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

_DEFAULT_CORPUS = [
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "A red circle is left of a blue square; the green triangle is bigger.",
    "How many shapes are in the picture? There are 3 shapes.",
    "What is 12 + 34? The answer is 46. Reverse the word 'model': ledom.",
    "Hello, world! Qwen3-VL is a vision-language model with experts.",
    "Mixture-of-Experts layers route every token to a few experts.",
    "Ünïcödé têxt: café, naïve, Größe, 東京, 数字 42, emoji 🙂.",
    "user\nassistant\nsystem\nYou are a helpful assistant.",
    "Describe the image in one word. Answer: circle, square, triangle.",
]


def train_tiny_tokenizer(
    vocab_size: int = 512,
    corpus: list[str] | None = None,
    regex: str = QWEN_PRETOKENIZE_REGEX,
    extra_special: tuple[str, ...] = (),
    specials: list[str] | None = None,
    ignore_merges: bool = False,
) -> Tokenizer:
    """Train a byte-level BPE with Qwen's pre-tokenizer (or `regex`); specials (Qwen's unless
    given) get the last ids. ignore_merges: whole words found in the vocabulary are one token
    (Llama 3's and GLM's tokenizer.json; llama.cpp's llama-bpe and glm4 do the same)."""
    specials = QWEN_SPECIAL_TOKENS if specials is None else specials
    tok = Tokenizer(
        models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False, ignore_merges=ignore_merges)
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(specials) - len(extra_special),
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((corpus or _DEFAULT_CORPUS) * 4, trainer=trainer)
    tok.add_special_tokens(list(specials) + list(extra_special))
    return tok


def save_tokenizer(
    tok: Tokenizer,
    out_dir: Path,
    model_max_length: int = 4096,
    tokenizer_class: str = "Qwen2Tokenizer",
    extra_special: tuple[str, ...] = (),
    chat_template: str = QWEN_VL_CHAT_TEMPLATE,
    config_extra: dict | None = None,
    specials: list[str] | None = None,
) -> dict[str, int]:
    """Write tokenizer.json, tokenizer_config.json and chat_template.jinja as Qwen does.

    Returns the ids of the special tokens the model config needs.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    added = {
        str(tok.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "single_word": False,
            "special": True,
        }
        for t in (QWEN_SPECIAL_TOKENS if specials is None else specials) + list(extra_special)
    }
    config = {
        # transformers 5 builds the pre-tokenizer from the class, not from tokenizer.json
        "tokenizer_class": tokenizer_class,
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": model_max_length,
        **(config_extra or {}),
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "chat_template.jinja").write_text(chat_template)
    return {
        t: tok.token_to_id(t)
        for t in (QWEN_SPECIAL_TOKENS if specials is None else specials) + list(extra_special)
    }
