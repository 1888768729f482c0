"""Llama 4: the converted F32 GGUF (interleaved dense and MoE layers, top-1 sigmoid routing on
the expert input, a shared expert, chunked RoPE layers with q/k norms and a NoPE layer) and its
mmproj, run by llama.cpp, against transformers' own modules; tokenization; mtmd's tiles and
token order reproduced by calibration's rendering; configs llama.cpp cannot run, refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from testbed.tiny_llama4 import build_tiny_model, sample_image
from tests.arch.test_qwen3_vl_moe import _llama, assert_tokenization_matches

HEADER = "<|begin_of_text|><|header_start|>user<|header_end|>\n\n"
ASK = "What shape is this?<|eot|><|header_start|>assistant<|header_end|>\n\n"
PROMPTS = [
    "Hello, world! 12 + 34 = 46",
    HEADER + "What shape is left of the red square?<|eot|><|header_start|>assistant<|header_end|>\n\n",
    "Mixture-of-Experts layers route every token to a few experts. 0123456789",
]
TOKENIZE = [
    "Hello, world!",
    PROMPTS[1],
    "digits 1234567890 and 3.14159, 2026-11-23",
    "Ünïcödé: café, naïve, Größe, 東京, 数字 42, emoji 🙂👍🏽",
    "  leading spaces, tabs\tand\nnew\n\nlines  ",
    "CamelCase HTTPServer don't YOU'LL we've",
]


@pytest.fixture(scope="module")
def l4(tmp_path_factory):
    """{variant: (model dir, F32 text GGUF, F32 mmproj)}: default rope, and llama3 scaling."""
    from mode_edge.gguf.export import export_model

    llama3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # fmt: skip
    out = {}
    for variant, rope in (("default", None), ("llama3", llama3)):
        d = build_tiny_model(tmp_path_factory.mktemp("l4") / f"tiny-{variant}")
        if rope:
            cfg = json.loads((d / "config.json").read_text())
            cfg["text_config"]["rope_parameters"] = rope
            (d / "config.json").write_text(json.dumps(cfg))
        r = export_model(d, tmp_path_factory.mktemp(f"l4-gguf-{variant}"), "f32")
        out[variant] = (d, r.text_path, r.mmproj_path)
    return out


def _hf(model_dir):
    from transformers import Llama4ForConditionalGeneration

    return Llama4ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_l4(l4):
    return _hf(l4["default"][0])


@pytest.mark.runtime
@pytest.mark.parametrize("variant", ["default", "llama3"])
def test_logits_match_transformers(l4, variant):
    """transformers' Llama4ForConditionalGeneration.forward fails on text-only input in 5.24
    (outputs.image_outputs), so its language model is the reference."""
    from transformers import AutoTokenizer

    model_dir, text, _ = l4[variant]
    model = _hf(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    llm = _llama(text)
    try:
        for prompt in PROMPTS:
            ids = tok(prompt, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                ref = model.language_model(input_ids=torch.tensor([ids])).logits[0].numpy()
            llm.reset()
            llm.eval(ids)
            got = np.asarray(llm.scores[: len(ids)])
            assert np.abs(ref - got).max() <= 1e-3 * float(ref.max() - ref.min()), (variant, prompt)
            assert (ref.argmax(-1) == got.argmax(-1)).all(), (variant, prompt)
    finally:
        llm.close()


@pytest.mark.runtime
def test_tokenizer_matches_transformers(l4):
    from transformers import AutoTokenizer

    model_dir, text, _ = l4["default"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert_tokenization_matches(tok, text, TOKENIZE, add_special_tokens=False)


def test_metadata_read_back_by_gguf_py(l4):
    from gguf import GGUFReader

    model_dir, text, mmproj = l4["llama3"]
    t = json.loads((model_dir / "config.json").read_text())["text_config"]
    r = GGUFReader(text)

    def val(key):
        return r.get_field(key).contents()

    assert val("general.architecture") == "llama4"
    assert val("llama4.interleave_moe_layer_step") == t["interleave_moe_layer_step"]
    assert val("llama4.feed_forward_length") == t["intermediate_size_mlp"]
    assert val("llama4.expert_feed_forward_length") == t["intermediate_size"]
    assert val("tokenizer.ggml.pre") == "llama4"
    tensors = {x.name: x for x in r.tensors}
    assert "blk.0.ffn_up.weight" in tensors and "blk.1.ffn_up_exps.weight" in tensors
    assert "blk.2.ffn_gate_inp.weight" not in tensors and "blk.3.ffn_gate_shexp.weight" in tensors
    # llama3 scaling as llama.cpp's divisors: 1 for high frequencies, `factor` for low ones
    freqs = np.asarray(tensors["rope_freqs.weight"].data)
    assert freqs.shape == (t["head_dim"] // 2,)
    assert freqs[0] == pytest.approx(1.0) and freqs[-1] == pytest.approx(8.0)
    names = {x.name for x in GGUFReader(mmproj).tensors}
    assert {"v.blk.0.ln2.weight", "v.class_embd", "mm.model.mlp.2.weight", "mm.model.fc.weight"} <= names
    assert not any("attn_post_norm" in n for n in names)  # gguf-py's table would have written these


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("attention_chunk_size", 16, "attention_chunk_size 16"),
        ("no_rope_layer_interval", 2, "without RoPE"),
        ("moe_layers", [0, 1], "moe_layers"),
        ("use_qk_norm", False, "use_qk_norm"),
        ("floor_scale", 4096, "temperature"),
    ],
)
def test_configs_llama_cpp_cannot_run_are_refused(l4, tmp_path, key, value, message):
    import shutil

    from mode_edge.arch import architecture_for
    from mode_edge.errors import UserError
    from mode_edge.formats.checkpoint import Checkpoint

    d = tmp_path / "m"
    shutil.copytree(l4["default"][0], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["text_config"][key] = value
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=message):
        architecture_for(Checkpoint(d))


@pytest.fixture(scope="module")
def session_l4(l4):
    from mode_edge.run.mtmd import MtmdSession

    _, text, mmproj = l4["default"]
    with MtmdSession(text, mmproj, f32_kv=True) as s:
        yield s


@pytest.mark.runtime
@pytest.mark.parametrize("size", [(56, 56), (40, 30), (120, 70), (200, 170)])
def test_calibration_tiles_and_token_order_are_mtmds(l4, session_l4, size):
    """Calibration's rendering (mtmd's tiles up to 3x3 plus the overview, tokens reordered
    column-major per tile) through transformers' vision tower and projector gives mtmd's image
    embeddings: 1 tile for 56x56 and 40x30, 3x2 + overview for 120x70, 3x3 + overview for 200x170.
    GELU differs (tanh in ggml, erf in transformers): 2e-3 of the range."""
    from mode_edge.arch import architecture_for
    from mode_edge.formats.checkpoint import Checkpoint
    from mode_edge.formats.samples import Sample

    cal = architecture_for(Checkpoint(l4["default"][0])).calibration()
    rng = np.random.default_rng(size[0])
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    got = session_l4.image_embeddings(arr)
    r = cal.render(Sample(prompt="hi"), Image.fromarray(arr))
    ref = cal.image_features(r.pixel_values).numpy()
    n_tiles = {56: 1, 40: 1, 120: 7, 200: 10}[size[0]]
    assert got.shape == ref.shape == (4 * n_tiles, 256)
    assert int((r.input_ids == cal.image_token_id).sum()) == 4 * n_tiles
    tol = 2e-3 * float(ref.max() - ref.min())
    assert np.abs(got - ref).max() <= tol
    # transformers' own (row-major) order within a tile is not what llama.cpp computes
    assert np.abs(got - ref.reshape(n_tiles, 4, -1)[:, [0, 2, 1, 3]].reshape(got.shape)).max() > 10 * tol


@pytest.mark.runtime
def test_image_and_text_logits_match_transformers(l4, hf_l4, session_l4):
    """An image prompt in both: llama.cpp's mtmd against transformers' language model fed the
    same image embeddings (its vision tower with llama.cpp's token order, checked above)."""
    from mode_edge.arch import architecture_for
    from mode_edge.formats.checkpoint import Checkpoint
    from mode_edge.formats.samples import Sample

    model_dir = l4["default"][0]
    cal = architecture_for(Checkpoint(model_dir)).calibration()
    img = sample_image()
    r = cal.render(Sample(prompt="What shape is this?"), Image.fromarray(img))
    ids = torch.from_numpy(r.input_ids)[None]
    lm = hf_l4.language_model
    with torch.no_grad():
        emb = lm.model.embed_tokens(ids)
        mask = ids == cal.image_token_id
        emb[mask] = cal.image_features(r.pixel_values)
        ref = lm(inputs_embeds=emb).logits[0, -1].numpy()
    got = session_l4.last_logits(HEADER + session_l4.marker + ASK, [img])
    assert int(mask.sum()) == 4
    assert np.abs(got - ref).max() <= 2e-3 * float(ref.max() - ref.min())
    assert got.argmax() == ref.argmax()


def test_hub_style_rope_config(l4, tmp_path):
    """transformers 4-style configs keep rope_theta beside rope_scaling: the file gets that
    theta, the same on every call, and rope_freqs are transformers' llama3 ratios for it."""
    import shutil

    from gguf import GGUFReader
    from transformers import Llama4TextConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from mode_edge.gguf.export import export_model

    d = tmp_path / "m"
    shutil.copytree(l4["default"][0], d)
    cfg = json.loads((d / "config.json").read_text())
    t = cfg["text_config"]
    t.pop("rope_parameters")
    t["rope_theta"] = 1_000_000.0
    t["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # fmt: skip
    (d / "config.json").write_text(json.dumps(cfg))
    ref_cfg = Llama4TextConfig(**{k: v for k, v in json.loads(json.dumps(t)).items() if k != "model_type"})
    assert ref_cfg.rope_parameters["rope_theta"] == 1_000_000.0
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](ref_cfg, "cpu")
    plain = 1.0 / (1e6 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64))
    for k in range(2):
        r = GGUFReader(export_model(d, tmp_path / f"out{k}", "f32").text_path)
        assert r.get_field("llama4.rope.freq_base").contents() == 1_000_000.0
        freqs = np.asarray(next(x for x in r.tensors if x.name == "rope_freqs.weight").data)
        np.testing.assert_allclose(freqs, (plain / scaled.double()).numpy(), rtol=1e-6)


@pytest.mark.parametrize("where, key, value", [("text_config", "interleave_moe_layer_step", 0),
                                               ("vision_config", "patch_size", 0)])  # fmt: skip
def test_zero_sizes_are_one_line_errors(l4, tmp_path, where, key, value):
    import shutil

    from mode_edge.arch import architecture_for
    from mode_edge.errors import UserError
    from mode_edge.formats.checkpoint import Checkpoint

    d = tmp_path / "m"
    shutil.copytree(l4["default"][0], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg[where][key] = value
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError):
        architecture_for(Checkpoint(d))


@pytest.mark.runtime
def test_kv_reserve_is_what_llama_cpp_allocates(l4):
    """At 16384 tokens (two chunks): the budget's KV reserve equals the KV buffers llama.cpp
    reports (llama-cpp-python's default full-size SWA cache), read from its log."""
    import re
    import subprocess
    import sys

    from mode_edge.arch import architecture_for
    from mode_edge.formats.checkpoint import Checkpoint

    model_dir, text, _ = l4["default"]
    code = f"import llama_cpp; llama_cpp.Llama({str(text)!r}, n_ctx=16384, verbose=True)"
    log = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    mib = [float(x) for x in re.findall(r"llama_kv_cache: size = +([0-9.]+) MiB", log)]
    assert len(mib) == 2  # the NoPE layer's cache and the chunked layers'
    assert architecture_for(Checkpoint(model_dir)).kv_cache_bytes(16384) == round(sum(mib) * 2**20)
