"""Legalization: make a model loadable and fast on one execution provider.

These passes read the target's `Capabilities` from the `PassContext` (or take explicit options)
and are generic: the backends put them into their default pipelines (onnxpress/backends/).
`convert-opset` moves the model into the target's opset range, `fix-shapes` insists on static
input shapes where the target needs them, `remove-float-qdq` strips Q/DQ around ops the target
runs in float, and `check-target-ops` warns about ops the target has no kernel for.
"""

from onnxpress.passes.legalize.check_ops import CheckTargetOpsPass
from onnxpress.passes.legalize.convert_opset import ConvertOpsetPass
from onnxpress.passes.legalize.fix_shapes import FixShapesPass
from onnxpress.passes.legalize.remove_float_qdq import RemoveFloatQdqPass

__all__ = ["CheckTargetOpsPass", "ConvertOpsetPass", "FixShapesPass", "RemoveFloatQdqPass"]
