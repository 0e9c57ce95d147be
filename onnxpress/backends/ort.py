"""What every ONNX Runtime execution provider shares: serialising a model for a session, running it.

`OrtRunner` is the `ModelRunner` the PassContext hands to passes and instruments: calibration,
numeric checks and sensitivity measurements all run through it, so passes never import
onnxruntime. Models below 2 GB go to ORT as bytes; bigger ones are saved to a temporary folder
with external data first.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.errors import InputError

__all__ = ["OrtRunner", "create_session", "run_model"]

logger = logging.getLogger(__name__)

_PROTO_LIMIT = 2**31 - 1 - (64 << 20)  # leave room for the graph itself


def _weight_bytes(model: ir.Model) -> int:
    total = 0
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            if value.const_value is not None:
                total += value.const_value.nbytes
    return total


def create_session(
    model: ir.Model,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    *,
    optimization_level: str = "all",
    intra_op_threads: int | None = None,
    session_options: Any = None,
):
    """An `onnxruntime.InferenceSession` for an in-memory model (external data when > 2 GB)."""
    import onnxruntime as ort

    opts = session_options or ort.SessionOptions()
    opts.log_severity_level = 3
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    opts.graph_optimization_level = levels[optimization_level]
    if intra_op_threads is not None:
        opts.intra_op_num_threads = intra_op_threads
    try:
        if _weight_bytes(model) < _PROTO_LIMIT:
            data = ir.serde.serialize_model(model).SerializeToString()
            return ort.InferenceSession(data, sess_options=opts, providers=list(providers))
        with tempfile.TemporaryDirectory(prefix="onnxpress-ort-") as tmp:
            path = os.path.join(tmp, "model.onnx")
            ir.save(model, path, external_data="model.onnx.data")
            return ort.InferenceSession(path, sess_options=opts, providers=list(providers))
    except Exception as e:  # ORT raises its own exception types for invalid graphs
        raise InputError(f"ONNX Runtime cannot load the model: {_first_line(e)}") from e


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def run_model(session, feeds: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    names = [o.name for o in session.get_outputs()]
    results = []
    for feed in feeds:
        outputs = session.run(names, feed)
        results.append(dict(zip(names, outputs)))
    return results


class OrtRunner:
    """Runs models on one ORT execution provider (CPU by default)."""

    def __init__(
        self,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        *,
        optimization_level: str = "all",
        intra_op_threads: int | None = None,
    ) -> None:
        self.providers = tuple(providers)
        self.optimization_level = optimization_level
        self.intra_op_threads = intra_op_threads

    def session(self, model: ir.Model):
        return create_session(
            model,
            self.providers,
            optimization_level=self.optimization_level,
            intra_op_threads=self.intra_op_threads,
        )

    def run(self, model: ir.Model, feeds: Sequence[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
        session = self.session(model)
        try:
            return run_model(session, feeds)
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"ONNX Runtime failed to run the model: {_first_line(e)}") from e
