"""`div-to-mul`: division by a float constant becomes multiplication by its reciprocal.

`Div(x, c)` -> `Mul(x, 1/c)` for a constant float `c` without zeros (computed in float64, stored in
`c`'s dtype). Exact where `c` is a power of two, otherwise within one rounding of the float result.
The point is quantization: ONNX Runtime has an integer kernel for Mul (QLinearMul) but none for Div,
so a decomposed hard-swish (`x · clip(x + 3, 0, 6) / 6`, as Paddle and TF export it) would leave a
float island with a DequantizeLinear / QuantizeLinear pair around every `/ 6`. In float, Mul is never
slower than Div. A Div that feeds an Erf (the `x / √2` of an exported GELU) is left alone: ONNX
Runtime's Gelu / BiasGelu fusion matches only that form.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.base import Pass, PassResult
from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.registry import register_pass

logger = logging.getLogger(__name__)


@register_pass
class DivToMulPass(Pass):
    """Rewrite `Div(x, c)` with a constant float divisor `c` (no zeros, no inf/nan) as `Mul(x, 1/c)`.

    Not where the Div feeds an Erf (see the module docstring).
    """

    name = "div-to-mul"

    def run(self, model: ir.Model, am: Any) -> PassResult:
        names = u.NameScope(model)
        rewritten = 0
        for graph in model.graphs():
            for div in list(graph):
                if not u.is_onnx_op(div, "Div") or len(div.inputs) != 2 or div.inputs[0] is None:
                    continue
                if any(u.is_onnx_op(user, "Erf") for user, _ in div.outputs[0].uses()):
                    continue  # x / √2 -> Erf: ONNX Runtime fuses that Gelu only in its Div form
                divisor = u.const_array(div.inputs[1])
                if divisor is None or divisor.dtype.kind != "f" or u.const_array(div.inputs[0]) is not None:
                    continue
                d64 = divisor.astype(np.float64)
                if not np.all(np.isfinite(d64)) or np.any(d64 == 0):
                    continue
                reciprocal = (1.0 / d64).astype(divisor.dtype)
                if not np.all(np.isfinite(reciprocal)) or np.any(reciprocal == 0):  # overflow / underflow
                    continue
                base = (div.inputs[1].name or "divisor") + "_reciprocal"
                factor = u.new_initializer(graph, names, base, reciprocal)
                u.replace_node([div], "Mul", [div.inputs[0], factor], {}, div.outputs[0])
                rewritten += 1
        if rewritten:
            logger.info("div-to-mul rewrote %d Div node(s)", rewritten)
        return PassResult(model, rewritten > 0, {"rewritten": rewritten})
