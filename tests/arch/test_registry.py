"""Architectures register themselves by model_type and HF class; everything else asks the registry."""

from __future__ import annotations

import json

import pytest

from mode_edge.arch import (
    Architecture,
    architecture_for,
    architecture_of_gguf,
    registered,
    supported_model_types,
)
from mode_edge.arch.qwen3_vl_moe import Qwen3VLMoe
from mode_edge.arch.registry import register
from mode_edge.errors import UserError
from mode_edge.formats.checkpoint import Checkpoint
from tests.helpers import DEMO


def _copy_with_config(tmp_path, **changes):
    d = tmp_path / "m"
    d.mkdir()
    for f in DEMO.iterdir():
        if f.is_file():
            (d / f.name).symlink_to(f)
    cfg = json.loads((DEMO / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").unlink()
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_every_registered_architecture_implements_the_contract():
    assert Qwen3VLMoe in registered() and "qwen3_vl_moe" in supported_model_types()
    for cls in registered():
        assert (
            issubclass(cls, Architecture)
            and cls.arch
            and cls.model_types
            and cls.media_part
            and cls.end_of_turn
        )
        assert not cls.__abstractmethods__, cls


def test_found_by_model_type_then_by_class_name(tmp_path):
    assert isinstance(architecture_for(Checkpoint(DEMO)), Qwen3VLMoe)
    renamed = _copy_with_config(tmp_path, model_type="qwen3_vl_moe_renamed")
    assert isinstance(architecture_for(Checkpoint(renamed)), Qwen3VLMoe)  # architectures[0] still matches


def test_unknown_model_says_what_is_supported(tmp_path):
    d = _copy_with_config(tmp_path, model_type="llama", architectures=["LlamaForCausalLM"])
    with pytest.raises(UserError, match=r"no converter for model_type 'llama' \(LlamaForCausalLM\)") as e:
        architecture_for(Checkpoint(d))
    assert "qwen3_vl_moe" in e.value.hint


def test_gguf_architecture_lookup():
    assert architecture_of_gguf("qwen3vlmoe") is Qwen3VLMoe
    with pytest.raises(UserError, match="'llama' is not one mode-edge writes"):
        architecture_of_gguf("llama")


def test_a_model_type_registers_once():
    with pytest.raises(RuntimeError, match="registered twice"):
        register("qwen3_vl_moe")(type("Other", (Qwen3VLMoe,), {}))
    assert architecture_for(Checkpoint(DEMO)).__class__ is Qwen3VLMoe
