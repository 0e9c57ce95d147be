"""onnx_ir / onnxscript passes registered under onnxpress names (thin wrappers, no rewrites here)."""

from __future__ import annotations

import dataclasses

import onnx_ir.passes.common as ir_common

from onnxpress.passes.registry import wrap_ir_pass


@dataclasses.dataclass(frozen=True)
class _FoldOptions:
    input_size_limit: int = 8192
    output_size_limit: int = 1 << 20
    shape_inference: bool = True


def _fold_constants(input_size_limit: int, output_size_limit: int, shape_inference: bool):
    from onnxscript.optimizer import _constant_folding

    return _constant_folding.FoldConstantsPass(
        shape_inference=shape_inference,
        input_size_limit=input_size_limit,
        output_size_limit=output_size_limit,
    )


wrap_ir_pass(
    "fold-constants",
    _fold_constants,
    "Fold nodes whose inputs are all constant (onnxscript's constant folder; subgraphs included).",
    _FoldOptions,
)


class _Dce:
    """Remove unused nodes, then unused model-local functions and opset imports."""

    def __new__(cls):
        import onnx_ir as ir

        return ir.passes.Sequential(
            ir_common.RemoveUnusedNodesPass(),
            ir_common.RemoveUnusedFunctionsPass(),
            ir_common.RemoveUnusedOpsetsPass(),
        )


wrap_ir_pass("dce", _Dce, "Dead-code elimination: unused nodes, functions and opset imports (onnx_ir).")
wrap_ir_pass("cse", ir_common.CommonSubexpressionEliminationPass, "Common-subexpression elimination (onnx_ir; subgraphs included).")
wrap_ir_pass("topo-sort", ir_common.TopologicalSortPass, "Sort nodes topologically (onnx_ir).")
@dataclasses.dataclass(frozen=True)
class _LiftOptions:
    lift_all_constants: bool = True
    size_limit: int = 0


wrap_ir_pass(
    "lift-constants",
    ir_common.LiftConstantsToInitializersPass,
    "Turn Constant nodes into initializers (onnx_ir); all of them by default, subgraphs included.",
    _LiftOptions,
)
