"""What the small integer vectors of shape computations hold, element by element.

A model exported with dynamic axes computes its Reshape targets at run time: `Shape(x)`, then
`Gather`/`Slice`/`Cast`/`Unsqueeze`/`Concat` pieces of it. `ShapeValues` follows those ops and
describes each element of such a vector as either a known integer or a *dim key*: a hashable
name of one runtime dim. Two elements with the same key hold the same number in every run that
succeeds. A key is the dim's symbol when shape inference gave it a real one (`batch`, `unk__3`:
ONNX shape inference only gives two dims the same symbol when they are equal), else the pair
(value, axis), which only equals itself.

Read-only; the passes that use it decide what a rewrite may assume.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable

import numpy as np
import onnx_ir as ir

from onnxpress.passes.cleanup import _util as u

logger = logging.getLogger(__name__)

#: one element: a known integer or the key of a runtime dim.
Element = int | Hashable

#: longer vectors are not shape computations; they are left alone.
MAX_LENGTH = 64

_INT_TYPES = (ir.DataType.INT64, ir.DataType.INT32)
_INT32_RANGE = (-(1 << 31), (1 << 31) - 1)


def dim_key(value: ir.Value, axis: int) -> Element | None:
    """The element that `Shape(value)[axis]` holds, or None when the rank is unknown."""
    if value.shape is None or not 0 <= axis < len(value.shape):
        return None
    d = value.shape[axis]
    if isinstance(d, int):
        return d
    name = getattr(d, "value", None)
    # "?" is what some exporters write for "unknown": it names nothing.
    if isinstance(name, str) and name and name != "?":
        return ("sym", name)
    return ("dim", id(value), axis)


class ShapeValues:
    """Element-wise contents of integer shape vectors (memoised; build a new one after rewrites).

    `get(value)` answers `(elements, is_scalar)` or None when the value is not followed.
    """

    def __init__(self) -> None:
        self._memo: dict[int, tuple[list[Element], bool] | None] = {}
        self._keep: list[ir.Value] = []  # ids in dim keys must stay unique while we live

    def get(self, value: ir.Value | None) -> tuple[list[Element], bool] | None:
        if value is None:
            return None
        key = id(value)
        if key not in self._memo:
            self._memo[key] = None  # cycles cannot happen in a DAG, but be safe
            self._keep.append(value)
            self._memo[key] = self._compute(value)
        return self._memo[key]

    def elements(self, value: ir.Value | None) -> list[Element] | None:
        got = self.get(value)
        return None if got is None else got[0]

    # -- per op ------------------------------------------------------------------------------
    def _compute(self, value: ir.Value) -> tuple[list[Element], bool] | None:
        # Decide from the type first: reading a large weight only to reject it would be wasteful.
        if value.dtype is not None and value.dtype not in _INT_TYPES:
            return None
        known = u.dims(value)
        if known is not None and (len(known) > 1 or (known and (known[0] or 0) > MAX_LENGTH)):
            return None
        array = u.const_array(value)
        if array is not None:
            if array.dtype.kind not in "iu" or array.ndim > 1 or array.size > MAX_LENGTH:
                return None
            return [int(v) for v in array.reshape(-1)], array.ndim == 0
        node = value.producer()
        if node is None or node.domain not in ("", "ai.onnx") or u.has_ref_attrs(node):
            return None
        if len(node.outputs) != 1:
            return None
        handler = getattr(self, f"_op_{node.op_type}", None)
        return None if handler is None else handler(node)

    def _op_Shape(self, node: ir.Node) -> tuple[list[Element], bool] | None:
        x = node.inputs[0]
        if x is None or x.shape is None:
            return None
        keys = [dim_key(x, i) for i in range(len(x.shape))]
        rank = len(keys)
        start, end = u.attr_int(node, "start", 0), u.attr_int(node, "end", rank)
        start = min(max(start + rank if start < 0 else start, 0), rank)
        end = min(max(end + rank if end < 0 else end, 0), rank)
        return keys[start:end], False  # type: ignore[return-value]

    def _op_Identity(self, node: ir.Node) -> tuple[list[Element], bool] | None:
        return self.get(node.inputs[0])

    def _op_Cast(self, node: ir.Node) -> tuple[list[Element], bool] | None:
        got = self.get(node.inputs[0])
        to = u.attr_int(node, "to", 0)
        if got is None or to not in (t.value for t in _INT_TYPES):
            return None
        elements, scalar = got
        if to == ir.DataType.INT32.value:
            # A known value outside int32 would wrap; a runtime dim that large cannot be allocated.
            if any(isinstance(e, int) and not _INT32_RANGE[0] <= e <= _INT32_RANGE[1] for e in elements):
                return None
        return elements, scalar

    def _op_Gather(self, node: ir.Node) -> tuple[list[Element], bool] | None:
        got = self.get(node.inputs[0])
        indices = u.const_array(node.inputs[1])
        if got is None or got[1] or indices is None or indices.ndim > 1 or u.attr_int(node, "axis", 0) != 0:
            return None
        elements = got[0]
        picked = []
        for i in indices.reshape(-1).tolist():
            i = i + len(elements) if i < 0 else i
            if not 0 <= i < len(elements):
                return None
            picked.append(elements[i])
        return picked, indices.ndim == 0

    def _op_Slice(self, node: ir.Node) -> tuple[list[Element], bool] | None:
        got = self.get(node.inputs[0])
        if got is None or got[1] or len(node.inputs) < 3:
            return None
        arrays = [u.const_array(v) if v is not None else None for v in node.inputs[1:]]
        arrays += [None] * (4 - len(arrays))
        starts, ends, axes, steps = arrays
        if starts is None or ends is None or starts.size != 1 or ends.size != 1:
            return None
        for given, array in zip(node.inputs[3:], (axes, steps)):
            if given is not None and (array is None or array.size != 1):
                return None
        if axes is not None and int(axes.reshape(-1)[0]) not in (0, -1):
            return None
        step = 1 if steps is None else int(steps.reshape(-1)[0])
        if step <= 0:
            return None
        # For positive steps ONNX clamps starts/ends exactly like a Python slice.
        start, end = int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0])
        return got[0][slice(start, end, step)], False

    def _op_Concat(self, node: ir.Node) -> tuple[list[Element], bool] | None:
        if u.attr_int(node, "axis", 0) not in (0, -1):
            return None
        elements: list[Element] = []
        for value in node.inputs:
            got = self.get(value)
            if got is None or got[1]:
                return None
            elements.extend(got[0])
        return (elements, False) if len(elements) <= MAX_LENGTH else None

    def _op_Unsqueeze(self, node: ir.Node) -> tuple[list[Element], bool] | None:
        got = self.get(node.inputs[0])
        axes = u.unsqueeze_axes(node)
        if got is None or not got[1] or axes is None or axes not in ([0], [-1]):
            return None
        return got[0], False

    def _op_Squeeze(self, node: ir.Node) -> tuple[list[Element], bool] | None:
        got = self.get(node.inputs[0])
        axes = u.unsqueeze_axes(node)
        if got is None or got[1] or len(got[0]) != 1 or axes not in (None, [0], [-1]):
            return None
        return got[0], True


def as_array(elements: list[Element], scalar: bool, dtype: ir.DataType) -> np.ndarray | None:
    """The vector as numpy when every element is known."""
    if any(not isinstance(e, int) for e in elements):
        return None
    array = np.array(elements, dtype=dtype.numpy())
    return array.reshape(()) if scalar else array
