"""Evaluation through llama.cpp: greedy exact match per task family, KL against a reference.

The prompt is rendered with the chat template stored in the text GGUF (the image part
becomes mtmd's media marker: Architecture.media_part says where), so what is
measured is what a llama.cpp user of the file gets. Greedy decoding stops at an end-of-
generation token; the answer must equal the expected one exactly (surrounding whitespace
ignored). KL(reference ‖ model) is taken over the next-token distributions at every answer
position with the expected answer fed in (teacher forcing), the closing end-of-turn token included.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mode_edge.arch import architecture_of_gguf
from mode_edge.errors import UserError
from mode_edge.evaluate import tasks as task_gen
from mode_edge.quantize import default_threads

# -- finding files ---------------------------------------------------------------------------


def _mmproj_for(text: Path) -> Path:
    cands = sorted(p for p in text.parent.glob("mmproj-*.gguf") if p.is_file())
    if len(cands) == 1:
        return cands[0]
    # mmproj-<name>-f16.gguf belongs to <name>-<label>.gguf
    named = [p for p in cands if text.name.startswith(p.stem[len("mmproj-") :].rsplit("-", 1)[0] + "-")]
    if len(named) == 1:
        return named[0]
    if not cands:
        raise UserError(
            f"no mmproj-*.gguf beside {text}",
            "convert the model with `mode-edge convert` (it writes both files) or pass --mmproj",
        )
    raise UserError(f"several projectors beside {text} ({', '.join(p.name for p in cands)})", "pass --mmproj")


def resolve_model(path: Path, mmproj: Path | None = None) -> tuple[Path, Path]:
    """(text GGUF, mmproj GGUF) from a GGUF file or an output folder of `mode-edge convert`."""
    path = Path(path)
    if path.is_dir():
        texts = sorted(
            p
            for p in path.glob("*.gguf")
            if p.is_file() and not p.name.startswith("mmproj-") and not p.name.endswith(".imatrix.gguf")
        )  # convert --budget leaves plan.imatrix.gguf
        if not texts:
            raise UserError(
                f"no text GGUF in {path}", "pass a folder written by `mode-edge convert` or a .gguf file"
            )
        if len(texts) > 1:
            raise UserError(
                f"several text GGUF files in {path} ({', '.join(p.name for p in texts)})",
                "pass the one to evaluate",
            )
        path = texts[0]
    elif not path.is_file():
        raise UserError(
            f"{path} does not exist", "pass a .gguf file or a folder written by `mode-edge convert`"
        )
    elif path.suffix != ".gguf":
        raise UserError(
            f"{path} is not a .gguf file", "pass a .gguf file or a folder written by `mode-edge convert`"
        )
    if path.name.startswith("mmproj-"):
        raise UserError(
            f"{path} is a vision projector", "pass the text model's GGUF (the projector is found beside it)"
        )
    if mmproj is not None and not Path(mmproj).is_file():
        raise UserError(f"{mmproj} does not exist", "pass the mmproj-*.gguf written with the model")
    return path, Path(mmproj) if mmproj is not None else _mmproj_for(path)


def load_examples(source: str, limit: int, start: int = 0) -> list[task_gen.Example]:
    """A split of the built-in generator (train, calibration, test, hard-*; from example `start` on) or a
    folder in the calibration format whose lines also hold "answer" (and optionally "task")."""
    if limit < 1:
        raise UserError(f"--limit {limit} is not positive", "pass at least 1")
    if start < 0:
        raise UserError(f"--start {start} is negative", "pass 0 or more")
    if source in task_gen.SPLIT_SEEDS:
        return task_gen.split_examples(source, limit, start)
    if start:
        raise UserError("--start applies to the built-in splits only", "drop --start for a folder of prompts")
    folder = Path(source)
    lines_path = folder / "prompts.jsonl"
    if not lines_path.is_file():
        raise UserError(
            f"--tasks {source!r} is neither a split ({', '.join(sorted(task_gen.SPLIT_SEEDS))}) "
            "nor a folder with prompts.jsonl",
            "pass test, or a folder written by the task export",
        )
    from mode_edge.formats.samples import load_image

    out = []
    for i, line in enumerate(lines_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            prompt, answer = obj["prompt"], str(obj["answer"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(
                f'{lines_path}:{i} is not a JSON object with "prompt" and "answer"',
                "evaluation needs the expected answer on every line",
            ) from None
        image = np.asarray(load_image(folder / obj["image"])) if obj.get("image") else None
        task = obj.get("task") or ("image" if image is not None else "text")
        out.append(task_gen.Example(task, prompt, answer, image))
        if len(out) == limit:
            break
    if not out:
        raise UserError(f"{lines_path} has no samples", "add at least one line")
    return out


# -- llama.cpp side --------------------------------------------------------------------------


class Model:
    """A text GGUF + mmproj loaded in llama.cpp, with prompt rendering from the file's template."""

    def __init__(self, text: Path, mmproj: Path, n_ctx: int, threads: int):
        import llama_cpp

        from mode_edge.run import MtmdSession

        try:
            self.session = MtmdSession(text, mmproj, n_ctx=n_ctx, n_threads=threads)
        except (ValueError, RuntimeError) as e:
            raise UserError(
                f"llama.cpp could not load {text} with {mmproj} ({e})",
                "check that both files come from the same `mode-edge convert` run",
            ) from None
        llm = self.session.llm
        self.template = llm.metadata.get("tokenizer.chat_template")
        if not self.template:
            raise UserError(
                f"{text} has no chat template (tokenizer.chat_template)",
                "convert from a model folder that has one",
            )
        self.vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self.arch = architecture_of_gguf(llm.metadata.get("general.architecture", ""))
        end = llm.tokenize(self.arch.end_of_turn.encode(), add_bos=False, special=True)
        self.end_id = end[0] if len(end) == 1 else llm.token_eos()
        self._llama_cpp = llama_cpp

    def close(self) -> None:
        self.session.close()

    def prompt(self, ex: task_gen.Example) -> str:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        content = ([{"type": "image"}] if ex.image is not None else []) + [
            {"type": "text", "text": ex.prompt}
        ]
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        text = env.from_string(self.template).render(
            messages=[{"role": "user", "content": content}],
            add_generation_prompt=True,
            bos_token="",
            eos_token="",
        )
        if ex.image is not None:
            media = self.arch.media_part
            if media not in text:
                raise UserError(
                    f"the GGUF's chat template does not place images as {media}",
                    f"use the chat template of the {self.arch.arch} model it was converted from",
                )
            text = text.replace(media, self.session.marker, 1)
        return text

    def prefill(self, ex: task_gen.Example) -> tuple[int, np.ndarray]:
        images = [ex.image] if ex.image is not None else []
        n_past = self.session.eval_prompt(self.prompt(ex), images)
        return n_past, self.session.logits_at(-1)

    def truncate(self, n_past: int) -> None:
        lc = self._llama_cpp
        lc.llama_memory_seq_rm(lc.llama_get_memory(self.session.llm.ctx), 0, n_past, -1)

    def greedy(self, n_past: int, logits: np.ndarray, max_new_tokens: int) -> str:
        out: list[int] = []
        for _ in range(max_new_tokens):
            t = int(np.argmax(logits))
            if self._llama_cpp.llama_vocab_is_eog(self.vocab, t):
                break
            out.append(t)
            logits = self.session.decode([t], n_past + len(out) - 1)[0]
        return self.session.llm.detokenize(out).decode("utf-8", errors="replace")

    def answer_tokens(self, answer: str) -> list[int]:
        return self.session.llm.tokenize(answer.encode(), add_bos=False, special=False) + [self.end_id]

    def forced(self, n_past: int, first: np.ndarray, tokens: list[int]) -> np.ndarray:
        """Next-token logits at every answer position, the expected tokens fed in: [len(tokens), V]."""
        rows = [first[None]]
        if len(tokens) > 1:
            rows.append(self.session.decode(tokens[:-1], n_past))
        return np.concatenate(rows)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def kl_divergence(ref_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """KL(ref ‖ model) per row, in nats."""
    lp, lq = _log_softmax(ref_logits), _log_softmax(logits)
    return (np.exp(lp) * (lp - lq)).sum(-1)


# -- the evaluation --------------------------------------------------------------------------


@dataclass
class EvalResult:
    model: str
    mmproj: str
    reference: str | None
    tasks: str
    samples: int
    seconds: float
    families: dict = field(default_factory=dict)  # family -> {n, correct, accuracy, kl}
    by_task: dict = field(default_factory=dict)  # task -> {family, n, correct, accuracy, kl}
    kl_mean: float | None = None
    top1_agreement: float | None = None
    predictions: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _summ(rows: list[dict], with_kl: bool) -> dict:
    n = len(rows)
    correct = sum(r["correct"] for r in rows)
    d = {"n": n, "correct": correct, "accuracy": correct / n if n else 0.0}
    if with_kl:
        kls = [k for r in rows for k in r["kl"]]
        d["kl"] = float(np.mean(kls)) if kls else None
        agree = [a for r in rows for a in r["top1"]]
        d["top1"] = (
            float(np.mean(agree)) if agree else None
        )  # answer positions whose argmax is the reference's
    return d


def evaluate(
    model_path: Path,
    *,
    tasks: str = "test",
    limit: int = 208,
    reference: Path | None = None,
    mmproj: Path | None = None,
    reference_mmproj: Path | None = None,
    threads: int | None = None,
    n_ctx: int = 2048,
    max_new_tokens: int = 16,
    on_sample: Callable[[int, int], None] | None = None,
    reference_cache: dict | None = None,
    start: int = 0,
) -> EvalResult:
    """reference_cache: a dict kept by a caller that evaluates many files against one reference
    (benchmarks): the reference's answer logits are computed once per sample, not once per file."""
    text_path, mmproj_path = resolve_model(model_path, mmproj)
    ref_paths = resolve_model(reference, reference_mmproj) if reference is not None else None
    examples = load_examples(tasks, limit, start)
    threads = threads or default_threads()  # the cores this process may use (taskset, cgroups)
    t0 = time.perf_counter()
    model = Model(text_path, mmproj_path, n_ctx, threads)
    ref = None
    cache = reference_cache if reference_cache is not None else {}
    key = (str(ref_paths[0]), str(ref_paths[1]), tasks, start) if ref_paths else None
    try:
        if ref_paths and not all((key, i) in cache for i in range(len(examples))):
            ref = Model(*ref_paths, n_ctx, threads)
        rows = []
        for i, ex in enumerate(examples):
            n_past, first = model.prefill(ex)
            output = model.greedy(n_past, first, max_new_tokens)
            row = {
                "task": ex.task,
                "family": ex.family,
                "prompt": ex.prompt,
                "answer": ex.answer,
                "output": output,
                "correct": output.strip() == ex.answer.strip(),
            }
            if ref_paths is not None:
                tokens = model.answer_tokens(ex.answer)
                model.truncate(n_past)
                got = model.forced(n_past, first, tokens)
                if (key, i) not in cache:
                    r_past, r_first = ref.prefill(ex)
                    cache[key, i] = ref.forced(r_past, r_first, tokens)
                row["kl"] = kl_divergence(cache[key, i], got).tolist()
                row["top1"] = (cache[key, i].argmax(-1) == got.argmax(-1)).tolist()
            rows.append(row)
            if on_sample:
                on_sample(i + 1, len(examples))
    finally:
        model.close()
        if ref is not None:
            ref.close()
    with_kl = ref_paths is not None
    res = EvalResult(
        model=str(text_path),
        mmproj=str(mmproj_path),
        reference=str(ref_paths[0]) if ref_paths else None,
        tasks=tasks,
        samples=len(rows),
        seconds=time.perf_counter() - t0,
        predictions=rows,
    )
    for fam in ("vision", "text"):
        sel = [r for r in rows if r["family"] == fam]
        if sel:
            res.families[fam] = _summ(sel, with_kl)
    for task in dict.fromkeys(r["task"] for r in rows):
        sel = [r for r in rows if r["task"] == task]
        res.by_task[task] = {"family": sel[0]["family"], **_summ(sel, with_kl)}
    if with_kl:
        whole = _summ(rows, True)
        res.kl_mean, res.top1_agreement = whole["kl"], whole["top1"]
    return res
