"""`mode-edge eval` on the committed demo model: llama.cpp's greedy answers equal transformers'
greedy answers, accuracy is what the model card says, KL against a reference behaves, and the
committed model routes as MODE assumes (vision dominates, some experts mostly serve text)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mode_edge.evaluate import tasks
from tests.helpers import DEMO, cli

N = 16  # 8 vision + 8 text samples of the test split


@pytest.fixture(scope="module")
def demo_f32(tmp_path_factory) -> Path:
    from mode_edge.gguf.export import export_model

    out = tmp_path_factory.mktemp("demo-f32")
    export_model(DEMO, out, "f32")
    return out


@pytest.fixture(scope="module")
def demo_q2k(tmp_path_factory) -> Path:
    from mode_edge.formats.plan import QuantPlan
    from mode_edge.formats.quant_types import parse_type
    from mode_edge.gguf.export import export_model

    out = tmp_path_factory.mktemp("demo-q2k")
    export_model(
        DEMO, out, None, plan=QuantPlan(method="uniform:Q2_K", default=parse_type("Q2_K")), label="q2_k"
    )
    return out


@pytest.fixture(scope="module")
def hf_demo():
    from transformers import Qwen3VLMoeForConditionalGeneration

    from testbed.train import Encoder

    model = Qwen3VLMoeForConditionalGeneration.from_pretrained(DEMO, dtype=torch.float32).eval()
    return model, Encoder.from_dir(DEMO)


def _run_cli(capsys, *args) -> dict:
    assert cli([*map(str, args), "--json", "--threads", "2"]) == 0
    return json.loads(capsys.readouterr().out)


def _hf_greedy(model, enc, ex: tasks.Example, max_new: int = 16) -> str:
    """transformers' forward pass, greedy, one token at a time until <|im_end|>."""
    r = enc.prompt(ex)
    ids = torch.from_numpy(r.input_ids)[None]
    kw = {}
    if r.pixel_values is not None:
        kw = {
            "pixel_values": torch.from_numpy(r.pixel_values),
            "image_grid_thw": torch.from_numpy(r.image_grid_thw),
        }
    out = []
    for _ in range(max_new):
        with torch.no_grad():
            logits = model(input_ids=ids, mm_token_type_ids=(ids == enc.image_token_id).int(), **kw).logits[
                0, -1
            ]
        t = int(logits.argmax())
        if t == enc.end_id:
            break
        out.append(t)
        ids = torch.cat([ids, torch.tensor([[t]])], dim=1)
    return enc.tokenizer.decode(out)


@pytest.mark.runtime
def test_llama_cpp_answers_equal_transformers(demo_f32, hf_demo, capsys):
    res = _run_cli(capsys, "eval", demo_f32, "--limit", N)
    assert res["samples"] == N and res["reference"] is None
    model, enc = hf_demo
    exs = tasks.split_examples("test", N)
    for pred, ex in zip(res["predictions"], exs):
        assert (pred["prompt"], pred["answer"], pred["family"]) == (ex.prompt, ex.answer, ex.family)
        assert pred["output"] == _hf_greedy(model, enc, ex), ex.task
    # the model card's accuracy (vision 90.4%, text 100% on 520 samples), on a handful
    for fam in ("vision", "text"):
        assert res["families"][fam]["n"] == N // 2
    assert res["families"]["vision"]["accuracy"] >= 0.6  # 6 of these 8 at commit time
    assert res["families"]["text"]["accuracy"] >= 0.875  # 8 of 8 at commit time
    assert sum(t["n"] for t in res["by_task"].values()) == N


@pytest.mark.runtime
def test_kl_against_reference(demo_f32, demo_q2k, capsys):
    f32 = next(p for p in demo_f32.glob("*.gguf") if not p.name.startswith("mmproj-"))
    same = _run_cli(capsys, "eval", demo_f32, "--limit", 6, "--reference", f32)
    assert same["reference"] == str(f32)
    assert all(len(p["kl"]) >= 2 for p in same["predictions"])  # answer tokens + <|im_end|>
    assert same["kl_mean"] < 1e-6
    q2 = _run_cli(capsys, "eval", demo_q2k, "--limit", 6, "--reference", f32)
    assert q2["model"].endswith("q2_k.gguf")
    assert q2["kl_mean"] > 1e-4
    assert q2["families"]["vision"]["kl"] > 0 and q2["families"]["text"]["kl"] > 0


@pytest.mark.runtime
def test_reference_cache_gives_the_same_kl_without_rerunning_the_reference(demo_f32, demo_q2k, monkeypatch):
    """Benchmarks share the reference's logits across files: same numbers, reference loaded once."""
    import mode_edge.evaluate.runner as runner

    f32 = next(p for p in demo_f32.glob("*.gguf") if not p.name.startswith("mmproj-"))
    plain = runner.evaluate(demo_q2k, limit=4, reference=f32, threads=2)
    loads = []
    real_model = runner.Model
    monkeypatch.setattr(runner, "Model", lambda *a: loads.append(a[0]) or real_model(*a))
    cache: dict = {}
    first = runner.evaluate(demo_q2k, limit=4, reference=f32, threads=2, reference_cache=cache)
    second = runner.evaluate(demo_q2k, limit=4, reference=f32, threads=2, reference_cache=cache)
    assert len(cache) == 4
    assert [p["kl"] for p in first.predictions] == [p["kl"] for p in plain.predictions]
    assert [p["kl"] for p in second.predictions] == [p["kl"] for p in plain.predictions]
    assert loads.count(f32) == 1  # the reference ran for the first call only


@pytest.mark.runtime
def test_table_output(demo_f32, capsys):
    assert cli(["eval", str(demo_f32), "--limit", "4", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "vision" in text and "text" in text and "exact match" in text


@pytest.mark.parametrize("case", ["missing", "two_models", "bad_tasks", "mmproj_given_as_model", "bad_limit"])
def test_eval_errors(case, demo_f32, tmp_path, capsys):
    args = ["eval", str(demo_f32)]
    if case == "missing":
        args = ["eval", str(tmp_path / "nothing.gguf")]
    elif case == "two_models":
        import shutil

        for p in demo_f32.iterdir():
            shutil.copy(p, tmp_path / p.name)
        text = next(p for p in tmp_path.glob("*.gguf") if not p.name.startswith("mmproj-"))
        shutil.copy(text, tmp_path / "other-f32.gguf")
        args = ["eval", str(tmp_path)]
    elif case == "bad_tasks":
        args += ["--tasks", "nosuchsplit"]
    elif case == "mmproj_given_as_model":
        args = ["eval", str(next(demo_f32.glob("mmproj-*.gguf")))]
    elif case == "bad_limit":
        args += ["--limit", "0"]
    assert cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


@pytest.mark.runtime
def test_eval_reads_an_exported_folder(demo_f32, tmp_path, capsys):
    d = tasks.export_split(tmp_path / "data", "test", 4)
    res = _run_cli(capsys, "eval", demo_f32, "--tasks", d, "--limit", 4)
    assert [p["answer"] for p in res["predictions"]] == [e.answer for e in tasks.split_examples("test", 4)]


def test_demo_model_routing_is_vision_dominated(hf_demo):
    from testbed.train import routing_counts, routing_summary

    model, enc = hf_demo
    counts = routing_counts(model, enc, tasks.split_examples("calibration", 32))
    tc = model.config.text_config
    assert counts.shape == (tc.num_hidden_layers, tc.num_experts, 2)
    assert (
        counts.sum()
        == sum(len(enc.prompt(e).input_ids) for e in tasks.split_examples("calibration", 32))
        * tc.num_hidden_layers
        * tc.num_experts_per_tok
    )
    s = routing_summary(counts)
    assert s["vision_share"] >= 0.8
    assert s["mostly_text_experts"] >= 2


def test_committed_model_shape():
    from transformers import AutoConfig

    t = AutoConfig.from_pretrained(DEMO).text_config
    assert t.num_hidden_layers >= 4 and t.num_experts >= 16 and t.num_experts_per_tok >= 2
    assert t.hidden_size % 256 == 0 and t.moe_intermediate_size % 256 == 0
    assert t.router_aux_loss_coef > 0 and t.output_router_logits
    size = sum(p.stat().st_size for p in DEMO.glob("*.safetensors"))
    assert 0 < size <= 40 * 10**6
    for f in (
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "preprocessor_config.json",
        "training.json",
        "README.md",
    ):
        assert (DEMO / f).is_file(), f
    # the model card's accuracy table came from this model
    assert np.isfinite(json.loads((DEMO / "training.json").read_text())["train_seconds"])
