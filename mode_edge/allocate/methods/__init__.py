"""Allocation methods by name (`mode-edge plan --method NAME`)."""

from __future__ import annotations

from mode_edge.allocate.methods.base import Method
from mode_edge.allocate.methods.frequency import Frequency
from mode_edge.allocate.methods.hessian import Hessian, HessianData
from mode_edge.allocate.methods.mode import Mode, ModeAllVision, ModeGlobal, ModeNoSens, ModePooled, ModeText
from mode_edge.allocate.methods.uniform import Uniform
from mode_edge.allocate.methods.veq import Veq, VeqAlloc
from mode_edge.errors import UserError

#: what `convert --budget` and `plan` use unless told otherwise (benchmarks/quality.py decides)
DEFAULT_METHOD = "mode"

METHODS: dict[str, type[Method]] = {
    m.name: m
    for m in (
        Uniform,
        Frequency,
        Hessian,
        HessianData,
        Veq,
        VeqAlloc,
        Mode,
        ModeGlobal,
        ModeText,
        ModePooled,
        ModeAllVision,
        ModeNoSens,
    )
}


def get_method(name: str) -> Method:
    cls = METHODS.get(name.strip().lower())
    if cls is None:
        raise UserError(f"unknown method {name!r}", f"choose one of {', '.join(METHODS)}")
    return cls()
