"""Fuzz the patched llama.cpp loader with malformed expert-group GGUF files.

    python benchmarks/fuzz_loader.py [--cases 10000] [--sanitize] [--seeds demo,q35] [--jobs 2]
    python benchmarks/fuzz_loader.py --replay WORK/failures/case-123.gguf [--sanitize]

Seeds are valid expert-group files with mixed per-expert types, written by mode-edge's own
packer: the trained demo model (Qwen3-VL-MoE) and a tiny random Qwen3.5-MoE (hybrid layers,
shared experts), plus a tiny Qwen3-VL-MoE for quick runs. Each case applies one mutation from
benchmarks/gguf_mutations.py to a seed and is loaded in a forked child process (worker processes
import llama.cpp once, then fork per case); if it loads, it is evaluated on 4 tokens and one more
decoded. Cases rotate over three loader paths: repacked CPU buffers, plain buffers and the
masked fallback (MODE_EDGE_GROUPS_FALLBACK=1).

A case is *refused* (the loader returned no model or context, and the log says why), *loaded*
(it ran), or a *failure*: a crash (signal or unexpected exit), a hang (timeout), a sanitizer
report, or a refusal with no error message. Failures are saved under WORK/failures with their
reproducer (the case file, the mutation and its log); the script exits 1 if there are any.

--sanitize runs against an AddressSanitizer + UBSan build of the same patched release
(`mode-edge runtime build --sanitize`, cached apart, never installed): it is unpacked into WORK
and loaded with the sanitizer runtimes preloaded. Without it the installed runtime is used
(tests/runtime/test_fuzz_loader.py runs a few hundred cases that way).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gguf_mutations as gm  # noqa: E402

MODES = ("repack", "unpacked", "fallback")
SANITIZER = re.compile(
    r"ERROR: AddressSanitizer|runtime error:|UndefinedBehaviorSanitizer|ERROR: LeakSanitizer"
)
#: log lines that only say that loading stopped; the reason is on the line before
_GENERIC = re.compile(r"failed to load model|gguf_init_from_\w+: failed to read")
_ERRORISH = re.compile(r"error|failed|invalid|cannot|unable|not (found|within|supported)|exceeds|wrong", re.I)


def reason(log: str) -> str | None:
    """The line of a llama.cpp log that says why a file was refused, or None."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for ln in lines:
        m = re.search(r"error loading model: (.*)$", ln)
        if m and not _GENERIC.search(m.group(1)):
            return m.group(1)
    for i, ln in enumerate(lines):
        if _GENERIC.search(ln):
            prev = lines[i - 1] if i > 0 else ""
            # ggml's GGUF reader logs the reason just before its own "failed to read" line
            return prev if prev.startswith(("gguf_", "read:")) or _ERRORISH.search(prev) else ln
    return next((ln for ln in lines if _ERRORISH.search(ln)), None)


EXIT = {"loaded": 0, "no_model": 3, "no_context": 4, "decode_failed": 5, "no_vocab": 6}


# -- seeds ------------------------------------------------------------------------------------

SEED_TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "IQ4_XS", "Q4_0", "F16"]


def _model_dir(name: str, work: Path) -> Path:
    if name == "demo":
        return ROOT / "examples" / "demo-model"
    d = work / "models" / name
    if (d / "config.json").is_file():
        return d
    if name == "q35":
        from testbed.tiny_qwen3_5_moe import build_tiny_model
    elif name == "tiny":
        from testbed.tiny_qwen3_vl_moe import build_tiny_model
    else:
        raise SystemExit(f"error: unknown seed {name!r} (choose demo, q35, tiny)")
    return build_tiny_model(d)


def build_seed(name: str, work: Path) -> Path:
    """A valid grouped text GGUF of the seed model: each expert a type drawn (fixed seed) from
    SEED_TYPES, every other matrix Q8_0, written by mode-edge's packer."""
    out = work / "seeds" / name
    path = out / "seed.gguf"
    if path.is_file():
        return path
    from gguf import GGMLQuantizationType as T

    from mode_edge.arch import architecture_for
    from mode_edge.formats.checkpoint import Checkpoint
    from mode_edge.formats.plan import QuantPlan
    from mode_edge.formats.tensors import Role
    from mode_edge.gguf.export import export_model

    model = _model_dir(name, work)
    arch = architecture_for(Checkpoint(model))
    rng = random.Random(0)
    plan = {}
    for spec in arch.text_tensors():
        if spec.role == Role.EXPERT:
            plan[spec.name] = [T[rng.choice(SEED_TYPES)] for _ in range(spec.n_expert)]
    qp = QuantPlan(method="fuzz-seed", default=T.Q8_0, tensors=plan)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    res = export_model(model, tmp, None, plan=qp, label="seed")
    res.text_path.rename(tmp / "seed.gguf")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return path


# -- the worker: imports llama.cpp once, forks per case ------------------------------------------


def _child(path: str, mode: str) -> int:
    import ctypes

    import llama_cpp.llama_cpp as L

    if mode == "fallback":
        os.environ["MODE_EDGE_GROUPS_FALLBACK"] = "1"
    mp = L.llama_model_default_params()
    mp.use_extra_bufts = mode != "unpacked"
    model = L.llama_model_load_from_file(path.encode(), mp)
    if not model:
        return EXIT["no_model"]
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch = 64, 64, 64
    cp.n_threads = cp.n_threads_batch = 1
    ctx = L.llama_init_from_model(model, cp)
    if not ctx:
        return EXIT["no_context"]
    n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    if n_vocab <= 0:
        return EXIT["no_vocab"]
    toks = [t % n_vocab for t in (1, 2, 3, 4)]
    arr = (L.llama_token * 4)(*toks)
    if L.llama_decode(ctx, L.llama_batch_get_one(arr, 4)) != 0:
        return EXIT["decode_failed"]
    logits = ctypes.cast(L.llama_get_logits_ith(ctx, -1), ctypes.POINTER(ctypes.c_float))
    nxt = max(range(n_vocab), key=lambda i: logits[i])
    one = (L.llama_token * 1)(nxt)
    if L.llama_decode(ctx, L.llama_batch_get_one(one, 1)) != 0:
        return EXIT["decode_failed"]
    L.llama_free(ctx)
    L.llama_model_free(model)
    return EXIT["loaded"]


def worker() -> None:
    """Reads {"path", "mode", "log", "timeout"} lines on stdin; answers one JSON line each."""
    import llama_cpp.llama_cpp as L

    L.llama_backend_init()
    for line in sys.stdin:
        job = json.loads(line)
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            try:
                code = _child(job["path"], job["mode"])
            except BaseException as e:  # a Python-side error is a harness failure, not a refusal
                os.write(2, f"python exception: {e!r}\n".encode())
                code = 70
            os._exit(code)
        status, hung = None, False
        while status is None:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
            elif time.monotonic() - t0 > job["timeout"]:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                hung = True
            else:
                time.sleep(0.002)
        res = {"hung": hung, "seconds": time.monotonic() - t0}
        if os.WIFSIGNALED(status):
            res["signal"] = os.WTERMSIG(status)
        else:
            res["exit"] = os.WEXITSTATUS(status)
        print(json.dumps(res), flush=True)


# -- the sanitizer build -------------------------------------------------------------------------


def sanitized_site(work: Path) -> Path:
    """The --sanitize wheel (built once, cached by mode-edge) unpacked into WORK/asan-site."""
    from mode_edge.runtime.build import build_runtime

    wheel = build_runtime(sanitize=True, install=False, say=lambda m: print(m, flush=True))
    site = work / "asan-site"
    stamp = site / ".wheel"
    # the wheel's path names its cache key (every build of the release has the same file name)
    if not (stamp.is_file() and stamp.read_text() == str(wheel)):
        shutil.rmtree(site, ignore_errors=True)
        with zipfile.ZipFile(wheel) as z:
            z.extractall(site)
        stamp.write_text(str(wheel))
    return site


def worker_env(sanitize: bool, work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MODE_EDGE_GROUPS_FALLBACK", None)
    env["GGML_NO_BACKTRACE"] = "1"  # an abort would otherwise attach gdb (minutes under ASan)
    if sanitize:
        from mode_edge.runtime.build import sanitizer_env

        env.update(sanitizer_env())
        env["PYTHONPATH"] = os.pathsep.join([str(sanitized_site(work)), str(ROOT), env.get("PYTHONPATH", "")])
    return env


class Worker:
    def __init__(self, env: dict[str, str]):
        self.env = env
        self.proc = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=self.env,
        )

    def send(self, job: dict) -> None:
        assert self.proc and self.proc.stdin
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> dict:
        assert self.proc and self.proc.stdout
        line = self.proc.stdout.readline()
        if not line:  # the worker itself died: count it against the case and restart it
            self.proc.wait()
            self.start()
            return {"hung": False, "worker_died": self.proc.returncode, "seconds": 0.0}
        return json.loads(line)

    def close(self) -> None:
        if self.proc and self.proc.stdin:
            self.proc.stdin.close()
            self.proc.wait()


# -- cases and verdicts --------------------------------------------------------------------------


@dataclass
class Case:
    index: int
    seed: str
    mutation: str
    rng_seed: int
    mode: str


def plan_cases(n: int, seeds: list[str], base_seed: int) -> list[Case]:
    names = list(gm.MUTATIONS)
    out = []
    for i in range(n):
        m = names[i % len(names)]
        s = seeds[(i // len(names)) % len(seeds)]
        out.append(Case(i, s, m, random.Random(f"{base_seed}:{i}").randrange(2**63), MODES[i % len(MODES)]))
    return out


def verdict(res: dict, log: str) -> tuple[str, str]:
    """(kind, detail): kind is refused, loaded or failure."""
    if SANITIZER.search(log):
        m = SANITIZER.search(log)
        line = next((ln for ln in log.splitlines() if m.group(0) in ln), m.group(0))
        return "failure", f"sanitizer: {line.strip()[:200]}"
    if res.get("hung"):
        return "failure", f"hang (> {res['timeout']:.0f} s)"
    if "worker_died" in res:
        return "failure", f"worker died ({res['worker_died']})"
    if "signal" in res:
        return "failure", f"crash: {signal.Signals(res['signal']).name}"
    code = res["exit"]
    if code == EXIT["loaded"]:
        return "loaded", ""
    if code in (EXIT["no_model"], EXIT["no_context"], EXIT["decode_failed"], EXIT["no_vocab"]):
        why = reason(log)
        if why is None:
            return "failure", f"refused without an error message (exit {code})"
        return "refused", why[:240]
    return "failure", f"unexpected exit {code}: {log.strip().splitlines()[-1][:200] if log.strip() else ''}"


def inspect_verdict(path: Path) -> str:
    """mode-edge's own reader (gguf-py, as `inspect`, `chat` and `serve` read a file's header):
    it must read the file or refuse it with a UserError (one line, exit 2), never raise anything
    else."""
    from mode_edge.errors import UserError
    from mode_edge.gguf.inspect import summarize

    try:
        summarize(path)
        return "read"
    except UserError:
        return "refused"
    except Exception as e:  # a traceback in the CLI
        return f"traceback: {type(e).__name__}: {str(e)[:160]}"


def _normalise(msg: str) -> str:
    """A refusal message with its numbers and tensor names generalised, for the summary."""
    msg = re.sub(r"/\S+\.gguf", "FILE", msg)
    msg = re.sub(r"blk\.\d+\.", "blk.N.", msg)
    msg = re.sub(r"\.g\d+\.", ".gK.", msg)
    msg = re.sub(r"\b\d+\b", "#", msg)
    msg = re.sub(r"'[^']*'", "'…'", msg)
    return msg[:110]


def run(args) -> int:
    work = Path(args.work or tempfile.mkdtemp(prefix="fuzz-loader-"))
    work.mkdir(parents=True, exist_ok=True)
    seeds = args.seeds.split(",")
    t0 = time.monotonic()
    print(f"seeds: {', '.join(seeds)} (work folder {work})", flush=True)
    paths = {s: build_seed(s, work) for s in seeds}
    parsed = {s: gm.read_seed(p, s) for s, p in paths.items()}
    env = worker_env(args.sanitize, work)
    cases = plan_cases(args.cases, seeds, args.seed)
    scratch = Path(
        tempfile.mkdtemp(prefix="fuzz-cases-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None)
    )
    failures_dir = work / "failures"
    counts = collections.Counter()
    by_mut: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    messages = collections.Counter()
    by_inspect = collections.Counter()  # (mode-edge's reader, llama.cpp's loader) verdicts
    failures = []
    workers = [Worker(env) for _ in range(args.jobs)]
    print(
        f"{len(cases)} cases, {len(gm.MUTATIONS)} mutations, runtime: "
        f"{'ASan+UBSan build' if args.sanitize else 'installed'}, {args.jobs} workers",
        flush=True,
    )
    t_run = time.monotonic()
    pending = list(cases)
    busy: dict[int, tuple[Case, Path, Path, str, str]] = {}
    last = time.monotonic()
    try:
        while pending or busy:
            for w_i, w in enumerate(workers):
                if w_i in busy or not pending:
                    continue
                case = pending.pop(0)
                path = scratch / f"case-{case.index}.gguf"
                log = scratch / f"case-{case.index}.log"
                what = gm.MUTATIONS[case.mutation](parsed[case.seed], random.Random(case.rng_seed), path)
                w.send({"path": str(path), "mode": case.mode, "log": str(log), "timeout": args.timeout})
                # mode-edge's reader runs here while the worker loads the case
                busy[w_i] = (case, path, log, what, inspect_verdict(path))
            # collect in order; each worker answers one line per job
            for w_i in list(busy):
                case, path, log, what, inspected = busy.pop(w_i)
                res = workers[w_i].receive()
                res["timeout"] = args.timeout
                text = log.read_text(errors="replace") if log.is_file() else ""
                kind, detail = verdict(res, text)
                by_inspect[(inspected if not inspected.startswith("traceback") else "traceback", kind)] += 1
                if inspected.startswith("traceback") and kind != "failure":
                    kind, detail = "failure", f"mode-edge inspect: {inspected}"
                counts[kind] += 1
                by_mut[case.mutation][kind] += 1
                if kind == "refused":
                    messages[_normalise(detail)] += 1
                if kind == "failure":
                    failures_dir.mkdir(parents=True, exist_ok=True)
                    stem = failures_dir / f"case-{case.index}"
                    shutil.copy2(path, stem.with_suffix(".gguf"))
                    rec = {
                        **case.__dict__,
                        "what": what,
                        "detail": detail,
                        "replay": f"python benchmarks/fuzz_loader.py --replay {stem.with_suffix('.gguf')} "
                        f"--mode {case.mode}{' --sanitize' if args.sanitize else ''}",
                    }
                    stem.with_suffix(".json").write_text(json.dumps(rec, indent=1))
                    stem.with_suffix(".log").write_text(text)
                    failures.append(rec)
                    print(f"FAILURE case {case.index} [{case.mutation}] {what}: {detail}", flush=True)
                path.unlink(missing_ok=True)
                log.unlink(missing_ok=True)
            if time.monotonic() - last > 30:
                last = time.monotonic()
                done = sum(counts.values())
                print(
                    f"  {done}/{len(cases)} cases ({done / (last - t_run):.1f}/s): "
                    + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
                    flush=True,
                )
    finally:
        for w in workers:
            w.close()
        shutil.rmtree(scratch, ignore_errors=True)
    secs = time.monotonic() - t0
    report(cases, counts, by_mut, messages, failures, secs, time.monotonic() - t_run, args, by_inspect)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "cases": len(cases),
                    **counts,
                    "seconds": secs,
                    "sanitize": args.sanitize,
                    "by_mutation": {k: dict(v) for k, v in by_mut.items()},
                    "refusals": dict(messages),
                    "inspect_vs_loader": {f"{a}/{b}": n for (a, b), n in by_inspect.items()},
                    "failures": failures,
                },
                indent=1,
            )
        )
    return 1 if failures else 0


def report(cases, counts, by_mut, messages, failures, secs, run_secs, args, by_inspect) -> None:
    print()
    print(f"{'mutation':<38} {'run':>6} {'refused':>8} {'loaded':>7} {'failures':>9}")
    for m in gm.MUTATIONS:
        c = by_mut[m]
        print(f"{m:<38} {sum(c.values()):>6} {c['refused']:>8} {c['loaded']:>7} {c['failure']:>9}")
    print(f"{'all':<38} {len(cases):>6} {counts['refused']:>8} {counts['loaded']:>7} {counts['failure']:>9}")
    print()
    print(
        f"runtime: {'ASan + UBSan' if args.sanitize else 'installed'}; seeds {args.seeds}; "
        f"{secs:.0f} s in all ({run_secs:.0f} s running cases)"
    )
    print("most frequent refusals (numbers and names generalised):")
    for msg, n in messages.most_common(args.top):
        print(f"  {n:>6}  {msg}")
    print("mode-edge's reader (inspect) vs llama.cpp's loader:")
    for (a, b), n in sorted(by_inspect.items()):
        print(f"  {n:>6}  inspect {a}, loader {b}")
    print(f"failures: {len(failures)}")


def replay(args) -> int:
    work = Path(args.work or tempfile.mkdtemp(prefix="fuzz-replay-"))
    work.mkdir(parents=True, exist_ok=True)
    env = worker_env(args.sanitize, work)
    w = Worker(env)
    log = work / "replay.log"
    w.send(
        {
            "path": str(Path(args.replay).resolve()),
            "mode": args.mode,
            "log": str(log),
            "timeout": args.timeout,
        }
    )
    res = w.receive()
    w.close()
    res["timeout"] = args.timeout
    text = log.read_text(errors="replace") if log.is_file() else ""
    kind, detail = verdict(res, text)
    print(text[-4000:])
    print(f"{kind}: {detail}")
    return 1 if kind == "failure" else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--seeds", default="demo,q35", help="comma-separated: demo, q35, tiny")
    ap.add_argument("--seed", type=int, default=0, help="random seed of the case list")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds before a case counts as a hang")
    ap.add_argument("--sanitize", action="store_true", help="run against the ASan + UBSan build")
    ap.add_argument("--work", help="folder for seeds, the unpacked sanitizer build and failures")
    ap.add_argument("--json", help="also write the report as JSON here")
    ap.add_argument("--top", type=int, default=25, help="refusal messages to list")
    ap.add_argument("--replay", help="load one saved case and print its log")
    ap.add_argument("--mode", default="repack", choices=MODES, help="loader path for --replay")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker()
        return 0
    return replay(args) if args.replay else run(args)


if __name__ == "__main__":
    sys.exit(main())
