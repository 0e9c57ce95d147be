"""`infer-shapes`: ONNX shape and type inference, written back into the IR's values."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import onnx_ir as ir

from onnxpress.ir.shapes import infer_shapes
from onnxpress.passes.base import Pass, PassResult
from onnxpress.passes.registry import register_pass

logger = logging.getLogger(__name__)


@register_pass
class InferShapesPass(Pass):
    """Run ONNX shape inference (onnx_ir's `ShapeInferencePass`, data propagation on) and record
    the inferred shapes and dtypes on the IR's values, subgraphs included.

    Applies to any model; later passes (no-op elimination, fusions) need the shapes it finds.
    Deliberately not strict: nodes ONNX cannot infer (custom domains such as com.microsoft, or an
    op it rejects) are skipped, and when inference raises the model is left exactly as it was
    (reported unmodified, logged at debug) instead of failing the pipeline.
    """

    name = "infer-shapes"
    preserved_analyses = "all"

    @dataclasses.dataclass(frozen=True)
    class Options:
        data_prop: bool = True

    def run(self, model: ir.Model, am: Any) -> PassResult:
        return PassResult(model, infer_shapes(model, data_prop=self.options.data_prop))
