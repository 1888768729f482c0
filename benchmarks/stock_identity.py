"""Stock GGUF files give bit-identical logits in the patched runtime and in the unpatched build.

    python benchmarks/stock_identity.py [--model examples/demo-model] [--types F32 Q8_0 Q4_K Q2_K]

Builds (or takes from the cache) llama-cpp-python 0.3.36 without our patch, same flags
(`python -m mode_edge.runtime.build --stock`), installs it into a private folder, and evaluates
each stock file (no expert groups) in both builds, one fresh process each, same tokens and
thread count: a prompt in one batch (prefill, the tiled/repack mul_mat_id paths) then tokens
one at a time (decode). Prints, per file, whether every logit is equal bit for bit.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RUN = """
import sys
import numpy as np
import llama_cpp
path, out, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
caps = getattr(llama_cpp.llama_cpp._lib, "llama_mode_edge_capabilities", None)
llm = llama_cpp.Llama(path, n_ctx=256, n_batch=256, n_ubatch=256, logits_all=True, n_threads=threads,
                      n_threads_batch=threads, verbose=False)
toks = [int(t) for t in np.random.default_rng(0).integers(20, llm.n_vocab() - 20, 96)]
llm.eval(toks[:64])                      # prefill: one batch
for t in toks[64:]:                      # decode: one token at a time
    llm.eval([t])
np.save(out, np.array(llm.scores[:len(toks)], dtype=np.float32))
print("patched" if caps is not None else "stock")
"""


def _logits(path: Path, out: Path, threads: int, pythonpath: str | None) -> tuple[np.ndarray, str]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", RUN, str(path), str(out), str(threads)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return np.load(out), proc.stdout.strip().splitlines()[-1]


def main() -> None:
    from mode_edge.formats.plan import QuantPlan
    from mode_edge.formats.quant_types import parse_type
    from mode_edge.gguf.export import export_model
    from mode_edge.runtime import build_runtime

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("examples/demo-model"))
    ap.add_argument("--types", nargs="+", default=["F32", "Q8_0", "Q4_K", "Q2_K"])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    wheel = build_runtime(stock=True, install=False, log=lambda m: None)
    with tempfile.TemporaryDirectory(prefix="mode-edge-stock-") as tmp:
        tmp = Path(tmp)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--target",
                str(tmp / "stock"),
                str(wheel),
            ],
            check=True,
        )
        print(f"stock build: {wheel.parent.name}; {a.threads} threads; 64-token prefill + 32 decoded tokens")
        print(f"{'file':<10} {'patched':>8} {'stock':>6} {'logits':>8} {'identical':>10} {'max |diff|':>11}")
        bad = 0
        for t in a.types:
            d = tmp / t
            if t.upper() in ("F32", "F16", "BF16", "Q8_0"):
                r = export_model(a.model, d, t.lower())
            else:
                r = export_model(
                    a.model,
                    d,
                    None,
                    plan=QuantPlan(method=f"uniform:{t}", default=parse_type(t)),
                    label=t.lower(),
                )
            mine, who_a = _logits(r.text_path, tmp / f"{t}-patched.npy", a.threads, None)
            ref, who_b = _logits(r.text_path, tmp / f"{t}-stock.npy", a.threads, str(tmp / "stock"))
            same = mine.shape == ref.shape and np.array_equal(mine.view(np.uint32), ref.view(np.uint32))
            bad += not same
            print(
                f"{t:<10} {who_a:>8} {who_b:>6} {mine.size:>8} {'yes' if same else 'NO':>10} "
                f"{float(np.abs(mine - ref).max()):>11.3g}"
            )
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
