"""Shape and type inference glue, and fixing symbolic input dims from the command line.

`infer_shapes` runs ONNX shape inference through onnx_ir's `ShapeInferencePass`, which hands the
C++ inferencer a copy of the model with big initializers stripped (so weights are not serialised,
whatever the model size) and merges the inferred shapes and types back in place. Inference that
fails is not an error: the model keeps the shapes it had and the call returns False.
`set_input_shapes` and `parse_input_shape` back `--input-shape name:1x3x224x224`.
"""

from __future__ import annotations

import logging
import re

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from onnxpress.errors import InputError

__all__ = ["infer_shapes", "parse_input_shape", "set_input_shapes"]

logger = logging.getLogger(__name__)


def infer_shapes(model: ir.Model, *, data_prop: bool = True) -> bool:
    """Infer shapes and types in place; True when any value's shape or type changed.

    Never raises for models the inferencer cannot handle (custom domains, ops it rejects,
    protobuf limits): it logs why at debug level and returns False, leaving the model as it was.
    """
    inner = ShapeInferencePass(check_type=False, strict_mode=False, data_prop=data_prop)
    # onnx_ir logs a failed inference as a warning; for us it is "cannot apply here".
    ir_logger = logging.getLogger("onnx_ir.passes.common.shape_inference")
    level = ir_logger.level
    ir_logger.setLevel(logging.ERROR)
    try:
        result = inner(model)
    except Exception as e:  # inference is best effort
        logger.debug("shape inference failed, shapes left as they were: %s", e)
        return False
    finally:
        ir_logger.setLevel(level)
    logger.debug("shape inference %s", "updated shapes" if result.modified else "changed nothing")
    return bool(result.modified)


def set_input_shapes(model: ir.Model, shapes: dict[str, list[int]]) -> None:
    """Fix the dims of the named graph inputs (symbolic ones become the given numbers).

    Raises `InputError` for a name that is not a graph input, a wrong rank, a negative dim, or a
    dim that contradicts a fixed one. Checks every entry before changing any.
    """
    inputs = {value.name: value for value in model.graph.inputs if not value.is_initializer()}
    updates: list[tuple[ir.Value, ir.Shape]] = []
    for name, dims in shapes.items():
        value = inputs.get(name)
        if value is None:
            known = ", ".join(sorted(n for n in inputs if n)) or "none"
            raise InputError(f"--input-shape: no graph input named {name!r} (inputs: {known})")
        dims = [int(d) for d in dims]
        if any(d < 0 for d in dims):
            raise InputError(f"--input-shape {name}: dims must be non-negative, got {dims}")
        if value.shape is not None:
            if len(value.shape) != len(dims):
                raise InputError(
                    f"--input-shape {name}: rank {len(dims)} given, but the input has rank {len(value.shape)}"
                )
            for axis, (old, new) in enumerate(zip(value.shape, dims)):
                if isinstance(old, int) and old >= 0 and old != new:  # -1: exporters' "unknown"
                    raise InputError(f"--input-shape {name}: dim {axis} is fixed to {old}, cannot set it to {new}")
        updates.append((value, ir.Shape(dims)))
    for value, shape in updates:
        logger.debug("input %s: shape %s -> %s", value.name, value.shape, shape)
        value.shape = shape


_SHAPE_TEXT = re.compile(r"^\s*(?P<name>.+):(?P<dims>\s*\d+(\s*[x,]\s*\d+)*\s*)$")


def parse_input_shape(text: str) -> tuple[str, list[int]]:
    """`"name:1x3x224x224"` -> `("name", [1, 3, 224, 224])`; commas also separate dims.

    The name may itself contain colons (`"input:0:1x3"`): the dims follow the last one.
    """
    match = _SHAPE_TEXT.match(text)
    if match is None:
        raise InputError(f"--input-shape {text!r}: expected NAME:DIMS such as 'input:1x3x224x224'")
    dims = [int(d) for d in re.split(r"[x,]", match["dims"].replace(" ", ""))]
    return match["name"].strip(), dims
