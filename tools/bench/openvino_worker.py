"""The part of tools/bench/openvino.py that runs inside the `onnxruntime-openvino` virtual environment.

Imports only the standard library, numpy and onnxruntime (the venv has no onnx, onnx_ir or
onnxpress). `python openvino_worker.py REQUEST.json` reads:

  {"sessions": [{"key", "model", "ep": "openvino" | "cpu"}], "latency_feed": npz, "eval_feeds": npz
   (keys "00000/<input>"), "rounds", "min_seconds", "warmup", "threads", "ov_options": {...}, "out": folder}

and for every session: the load (compile) time, the first output of every eval feed (saved as
OUT/<index>.npz, keys "00000"...), then latency on the latency feed with every session run
round-robin (start rotated each round), median and min in ms; `rounds` at least, more for fast models
(enough for ~min_seconds of the first session's runs, at most 20x). Prints one JSON line.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import defaultdict
from typing import Any

import numpy as np
import onnxruntime as ort


def load_feeds(path: str) -> list[dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            i, name = key.split("/", 1)
            out[i][name] = data[key]
    return [out[i] for i in sorted(out)]


def open_session(model: str, ep: str, threads: int, ov_options: dict[str, str]):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if ep == "openvino":
        providers = [("OpenVINOExecutionProvider", dict(ov_options)), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(model, so, providers=providers)


def main(request_path: str) -> int:
    with open(request_path, encoding="utf-8") as f:
        req = json.load(f)
    latency_feed = load_feeds(req["latency_feed"])[0]
    evals = load_feeds(req["eval_feeds"])
    results: dict[str, dict[str, Any]] = {}
    sessions = {}
    for index, spec in enumerate(req["sessions"]):
        key = spec["key"]
        res = results[key] = {"index": index}
        try:
            t = time.perf_counter()
            sess = open_session(spec["model"], spec["ep"], req["threads"], req["ov_options"])
            res["load_s"] = time.perf_counter() - t
            res["providers"] = sess.get_providers()
            outs = {}
            for i, feed in enumerate(evals):
                outs[f"{i:05d}"] = sess.run(None, feed)[0]
            np.savez(os.path.join(req["out"], f"{index}.npz"), **outs)
            res["outputs"] = os.path.join(req["out"], f"{index}.npz")
            sessions[key] = sess
        except Exception as e:  # ORT's own exception types: record the first line, go on
            text = str(e).strip()
            res["error"] = text.splitlines()[0][:400] if text else type(e).__name__
    for sess in sessions.values():
        for _ in range(req["warmup"]):
            sess.run(None, latency_feed)
    names = list(sessions)
    rounds = req["rounds"]
    if names:  # fast models get more rounds: at least ~min_seconds of the first session, at most 20x
        t = time.perf_counter()
        sessions[names[0]].run(None, latency_feed)
        first = time.perf_counter() - t
        rounds = max(rounds, min(20 * rounds, math.ceil(req.get("min_seconds", 0) / max(first, 1e-6))))
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for k in names[r % len(names):] + names[: r % len(names)] if names else []:
            t = time.perf_counter()
            sessions[k].run(None, latency_feed)
            times[k].append((time.perf_counter() - t) * 1e3)
    for k, v in times.items():
        results[k]["median_ms"] = float(np.median(v))
        results[k]["min_ms"] = float(np.min(v))
    sys.stdout.write(json.dumps({"onnxruntime": ort.__version__, "available": ort.get_available_providers(),
                                 "rounds": rounds, "sessions": results}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
