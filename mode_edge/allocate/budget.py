"""--budget strings: bytes (12GB = 12*10^9, 12GiB = 12*2^30) or average bits per routed-expert weight."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mode_edge.errors import UserError

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


@dataclass(frozen=True)
class Budget:
    bytes: int | None = None  # total bytes of all files written
    bpw: float | None = None  # or: average bits per routed-expert weight
    text: str = field(default="", compare=False)  # as the user wrote it (file names use it)

    def __str__(self) -> str:
        return f"{self.bpw:g} bpw" if self.bpw is not None else f"{self.bytes:,} bytes"


def parse_budget(text: str) -> Budget:
    s = text.strip().replace(" ", "").upper()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)BPW", s)
    if m:
        bpw = float(m.group(1))
        if not 1.0 <= bpw <= 32.0:
            raise UserError(f"budget {text!r}: {bpw} bits per weight is outside 1..32", "try e.g. 3.5bpw")
        return Budget(bpw=bpw, text=text)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]I?B|B)?", s)
    if not m:
        raise UserError(
            f"cannot read budget {text!r}", "write e.g. 12GB (10^9 bytes), 12GiB (2^30) or 3.5bpw"
        )
    value = float(m.group(1)) * _UNITS[m.group(2) or ""]
    if value < 1:
        raise UserError(f"budget {text!r} is zero", "give a positive size")
    return Budget(bytes=int(value), text=text)
