"""Measured speed check: is the quantized model faster than the float one on the target at all?

Integer kernels do not always pay. On ONNX Runtime's CPU EP a small CNN (PP-OCR's direction
classifier: 48×192 inputs, 0.6 MB of weights) runs 1.2-1.4× *slower* in int8 than in float at one
thread (docs/BENCHMARKS.md): per-node requantization and lost NCHWc layout fusions cost more than
the integer arithmetic saves. Storing only the weights in int8 does not help there either (ORT
keeps the weight DequantizeLinear nodes and runs plain Conv, 1.6× slower). So the quantizer
measures: `compare_latency` times both models on the target's own runner, interleaved (A/B/A/B,
the first runs discarded), on one calibration feed, and reports the ratio; the pass then warns or,
with `if-slower=keep-float`, leaves the model float.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

__all__ = ["compare_latency"]

#: Rounds of A/B timing at least and at most; rounds stop early once `budget_s` is spent.
MIN_ROUNDS, MAX_ROUNDS = 5, 200


def compare_latency(runner: Any, reference: ir.Model, candidate: ir.Model, feed: Mapping[str, Any], *,
                    budget_s: float = 3.0, warmup: int = 2) -> dict[str, Any]:
    """Median latency of both models on `runner`'s sessions and `candidate / reference` (below 1 = faster)."""
    sessions = [runner.session(reference), runner.session(candidate)]
    outputs = [[o.name for o in s.get_outputs()] for s in sessions]
    feeds = [{i.name: feed[i.name] for i in s.get_inputs() if i.name in feed} for s in sessions]
    for s, names, f in zip(sessions, outputs, feeds):
        for _ in range(warmup):
            s.run(names, f)
    times: list[list[float]] = [[], []]
    start = time.perf_counter()
    rounds = 0
    while rounds < MAX_ROUNDS and (rounds < MIN_ROUNDS or time.perf_counter() - start < budget_s):
        order = (0, 1) if rounds % 2 == 0 else (1, 0)
        for k in order:
            t = time.perf_counter()
            sessions[k].run(outputs[k], feeds[k])
            times[k].append(time.perf_counter() - t)
        rounds += 1
    ref_ms, cand_ms = (float(np.median(t)) * 1e3 for t in times)
    return {"float_ms": round(ref_ms, 4), "quantized_ms": round(cand_ms, 4),
            "ratio": round(cand_ms / max(ref_ms, 1e-12), 4), "rounds": rounds,
            "threads": getattr(runner, "intra_op_threads", None) or "ORT default"}
