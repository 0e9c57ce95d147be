"""Run a model once in a profiled ONNX Runtime session and list the kernels that ran, per provider.

This file imports only the standard library, numpy and onnxruntime, never onnxpress: the placement
check runs it in-process, or as a script under another Python interpreter whose onnxruntime has
the target's execution provider (an EP package such as `onnxruntime-openvino` replaces the plain
`onnxruntime` package, so it usually lives in its own virtual environment):

    python -I _placement_probe.py REQUEST.json      # prints one JSON line: the result

A request is {"model": path, "providers": [name, ...], "provider_options": [{...}, ...],
"feeds": path of an .npz whose keys are input names}. The result is {"ok": true,
"onnxruntime": version, "available": [...], "session_providers": [...], "kernels": [{name,
op_type, provider}]}, or {"ok": false, "missing": provider} when this onnxruntime lacks the
target's provider, or {"ok": false, "error": first line}.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

_SUFFIX = "_kernel_time"


def kernels_from_profile(events: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One entry per node ORT ran (first occurrence), from the profiler's "Node" events."""
    seen: dict[str, dict[str, str]] = {}
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") != "Node" or "provider" not in args:
            continue
        name = str(event.get("name", ""))
        name = name[: -len(_SUFFIX)] if name.endswith(_SUFFIX) else name
        seen.setdefault(name, {"name": name, "op_type": str(args.get("op_name", "")),
                               "provider": str(args["provider"])})
    return list(seen.values())


def probe(open_session: Callable[..., Any], providers: list[str], provider_options: list[dict[str, Any]],
          feed: dict[str, Any]) -> dict[str, Any]:
    """Open a profiled session on `providers` (the first is the target's) and run `feed` once.

    `open_session(session_options, providers, provider_options)` returns the session (a file path or
    bytes for ORT in the script; onnxpress's own `create_session` in-process)."""
    import onnxruntime as ort

    available = list(ort.get_available_providers())
    result: dict[str, Any] = {"onnxruntime": ort.__version__, "available": available}
    if providers[0] not in available:
        return {**result, "ok": False, "missing": providers[0]}
    keep = [i for i, p in enumerate(providers) if p in available]
    with tempfile.TemporaryDirectory(prefix="onnxpress-placement-") as tmp:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "profile")
        if providers[0] == "DmlExecutionProvider":  # DirectML rejects both
            opts.enable_mem_pattern = False
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            session = open_session(opts, [providers[i] for i in keep], [dict(provider_options[i]) for i in keep])
            session.run(None, feed)
        except Exception as e:  # ORT raises its own exception types; the caller gets the first line
            text = str(e).strip()
            return {**result, "ok": False, "error": text.splitlines()[0] if text else type(e).__name__}
        with open(session.end_profiling(), encoding="utf-8") as f:
            events = json.load(f)
    return {**result, "ok": True, "session_providers": list(session.get_providers()),
            "kernels": kernels_from_profile(events)}


def main(argv: list[str]) -> int:
    import numpy as np

    if len(argv) != 1:
        sys.stderr.write("usage: python _placement_probe.py REQUEST.json\n")
        return 2
    with open(argv[0], encoding="utf-8") as f:
        request = json.load(f)
    with np.load(request["feeds"], allow_pickle=False) as data:
        feed = {name: data[name] for name in data.files}
    import onnxruntime as ort

    def open_session(opts: Any, providers: list[str], options: list[dict[str, Any]]) -> Any:
        return ort.InferenceSession(request["model"], sess_options=opts, providers=providers,
                                    provider_options=options)

    result = probe(open_session, list(request["providers"]), list(request["provider_options"]), feed)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
