"""The demo trainer runs end to end on a very small model: loss falls, the run is
deterministic for a seed, and what it saves converts and runs under `mode-edge eval`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mode_edge.evaluate import tasks
from testbed.train import TrainConfig, train


def _cfg(seed: int = 0, steps: int = 8) -> TrainConfig:
    return TrainConfig(
        seed=seed,
        steps=steps,
        vision_rows=6,
        text_rows=2,
        text_turns=3,
        lr=3e-3,
        warmup=2,
        n_layers=3,
        n_experts=4,
        top_k=2,
        hidden=256,
        expert_ff=256,
        vision_hidden=32,
        vision_depth=3,
        image_size=128,
        corpus_size=300,
        eval_every=4,
        eval_samples=8,
        save_dtype="float32",
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict, list[dict]]:
    out = tmp_path_factory.mktemp("trained") / "m"
    logs: list[dict] = []
    record = train(out, _cfg(), log=logs.append)
    return out, record, logs


def test_training_runs_and_learns(trained):
    out, record, logs = trained
    assert [r["step"] for r in logs] == list(range(1, 9))
    losses = [r["loss"] for r in logs]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.75 * losses[0]  # from ~log(vocab) towards the answers
    assert all(r["aux"] > 0 for r in logs)  # router load-balancing loss is on
    assert [h["step"] for h in record["history"]] == [4, 8]
    assert set(record["history"][-1]["held_out"]) >= {"vision", "text"}
    from transformers import AutoConfig

    tc = AutoConfig.from_pretrained(out).text_config
    assert tc.output_router_logits is True and tc.router_aux_loss_coef > 0
    assert (tc.num_experts, tc.num_experts_per_tok, tc.num_hidden_layers) == (4, 2, 3)
    for f in ("tokenizer.json", "chat_template.jinja", "preprocessor_config.json", "training.json"):
        assert (out / f).is_file()


def test_tokenizer_learned_the_generator_text(trained):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(trained[0])
    # whole words of the task vocabulary are single tokens; digits stay single (Qwen's regex)
    for word in (" color", " shape", "What"):
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, word
    assert len(tok("123", add_special_tokens=False)["input_ids"]) == 3


def test_training_is_deterministic(trained, tmp_path):
    from safetensors.numpy import load_file

    a = load_file(str(trained[0] / "model.safetensors"))
    train(tmp_path / "again", _cfg(steps=8))
    b = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    train(tmp_path / "other", _cfg(seed=1, steps=1))
    c = load_file(str(tmp_path / "other" / "model.safetensors"))
    assert not np.array_equal(
        a["model.language_model.embed_tokens.weight"], c["model.language_model.embed_tokens.weight"]
    )


def test_training_with_many_experts_per_token_is_deterministic(tmp_path):
    """64 experts, top-8 (the testbed's routing): without deterministic kernels two runs of 3 steps
    differed in 91 of 93 tensors (the CPU backward adds in thread order)."""
    import dataclasses

    from safetensors.numpy import load_file

    cfg = dataclasses.replace(_cfg(steps=3), n_experts=64, top_k=8, eval_every=0)
    runs = []
    for name in ("a", "b"):
        train(tmp_path / name, dataclasses.replace(cfg))
        runs.append(load_file(str(tmp_path / name / "model.safetensors")))
    assert [k for k in runs[0] if not np.array_equal(runs[0][k], runs[1][k])] == []


@pytest.mark.runtime
def test_trained_model_converts_and_evaluates(trained, tmp_path):
    from mode_edge.evaluate import evaluate
    from mode_edge.gguf.export import export_model

    r = export_model(trained[0], tmp_path, "f32")
    res = evaluate(r.text_path, limit=4, reference=r.text_path, threads=2)
    assert res.samples == 4 and set(res.families) == {"vision", "text"}
    assert res.kl_mean is not None and res.kl_mean < 1e-6
    assert all(isinstance(p["output"], str) for p in res.predictions)
    assert [p["task"] for p in res.predictions] == [e.task for e in tasks.split_examples("test", 4)]


def test_grown_vision_tower_computes_the_same_then_trains(trained, tmp_path):
    """--grow-vision: more blocks and a wider MLP, the same logits before any step (new output
    weights are zero), a saved config that transformers reloads, and training goes on from it."""
    import torch
    from transformers import Qwen3VLMoeForConditionalGeneration

    from testbed.train import Encoder, grow_vision

    out, _, _ = trained
    model = Qwen3VLMoeForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    enc = Encoder.from_dir(out)
    batch = enc.batch(tasks.split_examples("test", 4, image_size=128))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        before = model(**inputs).logits
        grow_vision(model, depth=5, ff=128)
        after = model(**inputs).logits
    assert (
        len(model.model.visual.blocks) == 5
        and model.model.visual.blocks[0].mlp.linear_fc1.out_features == 128
    )
    assert torch.equal(before, after)
    model.save_pretrained(tmp_path / "grown")
    for f in out.iterdir():
        if f.suffix in (".json", ".jinja") and f.name not in ("config.json", "training.json"):
            (tmp_path / "grown" / f.name).write_bytes(f.read_bytes())
    cfg = _cfg(steps=2)
    cfg.init_from, cfg.eval_every = str(tmp_path / "grown"), 0
    record = train(tmp_path / "cont", cfg)
    # the record describes the model trained (5 blocks), not the config's default (3)
    assert (record["config"]["vision_depth"], record["config"]["vision_ff"]) == (5, 128)
    cont = Qwen3VLMoeForConditionalGeneration.from_pretrained(tmp_path / "cont", dtype=torch.float32)
    assert cont.config.vision_config.depth == 5 and cont.config.vision_config.intermediate_size == 128
    # the new blocks' output weights moved off zero: they are being trained
    assert cont.model.visual.blocks[4].mlp.linear_fc2.weight.abs().sum() > 0
