"""Placement check: open a real session on the target's EP and say which provider ran each node.

ONNX Runtime's profiler writes one "Node" event per kernel run, naming the node (of the graph as
ORT optimized it: fused QLinearConv, TensorRT / OpenVINO partitions ...), its op type and the
provider that ran it. One run on one feed is enough. Nodes on any provider other than the target's
own fell back. Where this onnxruntime has no such provider (here: everything but CPU), nothing is
run and the result says why, so the report never claims a placement it did not see.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import onnx_ir as ir

__all__ = ["check_placement", "PLACEMENT_MAX_BYTES"]

logger = logging.getLogger(__name__)

#: `placement="auto"` skips models with more weight bytes than this (a second session costs memory).
PLACEMENT_MAX_BYTES = 1 << 30
_SUFFIX = "_kernel_time"


def _skipped(target_provider: str, reason: str) -> dict[str, Any]:
    return {"checked": False, "target_provider": target_provider, "reason": reason}


def check_placement(model: ir.Model, backend: Any, feeds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """{"checked", "target_provider", "providers", "nodes": [{name, op_type, provider}],
    "by_provider": {provider: count}, "op_types": {op: count}, "fallback": [node names]}, or
    {"checked": False, "reason": ...} when it could not look."""
    import onnxruntime as ort

    from onnxpress.backends._target import available_providers
    from onnxpress.backends.ort import create_session, run_model

    caps = backend.capabilities
    target = caps.provider
    if target not in available_providers():
        return _skipped(target, f"{target} is not in this onnxruntime build (it has "
                                f"{', '.join(p for p in available_providers())}); install the EP's onnxruntime "
                                "package to check placement")
    if not feeds:
        return _skipped(target, "no input feeds to run the model with")
    providers = backend.session_providers(model)
    with tempfile.TemporaryDirectory(prefix="onnxpress-placement-") as tmp:
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "profile")
        if target == "DmlExecutionProvider":  # DirectML rejects both
            opts.enable_mem_pattern = False
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        names = [p if isinstance(p, str) else p[0] for p in providers]
        options = [{} if isinstance(p, str) else dict(p[1]) for p in providers]
        session = create_session(model, names, session_options=opts, provider_options=options)
        run_model(session, [dict(feeds[0])])
        with open(session.end_profiling(), encoding="utf-8") as f:
            events = json.load(f)
    nodes: dict[str, dict[str, str]] = {}
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") != "Node" or "provider" not in args:
            continue
        name = str(event.get("name", ""))
        name = name[: -len(_SUFFIX)] if name.endswith(_SUFFIX) else name
        nodes.setdefault(name, {"name": name, "op_type": str(args.get("op_name", "")), "provider": str(args["provider"])})
    listed = list(nodes.values())
    fallback = [n["name"] for n in listed if n["provider"] != target]
    result = {
        "checked": True,
        "target_provider": target,
        "providers": list(session.get_providers()),
        "nodes": listed,
        "by_provider": dict(sorted(Counter(n["provider"] for n in listed).items())),
        "op_types": dict(sorted(Counter(n["op_type"] for n in listed).items())),
        "fallback": fallback,
    }
    logger.info("placement: %d node(s) ran, %d on %s", len(listed), len(listed) - len(fallback), target)
    return result
