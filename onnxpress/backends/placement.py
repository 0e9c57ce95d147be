"""Placement check: open a real session on the target's EP and say which provider ran each node.

ONNX Runtime's profiler writes one "Node" event per kernel run, naming the kernel, its op type and
the provider that ran it (`_placement_probe.py`). One run on one feed is enough. Kernels on any
provider other than the target's own fell back; those are nodes of the model, by name. An EP that
compiles partitions (OpenVINO, TensorRT, QNN, CoreML) shows up as one kernel per partition
(`OpenVINOExecutionProvider_OpenVINO-EP-subgraph_1_0`), not per node: the nodes inside are listed
as `absorbed`, together with the nodes ORT's own graph optimizer fused away (QDQ units into
QLinearConv on the CPU), which the profile cannot tell apart from them.

An EP's onnxruntime package often cannot live beside the plain one (`onnxruntime-openvino`
replaces `onnxruntime`), so the probe can run under another interpreter: `python=` here, or the
environment variable `ONNXPRESS_PLACEMENT_PYTHON` (which the CLI's `--placement` honours). The
model then goes to that interpreter as a file, with the feed as an .npz. Where the onnxruntime used
lacks the provider, nothing is run and the result says why, so the report never claims a placement
it did not see.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

__all__ = ["check_placement", "PLACEMENT_MAX_BYTES", "PLACEMENT_PYTHON_ENV"]

logger = logging.getLogger(__name__)

#: `placement="auto"` skips models with more weight bytes than this (a second session costs memory).
PLACEMENT_MAX_BYTES = 1 << 30
#: interpreter whose onnxruntime runs the placement check when none is given
PLACEMENT_PYTHON_ENV = "ONNXPRESS_PLACEMENT_PYTHON"
_PROBE = Path(__file__).with_name("_placement_probe.py")
_IR_VERSION_ERROR = re.compile(r"max supported IR version: (\d+)")


def _skipped(target_provider: str, reason: str) -> dict[str, Any]:
    return {"checked": False, "target_provider": target_provider, "reason": reason}


def check_placement(model: ir.Model, backend: Any, feeds: Sequence[Mapping[str, Any]], *,
                    python: str | None = None, timeout: float = 900) -> dict[str, Any]:
    """{"checked", "target_provider", "providers", "nodes": [{name, op_type, provider}] (the kernels
    that ran), "by_provider": {provider: count}, "op_types": {op: count}, "fallback": [names of
    kernels off the target's provider], "partitions": [kernels that are compiled EP partitions],
    "absorbed": [nodes of `model` that ran inside a partition or were fused by ORT], "granularity":
    "node" | "partition", "onnxruntime": version, "python": interpreter or None}, or
    {"checked": False, "reason": ...} when it could not look."""
    caps = backend.capabilities
    target = caps.provider
    python = python or os.environ.get(PLACEMENT_PYTHON_ENV) or None
    if not feeds:
        return _skipped(target, "no input feeds to run the model with")
    providers = list(caps.providers)
    options = [backend.provider_options(model) if p == target else {} for p in providers]
    feed = {name: np.asarray(value) for name, value in dict(feeds[0]).items()}
    if python is None:
        raw = _probe_here(model, providers, options, feed)
    else:
        raw = _probe_under(python, model, providers, options, feed, timeout)
    where = f" (python: {python})" if python else ""
    if "missing" in raw:
        hint = ("install the EP's onnxruntime package" if python else
                f"install the EP's onnxruntime package, or point {PLACEMENT_PYTHON_ENV} at a Python that has it")
        return _skipped(target, f"{target} is not in this onnxruntime build{where} (it has "
                                f"{', '.join(raw.get('available') or [])}); {hint} to check placement")
    if not raw.get("ok"):
        return _skipped(target, f"could not run the model{where}: {raw.get('error', 'unknown error')}")
    return _summarize(model, target, raw, python)


def _summarize(model: ir.Model, target: str, raw: dict[str, Any], python: str | None) -> dict[str, Any]:
    kernels = [dict(k) for k in raw["kernels"]]
    names = {k["name"] for k in kernels}
    partitions = [k["name"] for k in kernels if k["provider"] != "CPUExecutionProvider"
                  and k["name"].startswith(k["provider"] + "_")]
    absorbed = [n.name for n in model.graph if n.name and n.name not in names]
    fallback = [k["name"] for k in kernels if k["provider"] != target]
    result = {
        "checked": True,
        "target_provider": target,
        "providers": list(raw.get("session_providers") or []),
        "nodes": kernels,
        "by_provider": dict(sorted(Counter(k["provider"] for k in kernels).items())),
        "op_types": dict(sorted(Counter(k["op_type"] for k in kernels).items())),
        "fallback": fallback,
        "partitions": partitions,
        "absorbed": absorbed,
        "granularity": "partition" if partitions else "node",
        "onnxruntime": raw.get("onnxruntime"),
        "python": python,
    }
    logger.info("placement: %d kernel(s) ran, %d on %s (%d partition(s) holding or fusing %d node(s))",
                len(kernels), len(kernels) - len(fallback), target, len(partitions), len(absorbed))
    return result


def _probe_here(model: ir.Model, providers: list[str], options: list[dict[str, Any]],
                feed: dict[str, np.ndarray]) -> dict[str, Any]:
    """The probe in this interpreter, through onnxpress's session (big models, IR version retry)."""
    from onnxpress.backends import _placement_probe
    from onnxpress.backends.ort import create_session

    def open_session(opts: Any, names: list[str], provider_options: list[dict[str, Any]]) -> Any:
        return create_session(model, names, session_options=opts, provider_options=provider_options)

    return _placement_probe.probe(open_session, providers, options, feed)


def _probe_under(python: str, model: ir.Model, providers: list[str], options: list[dict[str, Any]],
                 feed: dict[str, np.ndarray], timeout: float) -> dict[str, Any]:
    """The probe as a script under `python`: model saved to a temporary folder, the feed as .npz. A
    model whose IR version that onnxruntime does not take yet is saved again with the highest it
    takes (the model itself keeps its version)."""
    from onnxpress.ir.io import save

    ir_version = model.ir_version
    with tempfile.TemporaryDirectory(prefix="onnxpress-placement-") as tmp:
        request = {"model": os.path.join(tmp, "model.onnx"), "feeds": os.path.join(tmp, "feed.npz"),
                   "providers": providers, "provider_options": options}
        np.savez(request["feeds"], **feed)
        with open(os.path.join(tmp, "request.json"), "w", encoding="utf-8") as f:
            json.dump(request, f)
        for _attempt in range(2):
            saved = model.ir_version
            model.ir_version = ir_version
            try:
                save(model, request["model"])
            finally:
                model.ir_version = saved
            raw = _run_probe(python, os.path.join(tmp, "request.json"), timeout)
            match = _IR_VERSION_ERROR.search(str(raw.get("error", "")))
            if not match or int(match.group(1)) >= ir_version:
                return raw
            logger.debug("placement: %s takes IR version <= %s; retrying", python, match.group(1))
            ir_version = int(match.group(1))
    return raw


def _run_probe(python: str, request: str, timeout: float) -> dict[str, Any]:
    try:
        proc = subprocess.run([python, "-I", str(_PROBE), request], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except FileNotFoundError:
        return {"ok": False, "error": f"no Python interpreter at {python!r}"}
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"the probe took longer than {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    tail = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
    return {"ok": False, "error": f"the probe exited with status {proc.returncode}: {tail}"}
