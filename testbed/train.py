"""Train the demo model: a small Qwen3-VL-MoE learned from scratch on the synthetic tasks.

transformers' own classes, a byte-level BPE tokenizer with Qwen's pre-tokenizer trained on
the generator's text, Qwen's chat template, loss on the answer tokens only (and the
<|im_end|> that closes them), router load-balancing loss on. Deterministic for a seed (on the
same machine and thread count): the seed fixes the initial weights, the data is the train
split's fixed stream.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mode_edge.evaluate import tasks
from testbed.tiny_qwen3_vl_moe import preprocessor_config, tiny_config_dict
from testbed.tokenizer import save_tokenizer, train_tiny_tokenizer

IGNORE = -100


@dataclass
class TrainConfig:
    seed: int = 0
    steps: int = 1500
    vision_rows: int = 28  # rows per step holding one picture and its question
    text_rows: int = 4  # rows per step holding text_turns text-only questions (a multi-turn chat)
    text_turns: int = 5
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # model
    n_layers: int = 4
    n_experts: int = 16
    top_k: int = 2
    hidden: int = 256
    expert_ff: int = 256
    vision_hidden: int = 64
    vision_depth: int = 3
    vision_ff: int | None = None  # vision MLP width (None: 2 x vision_hidden)
    vocab_size: int = 512
    corpus_size: int = 4000  # training examples whose text the tokenizer learns from
    router_aux_loss_coef: float = 0.01
    image_size: int = tasks.IMAGE_SIZE
    save_dtype: str = "bfloat16"
    init_from: str | None = None  # continue from a checkpoint this trainer saved (its tokenizer too)
    data_offset: int = 0  # first step of the data stream (continuing: the steps already seen)
    eval_every: int = 250
    eval_samples: int = 208
    threads: int | None = None
    # relative task frequencies in the training stream (None: uniform); a continuation can
    # spend its steps on the tasks the model has not learned yet
    task_weights: dict[str, float] | None = None
    curriculum: bool = False  # easier variants of some tasks mixed in (tasks._vision)
    # with init_from: split every expert into this many copies, top-k times as many (testbed/upcycle.py)
    upcycle: int = 1
    upcycle_noise: float = 0.0
    upcycle_mode: str = "copy"  # or split (testbed/upcycle.py)
    upcycle_router_noise: float = 0.0
    # task suite: "demo" (train / test splits) or "hard" (hard-train / hard-test: hard_tasks.py)
    suite: str = "demo"


def demo_config_dict(vocab_size: int, special: dict[str, int], cfg: TrainConfig) -> dict:
    d = tiny_config_dict(
        vocab_size,
        special,
        n_layers=cfg.n_layers,
        n_experts=cfg.n_experts,
        top_k=cfg.top_k,
        hidden=cfg.hidden,
        expert_ff=cfg.expert_ff,
        init_std=0.02,
    )
    t = d["text_config"]
    t["router_aux_loss_coef"] = cfg.router_aux_loss_coef
    t["output_router_logits"] = True
    t["max_position_embeddings"] = 1024
    v = d["vision_config"]
    v.update(
        hidden_size=cfg.vision_hidden,
        intermediate_size=cfg.vision_ff or 2 * cfg.vision_hidden,
        depth=cfg.vision_depth,
        num_heads=2,
        num_position_embeddings=256,
        deepstack_visual_indexes=[cfg.vision_depth // 2 - 1, cfg.vision_depth - 1],
    )
    return d


class Encoder:
    """Examples -> model inputs, through the chat template (mode_edge.arch.qwen3_vl_moe.render_chat)."""

    def __init__(self, tokenizer, image_processor, image_token_id: int, merge: int = 2):
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.image_token_id, self.merge = image_token_id, merge
        self.end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")

    @classmethod
    def from_dir(cls, model_dir: Path) -> Encoder:
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

        config = AutoConfig.from_pretrained(model_dir)
        return cls(
            AutoTokenizer.from_pretrained(model_dir),
            AutoImageProcessor.from_pretrained(model_dir),
            config.image_token_id,
            config.vision_config.spatial_merge_size,
        )

    def prompt(self, ex: tasks.Example):
        from PIL import Image

        from mode_edge.arch.qwen3_vl_moe import render_chat

        image = Image.fromarray(ex.image) if ex.image is not None else None
        return render_chat(self.tokenizer, self.image_processor, self.merge, ex.prompt, image)

    def single(self, ex: tasks.Example):
        """One unpadded prompt as model inputs: (input_ids [1, T], the other keyword arguments)."""
        import torch

        r = self.prompt(ex)
        ids = torch.from_numpy(r.input_ids)[None]
        kw = {"mm_token_type_ids": (ids == self.image_token_id).int()}
        if r.pixel_values is not None:
            kw.update(
                pixel_values=torch.from_numpy(r.pixel_values),
                image_grid_thw=torch.from_numpy(r.image_grid_thw),
            )
        return ids, kw

    def answer_ids(self, ex: tasks.Example) -> list[int]:
        return self.tokenizer(ex.answer, add_special_tokens=False)["input_ids"] + [self.end_id]

    def batch(self, examples: list[tasks.Example]) -> dict:
        """One single-turn conversation per row (what eval and calibration see)."""
        return self.batch_rows([[ex] for ex in examples])

    def batch_rows(self, conversations: list[list[tasks.Example]]) -> dict:
        """Right-padded batch, one multi-turn conversation per row, labels on the answer tokens
        (and the <|im_end|> closing each) only. Turns are joined as the chat template joins them."""
        import torch

        newline = self.tokenizer("\n", add_special_tokens=False)["input_ids"]
        rows, labels, pix, grids = [], [], [], []
        for conv in conversations:
            ids, lab = [], []
            for k, ex in enumerate(conv):
                r = self.prompt(ex)
                ans = self.answer_ids(ex)
                sep = newline if k + 1 < len(conv) else []
                ids += [r.input_ids, ans, np.asarray(sep, dtype=np.int64)]
                lab += [np.full(len(r.input_ids), IGNORE), ans, np.full(len(sep), IGNORE)]
                if r.pixel_values is not None:
                    pix.append(r.pixel_values)
                    grids.append(r.image_grid_thw)
            rows.append(np.concatenate(ids))
            labels.append(np.concatenate(lab))
        T = max(len(r) for r in rows)
        ids = np.full((len(rows), T), self.pad_id, dtype=np.int64)
        lab = np.full((len(rows), T), IGNORE, dtype=np.int64)
        mask = np.zeros((len(rows), T), dtype=np.int64)
        for i, (r, l) in enumerate(zip(rows, labels)):
            ids[i, : len(r)], lab[i, : len(r)], mask[i, : len(r)] = r, l, 1
        ids_t = torch.from_numpy(ids)
        out = {
            "input_ids": ids_t,
            "attention_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(lab),
            "mm_token_type_ids": (ids_t == self.image_token_id).int(),
        }
        if pix:
            out["pixel_values"] = torch.from_numpy(np.concatenate(pix))
            out["image_grid_thw"] = torch.from_numpy(np.concatenate(grids))
        return out


def teacher_forced_exact(model, batch: dict) -> np.ndarray:
    """Per example: does greedy decoding reproduce the answer (and stop)? With teacher forcing,
    greedy decoding yields the answer exactly iff every answer position's argmax is the next
    answer token, so one batched forward decides it."""
    import torch

    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, output_router_logits=False).logits
    pred = logits[:, :-1].argmax(-1)
    gold = batch["labels"][:, 1:]
    ok = (pred == gold) | (gold == IGNORE)
    return ok.all(dim=1).numpy()


def evaluate_hf(model, enc: Encoder, examples: list[tasks.Example], batch_size: int = 32) -> dict[str, float]:
    """Exact-match accuracy by family and by task (transformers, teacher-forced greedy)."""
    hits: dict[str, list[bool]] = {}
    model.eval()
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        ok = teacher_forced_exact(model, enc.batch(chunk))
        for ex, k in zip(chunk, ok):
            hits.setdefault(ex.family, []).append(bool(k))
            hits.setdefault(ex.task, []).append(bool(k))
    return {k: float(np.mean(v)) for k, v in hits.items()}


def routing_counts(model, enc: Encoder, examples: list[tasks.Example], batch_size: int = 16) -> np.ndarray:
    """Top-k selections per layer, expert and modality: int64 [layers, experts, 2] (0 text, 1 vision).

    Text is every non-image token of the prompt (template tokens included), as calibration counts it."""
    import torch

    tc = model.config.text_config
    counts = np.zeros((tc.num_hidden_layers, tc.num_experts, 2), dtype=np.int64)
    model.eval()
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        for ex in chunk:  # one sample at a time: no padding tokens in the counts
            ids, kw = enc.single(ex)
            with torch.no_grad():
                out = model(input_ids=ids, output_router_logits=True, **kw)
            vision = (ids[0] == enc.image_token_id).numpy().astype(np.int64)
            for il, logits in enumerate(out.router_logits):
                top = torch.topk(logits.float(), tc.num_experts_per_tok, dim=-1).indices.numpy()
                for k in range(top.shape[1]):
                    np.add.at(counts[il], (top[:, k], vision), 1)
    return counts


def routing_summary(counts: np.ndarray, mostly: float = 0.5) -> dict:
    total = counts.sum()
    per_expert = counts.sum(axis=0)  # [E, 2]
    text_share = counts[..., 0] / np.maximum(1, counts.sum(-1))  # [L, E]
    return {
        "vision_share": float(counts[..., 1].sum() / max(1, total)),
        "mostly_text_experts": int((text_share > mostly).sum()),
        "mostly_text": [
            [int(l), int(e), float(text_share[l, e])] for l, e in zip(*np.nonzero(text_share > mostly))
        ],
        "selections": int(total),
        "per_expert_total": per_expert.tolist(),
    }


def split_name(cfg: TrainConfig, split: str) -> str:
    """The generator split of the config's task suite ("train" -> "hard-train" for the hard suite)."""
    if cfg.suite not in ("demo", "hard"):
        raise ValueError(f"suite must be demo or hard, not {cfg.suite!r}")
    return split if cfg.suite == "demo" else f"hard-{split}"


def training_rows(step: int, cfg: TrainConfig) -> list[list[tasks.Example]]:
    """The conversations of one step: a fixed function of the step (the train split's streams)."""
    v0, t0 = step * cfg.vision_rows, step * cfg.text_rows * cfg.text_turns
    w = cfg.task_weights
    train = split_name(cfg, "train")
    rows = [
        [tasks.family_example(train, "vision", v0 + i, cfg.image_size, w, cfg.curriculum)]
        for i in range(cfg.vision_rows)
    ]
    rows += [
        [
            tasks.family_example(train, "text", t0 + i * cfg.text_turns + k, weights=w)
            for k in range(cfg.text_turns)
        ]
        for i in range(cfg.text_rows)
    ]
    return rows


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def build_untrained(out_dir: Path, cfg: TrainConfig):
    """Tokenizer (trained on the generator's text), processor config and a fresh model."""
    import torch
    from transformers import (
        AutoImageProcessor,
        AutoTokenizer,
        Qwen3VLMoeConfig,
        Qwen3VLMoeForConditionalGeneration,
    )

    out_dir = Path(out_dir)
    if cfg.init_from:
        import shutil

        src = Path(cfg.init_from)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in (
            "tokenizer.json",
            "tokenizer_config.json",
            "chat_template.jinja",
            "preprocessor_config.json",
        ):
            shutil.copy(src / name, out_dir / name)
        model = Qwen3VLMoeForConditionalGeneration.from_pretrained(src, dtype=torch.float32)
        model.config.dtype = "float32"
        torch.manual_seed(cfg.seed)
        grow_vision(model, cfg.vision_depth, cfg.vision_ff or 0)  # a no-op unless asked to grow
        if cfg.upcycle > 1:
            from testbed.upcycle import upcycle

            upcycle(
                model,
                cfg.upcycle,
                cfg.upcycle_noise,
                cfg.seed,
                mode=cfg.upcycle_mode,
                router_noise=cfg.upcycle_router_noise,
            )
        # the record (training.json) describes the model trained, not the defaults
        tc, vc = model.config.text_config, model.config.vision_config
        cfg.n_layers, cfg.n_experts, cfg.top_k = tc.num_hidden_layers, tc.num_experts, tc.num_experts_per_tok
        cfg.hidden, cfg.expert_ff = tc.hidden_size, tc.moe_intermediate_size
        cfg.vision_hidden, cfg.vision_depth, cfg.vision_ff = vc.hidden_size, vc.depth, vc.intermediate_size
        return model, Encoder.from_dir(src)
    tok = train_tiny_tokenizer(cfg.vocab_size, corpus=tasks.text_corpus(cfg.corpus_size))
    special = save_tokenizer(tok, out_dir, model_max_length=1024)
    (out_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(), indent=2))
    config = Qwen3VLMoeConfig(**demo_config_dict(tok.get_vocab_size(), special, cfg))
    torch.manual_seed(cfg.seed)
    model = Qwen3VLMoeForConditionalGeneration(config)
    enc = Encoder(
        AutoTokenizer.from_pretrained(out_dir),
        AutoImageProcessor.from_pretrained(out_dir),
        config.image_token_id,
        config.vision_config.spatial_merge_size,
    )
    return model, enc


def grow_vision(model, depth: int, ff: int, std: float = 0.02) -> None:
    """Give a trained vision tower more blocks and wider MLPs without changing what it computes.

    New MLP units get random input weights and zero output weights; new blocks are copies of
    the last with zero output projections (attention and MLP), so each starts as the identity.
    Training then uses the new capacity from the old function, not from scratch. The deepstack
    taps stay where they were."""
    import copy

    import torch

    vis = model.model.visual
    with torch.no_grad():
        for blk in vis.blocks:
            fc1, fc2 = blk.mlp.linear_fc1, blk.mlp.linear_fc2
            old = fc1.out_features
            if ff > old:
                new1 = torch.nn.Linear(fc1.in_features, ff)
                new1.weight.normal_(0, std)
                new1.bias.zero_()
                new1.weight[:old], new1.bias[:old] = fc1.weight, fc1.bias
                new2 = torch.nn.Linear(ff, fc2.out_features)
                new2.weight.zero_()
                new2.weight[:, :old], new2.bias[:] = fc2.weight, fc2.bias
                blk.mlp.linear_fc1, blk.mlp.linear_fc2 = new1, new2
        while len(vis.blocks) < depth:
            blk = copy.deepcopy(vis.blocks[-1])
            for lin in (blk.attn.proj, blk.mlp.linear_fc2):
                lin.weight.zero_()
                lin.bias.zero_()
            vis.blocks.append(blk)
    vc = model.config.vision_config
    vc.depth, vc.intermediate_size = len(vis.blocks), max(ff, vc.intermediate_size)


def machine() -> dict:
    """What a build's bytes may depend on beyond the recipe (two builds in different sessions
    diverged): the CPU the kernels dispatch for and the package versions."""
    import platform
    from importlib.metadata import version

    import torch

    try:  # Linux; elsewhere the architecture is all we name
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        cpu = ""
    return {
        "cpu": cpu or platform.machine(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **{p: version(p) for p in ("torch", "numpy", "pillow", "transformers", "tokenizers")},
    }


def train(
    out_dir: Path,
    cfg: TrainConfig,
    log: Callable[[dict], None] = lambda rec: None,
    snapshot: Callable | None = None,
) -> dict:
    """Train and save an HF checkpoint directory at out_dir; returns the training record."""
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # with 8 of 64 experts per token, the CPU backward through the MoE blocks (most likely the
    # expert gather's accumulation) adds in thread order: two builds of the testbed differed from
    # the first step's gradients on (vision 53.5 vs 51.0 %). Cost: 4.53 vs 4.24 s a step (one pair).
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train(Path(out_dir), cfg, log, snapshot)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _train(out_dir: Path, cfg: TrainConfig, log: Callable[[dict], None], snapshot: Callable | None) -> dict:
    import torch

    t0 = time.perf_counter()
    model, enc = build_untrained(out_dir, cfg)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    held_out = tasks.split_examples(
        split_name(cfg, "test"), cfg.eval_samples, start=100_000, image_size=cfg.image_size
    )
    history = []
    for step in range(cfg.steps):
        batch = enc.batch_rows(training_rows(cfg.data_offset + step, cfg))
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        out = model(**batch, output_router_logits=True)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        rec = {
            "step": step + 1,
            "loss": float(out.loss.detach()),
            "aux": float(out.aux_loss.detach()),
            "lr": lr_at(step, cfg),
            "elapsed_s": time.perf_counter() - t0,
        }
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            rec["held_out"] = evaluate_hf(model, enc, held_out)
            if snapshot is not None:
                snapshot(model, step + 1)
            model.train()
            history.append(rec)
        log(rec)
    seconds = time.perf_counter() - t0
    dtype = getattr(torch, cfg.save_dtype)
    model.eval().to(dtype)
    model.config.dtype = cfg.save_dtype
    model.save_pretrained(out_dir)
    record = {
        "config": asdict(cfg),
        "train_seconds": seconds,
        "history": history,
        "torch_threads": torch.get_num_threads(),
        "deterministic_kernels": torch.are_deterministic_algorithms_enabled(),
        "machine": machine(),
    }
    (out_dir / "training.json").write_text(json.dumps(record, indent=1))
    return record
