"""The backend protocol and registry: one ONNX Runtime execution provider per target.

A backend describes its target as data (`Capabilities`), names its default pipeline per -O level
and its legalization pipeline, supplies the runner that executes models on its EP, and emits the
final file. Passes never import a backend: they read `PassContext.capabilities`. Third-party
backends register from the entry-point group `onnxpress.backends`.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from typing import Any, Protocol, runtime_checkable

import onnx_ir as ir

from onnxpress.errors import InputError

__all__ = [
    "BUILTIN_TARGETS", "Capabilities", "Backend", "register_backend", "get_backend", "backend_names",
    "ENTRY_POINT_GROUP",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "onnxpress.backends"


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a target EP can run fast; the quantization and legalization passes read this.

    providers: the EPs a session asks for, preferred first (the first one is "the target's").
    qdq_ops: op types the EP runs as integer kernels when wrapped in QuantizeLinear /
        DequantizeLinear; every other op runs in float (`remove-float-qdq` strips QDQ around it).
    activation_dtypes / weight_dtypes: the QDQ integer types it fuses.
    symmetric_activations_only: zero points must be 0 (TensorRT rejects asymmetric Q/DQ).
    float_bias: Conv / Gemm biases stay float (TensorRT quantizes them itself).
    output_qdq: its integer kernels consume a Q after the op (QLinearConv on CPU); False means Q/DQ
        go on op inputs only (TensorRT's explicit quantization).
    sixteen_bit_activations: uint16 / int16 activations run fast (QNN HTP).
    whole_graph_quantized: every op should run quantized, or the EP falls back to CPU (QNN HTP).
    static_shapes_required: every graph input needs fixed dims (QNN, CoreML).
    static_shapes_preferred: the EP runs a model with symbolic input dims, but compiles it for
        dynamic shapes, which is slower (OpenVINO); emit warns unless `--input-shape` fixed them.
    opset_range: default-domain opsets the target loads; `convert-opset` converts into it.
    prefers_fp16: float16 compute is the fast path (CUDA, TensorRT, DML).
    missing_ops: ops it has no kernel for (not exhaustive; `check-target-ops` warns about them).
    provider_options: options for the first provider when a session is opened on it.
    """

    target: str
    providers: tuple[str, ...]
    qdq_ops: frozenset[str] = frozenset()
    symmetric_activations_only: bool = False
    float_bias: bool = False
    static_shapes_required: bool = False
    static_shapes_preferred: bool = False
    opset_range: tuple[int, int] = (7, 23)
    prefers_fp16: bool = False
    missing_ops: frozenset[str] = frozenset()
    activation_dtypes: frozenset[str] = frozenset({"uint8", "int8"})
    weight_dtypes: frozenset[str] = frozenset({"int8", "uint8"})
    per_channel_weights: bool = True
    output_qdq: bool = True
    sixteen_bit_activations: bool = False
    whole_graph_quantized: bool = False
    provider_options: tuple[tuple[str, str], ...] = ()

    @property
    def provider(self) -> str:
        """The target's own execution provider (the others are fallbacks)."""
        return self.providers[0]


@runtime_checkable
class Backend(Protocol):
    name: str
    capabilities: Capabilities

    def runner(self) -> Any:
        """A ModelRunner executing models on this EP."""

    def pipeline(self, level: int) -> str:
        """The default pipeline text for -O`level` on this target."""

    def emit(self, model: ir.Model, path: str, *, external_data: bool | None = None) -> None:
        """Write the final model for this target."""


#: The targets shipped with onnxpress, one module each under onnxpress/backends/.
BUILTIN_TARGETS = ("cpu", "cuda", "tensorrt", "openvino", "qnn", "dml", "coreml")


_BACKENDS: dict[str, Any] = {}
_loaded = {"builtins": False, "entry_points": False}


def register_backend(backend: Any) -> Any:
    """Register a backend instance (or a class, instantiated without arguments)."""
    instance = backend() if isinstance(backend, type) else backend
    _BACKENDS[instance.name] = instance
    return backend


def _ensure_loaded() -> None:
    if not _loaded["builtins"]:
        _loaded["builtins"] = True
        import importlib

        for name in BUILTIN_TARGETS:
            importlib.import_module(f"onnxpress.backends.{name}")
    if not _loaded["entry_points"]:
        _loaded["entry_points"] = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                register_backend(ep.load())
            except Exception as e:
                logger.warning("could not load backend plugin %s: %s", ep.name, e)


def backend_names() -> list[str]:
    _ensure_loaded()
    return sorted(_BACKENDS)


def get_backend(name: str) -> Any:
    _ensure_loaded()
    if name not in _BACKENDS:
        close = difflib.get_close_matches(name, list(_BACKENDS), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; available: {', '.join(sorted(_BACKENDS))}"
        raise InputError(f"unknown target '{name}'{hint}")
    return _BACKENDS[name]
