"""InternVL3.5-MoE (transformers' format): the F32 qwen3moe GGUF and the internvl mmproj, run by
llama.cpp, against transformers' own forward pass, in both save formats; tokenization; metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from testbed.tiny_internvl_moe import LAYOUTS, build_tiny_model
from tests.arch.test_qwen3_vl_moe import TOKENIZE_STRINGS, assert_text_logits_match

TOKENIZE_IVL = [*TOKENIZE_STRINGS, "<img><IMG_CONTEXT><IMG_CONTEXT></img>\nDescribe it."]


@pytest.fixture(scope="module")
def ivl(tmp_path_factory):
    """{layout: (model dir, F32 text GGUF, F16 mmproj)}; both layouts hold the same weights."""
    from mode_edge.gguf.export import export_model

    out = {}
    for layout in LAYOUTS:
        d = build_tiny_model(tmp_path_factory.mktemp("ivl") / f"tiny-{layout}", layout=layout)
        r = export_model(d, tmp_path_factory.mktemp(f"ivl-gguf-{layout}"), "f32")
        out[layout] = (d, r.text_path, r.mmproj_path)
    return out


@pytest.fixture(scope="module")
def hf_ivl(ivl):
    from transformers import InternVLForConditionalGeneration

    return InternVLForConditionalGeneration.from_pretrained(ivl["legacy"][0], dtype=torch.float32).eval()


@pytest.mark.runtime
@pytest.mark.parametrize("layout", LAYOUTS)
def test_logits_match_transformers(ivl, hf_ivl, layout):
    model_dir, text, _ = ivl[layout]
    assert_text_logits_match(hf_ivl, model_dir, text, layout)


@pytest.mark.runtime
def test_tokenizer_matches_transformers(ivl):
    import llama_cpp
    from transformers import AutoTokenizer

    model_dir, text, _ = ivl["modules"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    llm = llama_cpp.Llama(str(text), vocab_only=True, verbose=False)
    try:
        for s in TOKENIZE_IVL:
            ref = tok(s)["input_ids"]
            got = llm.tokenize(s.encode(), add_bos=False, special=True)
            assert got == ref, f"tokenization differs on {s!r}"
    finally:
        llm.close()


def test_metadata_read_back_by_gguf_py(ivl):
    from gguf import GGUFReader

    model_dir, text, mmproj = ivl["legacy"]
    cfg = json.loads((model_dir / "config.json").read_text())
    t, v = cfg["text_config"], cfg["vision_config"]
    r = GGUFReader(text)

    def val(reader, key):
        return reader.get_field(key).contents()

    assert val(r, "general.architecture") == "qwen3moe"
    assert val(r, "qwen3moe.expert_count") == t["num_local_experts"]  # what 5.24 saves
    assert val(r, "qwen3moe.attention.key_length") == t["head_dim"]
    names = {x.name for x in r.tensors}
    assert "output.weight" in names and not any(n.startswith(("v.", "mm.")) for n in names)
    m = GGUFReader(mmproj)
    assert val(m, "clip.projector_type") == "internvl"
    assert val(m, "clip.vision.image_size") == 448 and val(m, "clip.vision.patch_size") == 14
    assert val(m, "clip.vision.projector.scale_factor") == 2
    assert val(m, "clip.vision.projection_dim") == t["hidden_size"]
    assert val(m, "clip.vision.block_count") == v["num_hidden_layers"]
    assert {x.name for x in m.tensors} >= {
        "v.class_embd",
        "v.position_embd.weight",
        "v.blk.0.ls1.weight",
        "mm.model.mlp.3.weight",
    }


def _tile_image() -> np.ndarray:
    """448x448 (one tile): neither transformers nor mtmd resizes it."""
    rng = np.random.default_rng(1)
    img = np.full((448, 448, 3), 220, dtype=np.uint8)
    img[100:260, 60:300] = (200, 40, 40)
    img[300:420, 250:430] = (40, 60, 200)
    return img + (rng.random(img.shape) * 25).astype(np.uint8)


def _reference(hf_ivl):
    """A copy with the mmproj's F16 rounding of the vision matrices."""
    import copy

    ref = copy.deepcopy(hf_ivl)
    with torch.no_grad():
        for name, p in list(ref.model.vision_tower.named_parameters()) + list(
            ref.model.multi_modal_projector.named_parameters()
        ):
            if p.ndim > 1 and "position_embeddings" not in name and "cls_token" not in name:
                p.copy_(p.half().float())
    return ref


def _mtmd_embeddings(text, mmproj, img):
    from mode_edge.run.mtmd import MtmdSession

    with MtmdSession(text, mmproj, f32_kv=True) as s:
        return s.image_embeddings(img), s


@pytest.mark.runtime
def test_image_embeddings_and_logits_match_transformers(ivl, hf_ivl):
    """mmproj against get_image_features (256 tokens of one tile), then image + text end to end.
    ggml's GELU is the tanh approximation, transformers' the exact one: measured ~1e-4 of the
    embeddings' range here, inside test_mmproj.py's 2e-3."""
    from transformers import AutoImageProcessor, AutoTokenizer

    from mode_edge.run.mtmd import MtmdSession

    model_dir, text, mmproj = ivl["legacy"]
    img = _tile_image()
    ref_model = _reference(hf_ivl)
    pv = AutoImageProcessor.from_pretrained(model_dir)(images=[Image.fromarray(img)], return_tensors="pt")[
        "pixel_values"
    ]
    with torch.no_grad():
        ref = ref_model.model.get_image_features(pv).pooler_output[0].numpy()
    tok = AutoTokenizer.from_pretrained(model_dir)
    question = "What shape is this?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok("<|im_start|>user\n<img>" + "<IMG_CONTEXT>" * 256 + "</img>\n" + question, return_tensors="pt")[
        "input_ids"
    ]
    with torch.no_grad():
        ref_logits = ref_model(input_ids=ids, pixel_values=pv).logits[0, -1].numpy()
    with MtmdSession(text, mmproj, f32_kv=True) as s:
        got = s.image_embeddings(img)
        got_logits = s.last_logits("<|im_start|>user\n" + s.marker + "\n" + question, [img])
    assert got.shape == ref.shape == (256, 256)
    assert np.abs(got - ref).max() <= 2e-3 * float(ref.max() - ref.min())
    assert np.abs(got_logits - ref_logits).max() <= 2e-3 * float(ref_logits.max() - ref_logits.min())
    assert got_logits.argmax() == ref_logits.argmax()


@pytest.mark.runtime
def test_position_table_as_llama_cpp_writes_it_is_shifted(ivl, hf_ivl, tmp_path, monkeypatch):
    """llama.cpp's own converter writes the table unchanged; its graph appends CLS after the
    patches, so every patch gets its neighbour's position: far outside the tolerance above."""
    from transformers import AutoImageProcessor

    import mode_edge.arch.internvl_moe as ivm
    from mode_edge.gguf.export import export_model

    model_dir, text, _ = ivl["legacy"]
    monkeypatch.setattr(ivm, "_cls_row_last", lambda a: a)
    unrotated = export_model(model_dir, tmp_path / "unrotated", "f32").mmproj_path
    img = _tile_image()
    pv = AutoImageProcessor.from_pretrained(model_dir)(images=[Image.fromarray(img)], return_tensors="pt")[
        "pixel_values"
    ]
    with torch.no_grad():
        ref = _reference(hf_ivl).model.get_image_features(pv).pooler_output[0].numpy()
    from mode_edge.run.mtmd import MtmdSession

    with MtmdSession(text, unrotated, f32_kv=True) as s:
        got = s.image_embeddings(img)
    assert np.abs(got - ref).max() > 2e-2 * float(ref.max() - ref.min())


def test_refusals(tmp_path):
    from mode_edge.arch import architecture_for
    from mode_edge.errors import UserError
    from mode_edge.formats.checkpoint import Checkpoint

    d = build_tiny_model(tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["text_config"]["norm_topk_prob"] = False
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="renormalise"):
        architecture_for(Checkpoint(d))
    cfg["text_config"]["norm_topk_prob"] = True
    cfg["image_token_id"] = 3
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="image_token_id 3 is not"):
        architecture_for(Checkpoint(d))


@pytest.mark.runtime
@pytest.mark.parametrize("size", [(300, 200), (449, 300), (900, 500), (1400, 460), (1000, 1000)])
def test_calibration_tiles_are_mtmds(ivl, hf_ivl, size):
    """What calibration feeds transformers (mtmd_tiles: grid, padding, overview) gives the image
    embeddings mtmd gives at run time, tile for tile: one tile up to 448 px, 2x1 + overview for
    449x300, 3x2 + overview for 900x500, ... (transformers' own processor tiles 900x500 as 3 tiles)."""
    from mode_edge.arch import architecture_for
    from mode_edge.formats.checkpoint import Checkpoint
    from mode_edge.formats.samples import Sample
    from mode_edge.run.mtmd import MtmdSession

    model_dir, text, mmproj = ivl["legacy"]
    cal = architecture_for(Checkpoint(model_dir)).calibration()
    rng = np.random.default_rng(size[0])
    arr = np.full((size[1], size[0], 3), 200, np.uint8)
    arr[size[1] // 4 : size[1] // 2, size[0] // 5 : size[0] // 2] = (200, 30, 30)
    arr += (rng.random(arr.shape) * 30).astype(np.uint8)
    r = cal.render(Sample(prompt="What?", image=None), Image.fromarray(arr))
    with torch.no_grad():
        ref = _reference(hf_ivl).model.get_image_features(torch.from_numpy(r.pixel_values)).pooler_output
    ref = ref.reshape(-1, ref.shape[-1]).numpy()
    with MtmdSession(text, mmproj, f32_kv=True) as s:
        got = s.image_embeddings(arr)
    assert int((r.input_ids == cal.image_token_id).sum()) == got.shape[0] == ref.shape[0]
    assert np.abs(got - ref).max() <= 2e-3 * float(ref.max() - ref.min())  # measured 2.1-2.6e-4


def test_image_processor_settings_are_read_and_checked(tmp_path):
    """transformers 5's processor save writes processor_config.json (image_processor inside), not
    preprocessor_config.json; a processor that resizes tiles to another size is refused."""
    from mode_edge.arch import architecture_for
    from mode_edge.errors import UserError
    from mode_edge.formats.checkpoint import Checkpoint

    d = build_tiny_model(tmp_path / "m")
    pre = json.loads((d / "preprocessor_config.json").read_text())
    (d / "preprocessor_config.json").unlink()
    pre["image_mean"] = [0.5, 0.25, 0.125]
    (d / "processor_config.json").write_text(json.dumps({"image_processor": pre}))
    assert architecture_for(Checkpoint(d))._preprocessor()["image_mean"] == [0.5, 0.25, 0.125]
    pre["size"] = {"height": 384, "width": 384}
    (d / "processor_config.json").write_text(json.dumps({"image_processor": pre}))
    with pytest.raises(UserError, match="resizes tiles"):
        architecture_for(Checkpoint(d))
