"""Tokenizer and chat template of a Hugging Face model folder, as GGUF metadata.

Byte-level BPE (the GPT-2 family: Qwen, Llama 3, GLM …) as llama.cpp's "gpt2" tokenizer
model. llama.cpp re-implements each pre-tokenizer regex under a name, so the regex found
in tokenizer.json is matched against the ones we know; an unknown regex is an error rather
than a file that tokenizes wrongly.
"""

from __future__ import annotations

from pathlib import Path

from gguf import GGUFWriter, TokenType

from mode_edge.errors import UserError
from mode_edge.files import read_json

#: Llama 3's split regex, which GLM-4.5 uses too (llama.cpp: llama-bpe, or glm4 for GLM)
LLAMA3_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# tokenizer.json Split regex -> llama.cpp pre-tokenizer name
KNOWN_PRE_TOKENIZERS = {
    LLAMA3_REGEX: "llama-bpe",
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""": "qwen2",
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""": "qwen35",
}


def _split_regexes(pre: dict | None) -> list[str]:
    if not pre:
        return []
    if pre.get("type") == "Sequence":
        return [r for p in pre.get("pretokenizers", []) for r in _split_regexes(p)]
    if pre.get("type") == "Split":
        pattern = pre.get("pattern", {})
        return [pattern.get("Regex") or pattern.get("String") or ""]
    return []


def detect_pre_tokenizer(tokenizer_json: dict, pre_names: dict[str, str] | None = None) -> str:
    """llama.cpp's name for the tokenizer's split regex; pre_names: an architecture's own names
    for regexes several pre-tokenizers share (GLM: Llama 3's regex is glm4)."""
    known = {**KNOWN_PRE_TOKENIZERS, **(pre_names or {})}
    regexes = _split_regexes(tokenizer_json.get("pre_tokenizer"))
    for r in regexes:
        if r in known:
            return known[r]
    raise UserError(
        "the tokenizer's pre-tokenizer regex is not one llama.cpp implements under a known name"
        + (f" (found {regexes[0][:60]!r}…)" if regexes else " (no Split regex in tokenizer.json)"),
        f"supported pre-tokenizers: {', '.join(sorted(set(KNOWN_PRE_TOKENIZERS.values())))}",
    )


def _token_content(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.get("content")


def read_chat_template(model_dir: Path, tok_config: dict) -> str | None:
    """The chat template as transformers would find it (config, .jinja, or .json)."""
    tmpl = tok_config.get("chat_template")
    if isinstance(tmpl, list):  # named templates: keep the default one
        tmpl = next((t["template"] for t in tmpl if t.get("name") == "default"), None)
    if tmpl:
        return tmpl
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    js = model_dir / "chat_template.json"
    if js.is_file():
        return read_json(js, "re-download chat_template.json").get("chat_template")
    return None


def add_bpe_vocab(
    w: GGUFWriter,
    model_dir: Path,
    n_vocab: int,
    pre_names: dict[str, str] | None = None,
    special: dict[str, str] | None = None,
) -> None:
    """Write tokens, types, merges, special ids, pre-tokenizer and chat template.

    n_vocab is the embedding's row count; ids the tokenizer does not use become unused
    padding tokens so that llama.cpp's vocab matches the tensor shapes. special: an
    architecture's own special tokens by llama.cpp role (bos, eot, eom) and content, as
    llama.cpp's converter sets them (a token the vocabulary lacks is an error).
    """
    tj_path = model_dir / "tokenizer.json"
    if not tj_path.is_file():
        raise UserError(f"no tokenizer.json in {model_dir}", "download the tokenizer files with the model")
    tj = read_json(tj_path, "re-download tokenizer.json")
    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise UserError(
            f"tokenizer model {model.get('type')!r} is not supported",
            "only byte-level BPE tokenizers convert",
        )
    tok_config_path = model_dir / "tokenizer_config.json"
    tok_config = (
        read_json(tok_config_path, "re-download tokenizer_config.json") if tok_config_path.is_file() else {}
    )

    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in tj.get("added_tokens", [])}
    for content, t in added.items():
        vocab[content] = t["id"]
    if max(vocab.values()) >= n_vocab:
        raise UserError(
            f"tokenizer has id {max(vocab.values())} but the model embeds only {n_vocab} tokens",
            "the tokenizer does not belong to this model",
        )

    by_id: dict[int, str] = {i: t for t, i in vocab.items()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        tok = by_id.get(i)
        if tok is None:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif tok in added:
            tokens.append(tok)
            types.append(TokenType.CONTROL if added[tok].get("special") else TokenType.USER_DEFINED)
        else:
            tokens.append(tok)
            types.append(TokenType.NORMAL)

    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(detect_pre_tokenizer(tj, pre_names))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)

    def tok_id(key: str) -> int | None:
        content = _token_content(tok_config.get(key))
        return vocab.get(content) if content else None

    eos, pad, bos = tok_id("eos_token"), tok_id("pad_token"), tok_id("bos_token")
    special = dict(special or {})
    for content in special.values():
        if content not in vocab:
            raise UserError(
                f"the tokenizer lacks the special token {content!r}",
                "the tokenizer does not belong to this model",
            )
    add_bos = bool(tok_config.get("add_bos_token", False)) and bos is not None
    if "bos" in special:  # the architecture's BOS (GLM: [gMASK], in the template as text)
        bos = vocab[special.pop("bos")]
    for role, content in special.items():
        getattr(w, f"add_{role}_token_id")(vocab[content])
    if eos is not None:
        w.add_eos_token_id(eos)
    if pad is not None:
        w.add_pad_token_id(pad)
    if bos is not None:
        w.add_bos_token_id(bos)
    elif "<|endoftext|>" in vocab:  # Qwen has no BOS; llama.cpp wants an id, never added
        w.add_bos_token_id(vocab["<|endoftext|>"])
    w.add_add_bos_token(add_bos)

    template = read_chat_template(model_dir, tok_config)
    if template:
        w.add_chat_template(template)
