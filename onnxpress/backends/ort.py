"""What every ONNX Runtime execution provider shares: serialising a model for a session, running it.

`OrtRunner` is the `ModelRunner` the PassContext hands to passes and instruments: calibration,
numeric checks and sensitivity measurements all run through it, so passes never import
onnxruntime. Models below 2 GB go to ORT as bytes; bigger ones are saved to a temporary folder
with external data first.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.errors import InputError

__all__ = ["OrtRunner", "create_session", "run_model"]

logger = logging.getLogger(__name__)

_PROTO_LIMIT = 2**31 - 1 - (64 << 20)  # leave room for the graph itself
_EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
_IR_VERSION_ERROR = re.compile(r"max supported IR version: (\d+)")


def _external_folders(model: ir.Model) -> set[str]:
    from onnxpress.ir.io import iter_tensors

    return {
        os.path.abspath(str(t.base_dir or "."))
        for t in iter_tensors(model)
        if isinstance(t, ir.ExternalTensor)
    }


def create_session(
    model: ir.Model,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    *,
    optimization_level: str = "all",
    intra_op_threads: int | None = None,
    session_options: Any = None,
    provider_options: Sequence[dict[str, Any]] | None = None,
):
    """An `onnxruntime.InferenceSession` for an in-memory model.

    Models under 2 GB go to ORT as bytes; weights still memory-mapped from one folder are read by
    ORT from there. Bigger models, or weights from several folders, are saved to a temporary
    folder with external data first. A model whose IR version is newer than this ORT accepts is
    handed over with the highest IR version it does accept (the saved model is not changed).
    `provider_options` (one dict per provider) go to the providers as ORT's own argument.
    """
    import onnxruntime as ort

    from onnxpress.ir.io import weight_bytes

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
    folders = _external_folders(model)
    in_bytes = weight_bytes(model) < _PROTO_LIMIT and len(folders) <= 1
    if in_bytes and folders:
        opts.add_session_config_entry(_EXTERNAL_FOLDER_KEY, folders.pop())
    ir_version = model.ir_version
    for _attempt in range(2):
        try:
            if in_bytes:
                proto = ir.serde.serialize_model(model)
                proto.ir_version = ir_version
                return ort.InferenceSession(proto.SerializeToString(), sess_options=opts, providers=list(providers),
                                            provider_options=provider_options)
            with tempfile.TemporaryDirectory(prefix="onnxpress-ort-") as tmp:
                path = os.path.join(tmp, "model.onnx")
                saved_version = model.ir_version
                model.ir_version = ir_version
                try:
                    ir.save(model, path, external_data="model.onnx.data")
                finally:
                    model.ir_version = saved_version
                return ort.InferenceSession(path, sess_options=opts, providers=list(providers),
                                            provider_options=provider_options)
        except Exception as e:  # ORT raises its own exception types for invalid graphs
            match = _IR_VERSION_ERROR.search(str(e))
            if match and int(match.group(1)) < ir_version:
                ir_version = int(match.group(1))
                continue
            raise InputError(f"ONNX Runtime cannot load the model: {_first_line(e)}") from e
    raise AssertionError("unreachable")


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

    def session(self, model: ir.Model, session_options: Any = None):
        """A session on this runner's providers and settings; `session_options` (an
        `onnxruntime.SessionOptions`, e.g. with profiling on) start from the caller's values."""
        return create_session(
            model,
            self.providers,
            optimization_level=self.optimization_level,
            intra_op_threads=self.intra_op_threads,
            session_options=session_options,
        )

    def run(self, model: ir.Model, feeds: Sequence[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
        session = self.session(model)
        try:
            return run_model(session, feeds)
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"ONNX Runtime failed to run the model: {_first_line(e)}") from e
