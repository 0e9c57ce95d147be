"""Conformance: every ONNX backend node test case that ORT gets right must stay right after -O2.

Each case of `onnx.backend.test.case.node.collect_testcases()` is run on ONNX Runtime (graph
optimisations off) as shipped; cases ORT cannot load or run, gets wrong, or that use non-tensor
inputs/outputs or training ops are skipped. The rest go through `PassManager.from_pipeline("O2")`,
are serialised to bytes, reloaded and run again; every output must still match the expected one.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx.backend.test.case.node import collect_testcases

from onnxpress.passes import PassManager

pytestmark = pytest.mark.slow

_TRAINING_DOMAINS = {"ai.onnx.preview.training"}


@dataclasses.dataclass
class _Counts:
    collected: int = 0
    skipped: int = 0
    ran: int = 0
    passed: int = 0


def _session(data: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 4
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])


def _matches(session: ort.InferenceSession, case, feeds_and_expected) -> str | None:
    """None when every data set gives the expected outputs, else why not."""
    for feeds, expected in feeds_and_expected:
        got = session.run(None, feeds)
        if len(got) != len(expected):
            return f"{len(got)} outputs, expected {len(expected)}"
        for g, e in zip(got, expected):
            g = np.asarray(g)
            if g.shape != e.shape or g.dtype != e.dtype:
                return f"shape/dtype {g.shape} {g.dtype} vs {e.shape} {e.dtype}"
            if e.dtype.kind in "fc":
                if not np.allclose(g, e, rtol=case.rtol, atol=case.atol, equal_nan=True):
                    return "values differ"
            elif not np.array_equal(g, e):
                return "values differ"
    return None


def _tensor_data(case, proto: onnx.ModelProto) -> list | None:
    """[(feeds, expected outputs)] when all inputs/outputs are plain ndarrays, else None."""
    initializers = {i.name for i in proto.graph.initializer}
    input_names = [i.name for i in proto.graph.input if i.name not in initializers]
    data = []
    for inputs, outputs in case.data_sets or []:
        if not all(isinstance(x, np.ndarray) for x in [*inputs, *outputs]):
            return None
        if len(inputs) > len(input_names):
            return None
        data.append((dict(zip(input_names, inputs)), list(outputs)))
    return data or None


def _uses_training(proto: onnx.ModelProto) -> bool:
    domains = {o.domain for o in proto.opset_import}
    return bool(domains & _TRAINING_DOMAINS)


def test_o2_keeps_every_backend_node_case(record_property, capsys):
    start = time.perf_counter()
    counts = _Counts()
    failures: list[str] = []
    for case in collect_testcases(None):
        counts.collected += 1
        proto = case.model
        data = _tensor_data(case, proto) if proto is not None else None
        if proto is None or data is None or _uses_training(proto):
            counts.skipped += 1
            continue
        raw = proto.SerializeToString()
        try:
            if _matches(_session(raw), case, data) is not None:
                counts.skipped += 1
                continue
        except Exception:  # ORT cannot load or run this case as shipped
            counts.skipped += 1
            continue
        counts.ran += 1
        try:
            model = ir.serde.deserialize_model(onnx.load_from_string(raw))
            PassManager.from_pipeline("O2")(model)
            optimized = ir.serde.serialize_model(model).SerializeToString()
            why = _matches(_session(optimized), case, data)
        except Exception as e:
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if why is None:
            counts.passed += 1
        else:
            failures.append(f"{case.name}: {why}")
    seconds = time.perf_counter() - start
    for key, value in dataclasses.asdict(counts).items():
        record_property(key, value)
    with capsys.disabled():
        print(
            f"\nconformance (-O2): collected {counts.collected}, skipped {counts.skipped}, "
            f"ran {counts.ran}, passed {counts.passed}, failed {len(failures)} in {seconds:.1f}s"
        )
    assert not failures, "\n".join(failures)
    assert counts.ran > 700
