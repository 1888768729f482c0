"""Converting streams: peak memory does not grow with the number of layers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from testbed.tiny_qwen3_vl_moe import build_tiny_model

# VmHWM is this process image's own peak; ru_maxrss would also count the parent's
# resident size at fork time (Linux carries it across exec), hiding any growth.
_MEASURE = """
import re, sys
import torch, transformers  # the imports' own memory is the same in both runs
from mode_edge.gguf.export import export_model
r = export_model(sys.argv[1], sys.argv[2], "f32")
hwm_kb = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
print(hwm_kb * 1024, r.text_bytes)
"""


def _peak_rss(model_dir, out_dir) -> tuple[int, int]:
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(model_dir), str(out_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    peak, size = proc.stdout.split()
    return int(peak), int(size)


@pytest.mark.parametrize("layout", ["transformers", "per_expert"])
def test_peak_rss_does_not_grow_with_model_size(tmp_path, layout):
    small = build_tiny_model(tmp_path / "small", n_layers=2, layout=layout)
    large = build_tiny_model(tmp_path / "large", n_layers=14, layout=layout)
    peak_small, size_small = _peak_rss(small, tmp_path / "out-small")
    peak_large, size_large = _peak_rss(large, tmp_path / "out-large")
    grown_bytes = size_large - size_small  # ~150 MB more weights
    assert grown_bytes > 100e6
    # Largest tensor here: gate_up_proj, 8 x 1024 x 256 f32 = 8 MB. A converter that held
    # the model would grow by ~grown_bytes; a streaming one by at most a few tensors.
    assert peak_large - peak_small < 32e6, (peak_small, peak_large, grown_bytes)
