"""Shared helpers for the benchmarks in tools/bench/.

- every measurement runs in a fresh Python subprocess (`run_worker`), so that peak RSS
  (`ru_maxrss` of that process) and import costs belong to that one measurement;
- onnxpress I/O through `onnxpress.ir.io` (falls back to plain onnx_ir while that is missing);
- op-type counts, seeded random feeds for real models, output comparison on ONNX Runtime;
- versions / machine lines and writing one marked section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import collections
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

RESULT_TAG = "@@BENCH-RESULT@@ "


# --------------------------------------------------------------------------------------------
# subprocess workers


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def current_rss_bytes() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:  # pragma: no cover
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def emit_result(result: dict[str, Any]) -> None:
    """Called by a worker as its last act: prints the result line the parent looks for."""
    result.setdefault("peak_rss_bytes", peak_rss_bytes())
    sys.stdout.write(RESULT_TAG + json.dumps(result) + "\n")
    sys.stdout.flush()


class WorkerError(RuntimeError):
    pass


def run_worker(script: str | Path, payload: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run `python script --worker JSON` in a fresh process; return its result dict.

    Adds `wall_s` (the whole subprocess, interpreter start and imports included).
    """
    cmd = [sys.executable, str(script), "--worker", json.dumps(payload)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
            result["wall_s"] = wall
            return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
    raise WorkerError(f"worker {payload.get('kind')} failed (exit {proc.returncode}): {tail[0]}")


def median(xs: Iterable[float]) -> float:
    return statistics.median(list(xs))


# --------------------------------------------------------------------------------------------
# onnxpress I/O (switches to onnxpress.ir.io as soon as it exists)


def onnxpress_io() -> tuple[Callable[..., Any], Callable[..., None], str]:
    """(load, save, where-from). `save(model, path, external_data=None|bool)`."""
    try:
        from onnxpress.ir.io import load, save  # type: ignore[attr-defined]

        return load, save, "onnxpress.ir.io"
    except ImportError:
        import onnx_ir as ir

        def save(model, path, external_data=None):  # same contract as onnxpress.ir.io.save
            path = Path(path)
            if external_data:
                ir.save(model, path, external_data=path.name + ".data")
            else:
                ir.save(model, path)

        return ir.load, save, "onnx_ir (fallback: onnxpress.ir.io not available)"


# --------------------------------------------------------------------------------------------
# model facts


def op_counts(path: str | Path) -> collections.Counter:
    """Op-type counts of the main graph of a saved model (weights not loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return collections.Counter(
        (n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}") for n in model.graph.node
    )


def dir_bytes(paths: Sequence[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.exists())


def model_files(path: str | Path) -> list[Path]:
    """The .onnx file and every external-data file it references."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    locations = set()
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                locations.add(e.value)
    return [path] + [path.parent / loc for loc in sorted(locations)]


# --------------------------------------------------------------------------------------------
# ONNX Runtime comparison


def ort_session(path: str | Path, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # Compare what the tools produced, not what ORT's own graph optimizer makes of it.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_feeds(path: str | Path, feeds: Sequence[dict[str, Any]]) -> list[list[Any]]:
    sess = ort_session(path)
    return [sess.run(None, f) for f in feeds]


def max_abs_error(reference: list[list[Any]], other: list[list[Any]]) -> float:
    import numpy as np

    worst = 0.0
    for ref_outs, outs in zip(reference, other, strict=True):
        if len(ref_outs) != len(outs):
            return float("inf")
        for a, b in zip(ref_outs, outs):
            a, b = np.asarray(a), np.asarray(b)
            if a.shape != b.shape:
                return float("inf")
            if a.size:
                worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
    return worst


# --------------------------------------------------------------------------------------------
# reporting


def versions(packages: Sequence[str]) -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine_line() -> str:
    try:
        import psutil

        mem = f", {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:  # pragma: no cover
        mem = ""
    cpu = platform.processor() or platform.machine()
    return f"{platform.system()} {platform.machine()} ({cpu}), {os.cpu_count()} cores{mem}"


def git_commit() -> str:
    """The checkout's commit (read-only git), marked '+ local changes' when the tree is dirty."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown commit"
    return (head or "unknown commit") + (" + local changes" if dirty else "")


def today() -> str:
    return _dt.datetime.now().strftime("%Y-%m-%d %H:%M")


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_md_section(path: str | Path, key: str, title: str, body: str) -> None:
    """Replace (or append) the section between `<!-- key:begin -->` and `<!-- key:end -->`."""
    path = Path(path)
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    block = f"{begin}\n## {title}\n\n{body.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n\nMeasured results, each with the command that produced it.\n\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
