"""What attention matching needs to know about values before run time.

`depends_on` (is a value computed from one that a rewrite changes), `broadcast_dim` (the runtime
size of a broadcast mask on one axis, followed through element-wise ops and `Expand`), and the
constant-folding readers `int_vector` / `bool_vector` over shape computations.
"""

from __future__ import annotations

import onnx_ir as ir

from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.cleanup._shape_values import ShapeValues

__all__ = ["broadcast_dim", "depends_on", "int_vector", "bool_vector"]


def depends_on(value: ir.Value | None, changing: set[int]) -> bool:
    """True when `value` is computed from a value in `changing` (Shape of an unchanged value stops)."""
    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        if v is None or id(v) in seen:
            continue
        seen.add(id(v))
        if id(v) in changing:
            return True
        node = v.producer()
        if node is None:
            continue
        if u.is_onnx_op(node, "Shape"):
            if id(node.inputs[0]) in changing:
                return True
            continue
        stack.extend(node.inputs)
    return False


_ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "And", "Or", "Where", "Equal", "Less", "Greater", "LessOrEqual",
                "GreaterOrEqual", "Max", "Min")
_UNARY = ("Cast", "Not", "Neg", "Identity", "Sqrt", "Exp", "Log", "Abs", "Relu", "Sigmoid", "Tanh")


def broadcast_dim(value: ir.Value | None, axis: int, shapes: ShapeValues, depth: int) -> int | None:
    """The runtime size of `value` on `axis` (non-negative, of its own rank), or None if unknown.

    Follows broadcasting element-wise ops and `Expand` with a shape computation, which is how
    exporters build the additive attention mask from the token mask.
    """
    if value is None or value.shape is None or not 0 <= axis < len(value.shape) or depth > 32:
        return None
    d = value.shape[axis]
    if isinstance(d, int):
        return d
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    rank = len(value.shape)
    from_right = rank - axis
    if node.op_type in _UNARY:
        return broadcast_dim(node.inputs[0], axis, shapes, depth + 1)
    if node.op_type in _ELEMENTWISE or node.op_type == "Expand":
        dims: list[int | None] = []
        operands = node.inputs if node.op_type != "Expand" else node.inputs[:1]
        for x in operands:
            if x is None or x.shape is None:
                return None
            r = len(x.shape)
            dims.append(1 if r < from_right else broadcast_dim(x, r - from_right, shapes, depth + 1))
        if node.op_type == "Expand":
            target = int_vector(node.inputs[1], shapes)
            if target is None:
                return None
            dims.append(1 if len(target) < from_right else target[len(target) - from_right])
        known = {x for x in dims if x is not None}
        if len(known - {1}) == 1:
            return next(iter(known - {1}))  # broadcasting: every other size is 1 or the same
        if known == {1} and None not in dims:
            return 1
        return None
    return None


def int_vector(value: ir.Value | None, shapes: ShapeValues) -> list[int | None] | None:
    """A 1-D int vector element by element: ints where known, None for runtime dims (>= 0)."""
    got = shapes.get(value)
    if got is not None and not got[1]:
        return [e if isinstance(e, int) else None for e in got[0]]
    node = value.producer() if value is not None else None
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Where":
        cond = bool_vector(node.inputs[0], shapes)
        a, b = int_vector(node.inputs[1], shapes), int_vector(node.inputs[2], shapes)
        if cond is None or a is None or b is None:
            return None
        n = max(len(cond), len(a), len(b))
        cond, a, b = (x * n if len(x) == 1 else x for x in (cond, a, b))
        if not len(cond) == len(a) == len(b):
            return None
        return [None if c is None else (x if c else y) for c, x, y in zip(cond, a, b)]
    return None


def bool_vector(value: ir.Value | None, shapes: ShapeValues) -> list[bool | None] | None:
    node = value.producer() if value is not None else None
    if node is None or not u.is_onnx_op(node, "Equal"):
        return None
    got = [shapes.get(x) for x in node.inputs]
    if any(g is None for g in got):
        return None
    a, b = (g[0] for g in got)  # type: ignore[index]
    n = max(len(a), len(b))
    a, b = (x * n if len(x) == 1 else x for x in (a, b))
    if len(a) != len(b):
        return None
    out: list[bool | None] = []
    for x, y in zip(a, b):
        if isinstance(x, int) and isinstance(y, int):
            out.append(x == y)
        elif isinstance(x, int) and x < 0 or isinstance(y, int) and y < 0:
            out.append(False)  # a runtime dim is never negative
        else:
            out.append(x == y if x == y else None)
    return out
