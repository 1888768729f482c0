"""Which architecture file handles a checkpoint: a registry keyed by config.json's
`model_type` and `architectures` (like llama.cpp's ModelBase.register)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mode_edge.arch.base import Architecture
from mode_edge.errors import UserError
from mode_edge.formats.checkpoint import Checkpoint

_BY_MODEL_TYPE: dict[str, type[Architecture]] = {}
_BY_CLASS: dict[str, type[Architecture]] = {}


def register(
    *model_types: str, architectures: tuple[str, ...] = ()
) -> Callable[[type[Architecture]], type[Architecture]]:
    """Class decorator: this Architecture handles these model_type values / HF class names."""

    def wrap(cls: type[Architecture]) -> type[Architecture]:
        for t in model_types:
            if t in _BY_MODEL_TYPE:
                raise RuntimeError(
                    f"model_type {t!r} registered twice ({_BY_MODEL_TYPE[t].__name__}, {cls.__name__})"
                )
            _BY_MODEL_TYPE[t] = cls
        for a in architectures:
            _BY_CLASS[a] = cls
        cls.model_types, cls.hf_architectures = tuple(model_types), tuple(architectures)
        return cls

    return wrap


def registered() -> list[type[Architecture]]:
    return list(dict.fromkeys(_BY_MODEL_TYPE.values()))


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def open_architecture(model: str | Path | Architecture) -> Architecture:
    """A model folder's architecture, or the one given (stages take either, so a command opens
    the checkpoint once and passes the object down)."""
    return model if isinstance(model, Architecture) else architecture_for(Checkpoint(Path(model)))


def architecture_for(ckpt: Checkpoint) -> Architecture:
    """The registered architecture of a checkpoint (model_type first, then the HF class name)."""
    model_type = ckpt.config.get("model_type")
    archs = ckpt.config.get("architectures") or []
    cls = _BY_MODEL_TYPE.get(model_type) or next((_BY_CLASS[a] for a in archs if a in _BY_CLASS), None)
    if cls is None:
        raise UserError(
            f"no converter for model_type {model_type!r}" + (f" ({archs[0]})" if archs else ""),
            f"supported: {', '.join(supported_model_types())}",
        )
    try:
        return cls(ckpt)
    except (TypeError, ValueError, AttributeError) as e:  # a field of the wrong type in config.json
        raise UserError(
            f"config.json of {ckpt.dir} holds a value of the wrong type ({e.__class__.__name__}: {e})",
            "re-download config.json (fields such as num_hidden_layers are integers)",
        ) from None


def architecture_of_gguf(arch: str) -> type[Architecture]:
    """The registered architecture that writes llama.cpp architecture `arch` (for files, which
    have no config.json)."""
    for cls in registered():
        if cls.arch == arch:
            return cls
    known = sorted({c.arch for c in registered()})
    raise UserError(
        f"the GGUF's architecture {arch!r} is not one mode-edge writes", f"supported: {', '.join(known)}"
    )
