"""`fix-shapes`: require fixed input dims (QNN, CoreML) and propagate them through the graph.

The dims themselves come from `--input-shape` (`optimize(input_shapes=...)` sets them on the graph
inputs before any pass runs, and the recipe records them for `--replay`). This pass checks that no
graph input is left with a symbolic or unknown dim, failing with one line that lists every such dim
and the flag to fix it, then runs shape inference so that every pass after it sees static shapes.
Values inside the graph that stay dynamic (NonZero, data-dependent Reshape) are counted in the
stats and named in a diagnostic: the target may run those nodes elsewhere.
"""

from __future__ import annotations

import logging
from typing import Any

import onnx_ir as ir

from onnxpress.errors import InputError
from onnxpress.ir.shapes import infer_shapes
from onnxpress.passes.base import Pass, PassResult
from onnxpress.passes.manager import PassContext
from onnxpress.passes.registry import register_pass

__all__ = ["FixShapesPass", "symbolic_input_dims"]

logger = logging.getLogger(__name__)


def symbolic_input_dims(model: ir.Model) -> dict[str, list[str]]:
    """Graph input name -> the dims that are not fixed numbers (names, or '?' for unknown)."""
    out: dict[str, list[str]] = {}
    for value in model.graph.inputs:
        if value.is_initializer():
            continue
        if value.shape is None:
            out[value.name or "?"] = ["unknown rank"]
            continue
        bad = [f"dim {i} ({d.value or '?'})" if isinstance(d, ir.SymbolicDim) else f"dim {i} ({d})"
               for i, d in enumerate(value.shape) if not isinstance(d, int) or d < 0]
        if bad:
            out[value.name or "?"] = bad
    return out


def _example_flag(model: ir.Model, name: str) -> str:
    value = next(v for v in model.graph.inputs if v.name == name)
    if value.shape is None:
        return f"--input-shape {name}:DIMS"
    dims = [str(d) if isinstance(d, int) and d >= 0 else "1" for d in value.shape]
    return f"--input-shape {name}:{'x'.join(dims)}"


@register_pass
class FixShapesPass(Pass):
    """Fail unless every graph input has fixed dims; then infer shapes through the graph."""

    name = "fix-shapes"

    def run(self, model: ir.Model, am: Any) -> PassResult:
        ctx = PassContext.current()
        symbolic = symbolic_input_dims(model)
        if symbolic:
            listed = "; ".join(f"{name}: {', '.join(dims)}" for name, dims in symbolic.items())
            flags = " ".join(_example_flag(model, name) for name in symbolic)
            raise InputError(f"target '{ctx.target}' needs static input shapes, but these dims are not fixed: "
                             f"{listed}; fix them with --input-shape, e.g. {flags}")
        modified = infer_shapes(model)
        dynamic = [
            v.name for node in model.graph for v in node.outputs
            if v.shape is not None and any(not isinstance(d, int) for d in v.shape)
        ]
        if dynamic:
            shown = ", ".join(dynamic[:8]) + (" ..." if len(dynamic) > 8 else "")
            ctx.diagnose(f"fix-shapes: {len(dynamic)} value(s) stay dynamic after fixing the inputs ({shown}); "
                         f"target '{ctx.target}' may run their nodes on another provider")
        return PassResult(model, modified, {"dynamic_values": len(dynamic)})
