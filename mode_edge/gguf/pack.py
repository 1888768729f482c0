"""A QuantPlan applied to a converter's tensors: the list of tensors to write.

Type rules for what the plan does not decide, as llama.cpp does: 1-D tensors, norms, the
MoE router and learned position embeddings stay F32; rows that do not fill a type's block
fall back like llama-quantize. An expert tensor whose experts share one type is written in
stock form; otherwise as expert groups.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from gguf import GGMLQuantizationType

from mode_edge.errors import UserError
from mode_edge.formats.groups import group_tensor_names, split_groups
from mode_edge.formats.imatrix import Imatrix
from mode_edge.formats.plan import QuantPlan
from mode_edge.formats.quant_types import fallback
from mode_edge.formats.tensors import Role, TensorSpec
from mode_edge.gguf.writer import OutTensor
from mode_edge.quantize import encode_experts, encode_rows_parallel, requires_imatrix

T = GGMLQuantizationType

_ALWAYS_F32 = {Role.NORM, Role.BIAS, Role.ROUTER, Role.POSITION, Role.SSM}  # as llama-quantize


def keeps_f32(spec: TensorSpec) -> bool:
    return len(spec.shape) == 1 or spec.role in _ALWAYS_F32


def resolve_types(spec: TensorSpec, plan: QuantPlan, *, mmproj: bool = False) -> T | list[T]:
    """The stored type of a tensor, or of each of its experts, after fallbacks."""
    if keeps_f32(spec):
        return T.F32
    want = (
        plan.mmproj
        if mmproj
        else plan.tensors.get(spec.name, plan.default if plan.default is not None else T.F16)
    )
    if isinstance(want, list):
        if spec.role != Role.EXPERT or len(want) != spec.n_expert:
            raise UserError(
                f"the plan gives {len(want)} types for {spec.name}, which has {spec.n_expert} experts",
                "a list of types is for routed-expert tensors, one type per expert; re-run `mode-edge plan`",
            )
        types = [fallback(t, spec.row_size) for t in want]
        return types[0] if len(set(types)) == 1 else types
    return fallback(want, spec.row_size)


class Packer:
    """Builds OutTensors for a plan; owns the thread pool the quantizer runs in."""

    def __init__(
        self, plan: QuantPlan, imatrix: Imatrix | None = None, n_threads: int = 1, check_imatrix: bool = True
    ):
        self.plan = plan
        self.imatrix = imatrix
        self.check_imatrix = check_imatrix  # off when only sizes are wanted (importance changes no byte)
        self.n_threads = max(1, n_threads)
        self.pool = ThreadPoolExecutor(self.n_threads)
        self.grouped = False

    def close(self) -> None:
        self.pool.shutdown()

    def _importance(self, spec: TensorSpec) -> np.ndarray | None:
        if self.imatrix is None:
            return None
        return self.imatrix.for_tensor(spec.name, max(1, spec.n_expert), spec.row_size)

    @staticmethod
    def _expert_loader(spec: TensorSpec):
        """Per-expert reads where the converter offers them; else the whole tensor, once."""
        if spec.load_expert is not None:
            return spec.load_expert
        whole = spec.load()
        return lambda e: whole[e]

    def _check_imatrix(self, spec: TensorSpec, types: list[T]) -> None:
        needy = sorted({t.name for t in types if requires_imatrix(t)})
        if needy and self._importance(spec) is None:
            raise UserError(
                f"{spec.name} is planned as {needy[0]}, which needs an importance matrix, and none covers it",
                "pass --imatrix with an entry for it, or choose a type >= Q2_K for it",
            )

    def tensors(self, specs: list[TensorSpec], *, mmproj: bool = False) -> list[OutTensor]:
        """Resolve every tensor's type(s) up front (errors before any file is opened)."""
        out: list[OutTensor] = []
        for spec in specs:
            types = resolve_types(spec, self.plan, mmproj=mmproj)
            if self.check_imatrix:
                self._check_imatrix(spec, types if isinstance(types, list) else [types])
            if isinstance(types, list):
                self.grouped = True
                for k, (t, ids) in enumerate(split_groups(types)):
                    w_name, i_name = group_tensor_names(spec.name, k)
                    shape = (len(ids),) + spec.shape[1:]
                    out.append(OutTensor(w_name, shape, t, self._experts_producer(spec, t, ids)))
                    out.append(
                        OutTensor(
                            i_name, (len(ids),), T.I32, (lambda ids=ids: np.asarray(ids, dtype=np.int32))
                        )
                    )
            else:
                out.append(OutTensor(spec.name, spec.shape, types, self._producer(spec, types)))
        return out

    def _experts_producer(self, spec: TensorSpec, t: T, ids: list[int]):
        def produce() -> np.ndarray:
            return encode_experts(t, self._expert_loader(spec), ids, self._importance(spec), self.pool)

        return produce

    def _producer(self, spec: TensorSpec, t: T):
        def produce() -> np.ndarray:
            if spec.role == Role.EXPERT:
                return encode_experts(
                    t, self._expert_loader(spec), range(spec.n_expert), self._importance(spec), self.pool
                )
            data = spec.load()
            if tuple(data.shape) != spec.shape:
                raise RuntimeError(f"{spec.name}: loaded shape {data.shape}, expected {spec.shape}")
            imp = self._importance(spec)
            return encode_rows_parallel(
                t, data, imp[0] if imp is not None else None, self.pool, self.n_threads
            )

        return produce
