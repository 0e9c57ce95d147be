"""`fuse-matmul-add`: MatMul(X, W) + bias -> Gemm(X, W, bias) for 2-D X.

onnxscript's `MatMulAddToGemm` rule does not check the bias shape (a bias wider than the MatMul
output makes an invalid Gemm) and ignores Add(bias, MatMul); so this pass is our own.
"""

from __future__ import annotations

import logging
from typing import Any

import onnx_ir as ir

from onnxpress.passes.base import Pass, PassResult
from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.registry import register_pass

logger = logging.getLogger(__name__)

# Types every ORT build runs Gemm on (the CPU provider has no float16 Gemm).
_GEMM_TYPES = (ir.DataType.FLOAT, ir.DataType.DOUBLE)


def _match(add: ir.Node) -> tuple[ir.Node, ir.Value] | None:
    """(the MatMul, the bias) of an Add that can become a Gemm."""
    for i in (0, 1):
        mm_out, bias = add.inputs[i], add.inputs[1 - i]
        if mm_out is None or bias is None:
            continue
        matmul = mm_out.producer()
        if matmul is None or not u.is_onnx_op(matmul, "MatMul") or matmul.graph is not add.graph:
            continue
        x, w = matmul.inputs
        x_dims, w_array, b_array = u.dims(x), u.const_array(w), u.const_array(bias)
        if x_dims is None or len(x_dims) != 2 or w_array is None or w_array.ndim != 2 or b_array is None:
            continue
        if x.dtype not in _GEMM_TYPES or bias.dtype != x.dtype or not u.only_user(mm_out, add):
            continue
        n = w_array.shape[1]
        if b_array.shape not in ((n,), (1, n)):
            continue
        return matmul, bias
    return None


@register_pass
class FuseMatMulAddPass(Pass):
    """Turn `Add(MatMul(X, W), b)` (either Add operand order) into `Gemm(X, W, b)`.

    Applies when X is 2-D (known rank), W is a constant 2-D weight, b is a constant of shape [N] or
    [1, N] (N = W's columns), the dtype is float or double, the opset is >= 9 and the MatMul output
    feeds only this Add. Works in subgraphs and model-local functions (no new weights are made).

    Does not apply for rank > 2 X (Gemm takes 2-D inputs only; a Reshape around it would add
    nodes), for biases that broadcast along rows, or to custom-domain nodes.
    """

    name = "fuse-matmul-add"

    def run(self, model: ir.Model, am: Any) -> PassResult:
        if u.default_opset(model) < 9:
            return PassResult(model, False, {"fused": 0})
        fused = 0
        for graph in list(u.all_graphs(model)):
            for add in list(graph):
                if not u.is_onnx_op(add, "Add") or len(add.inputs) != 2:
                    continue
                match = _match(add)
                if match is None:
                    continue
                matmul, bias = match
                u.replace_node([matmul, add], "Gemm", [matmul.inputs[0], matmul.inputs[1], bias], {}, add.outputs[0])
                fused += 1
        if fused:
            logger.info("fuse-matmul-add made %d Gemm node(s)", fused)
        return PassResult(model, fused > 0, {"fused": fused})
