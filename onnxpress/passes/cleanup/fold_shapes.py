"""`fold-shapes`: fold the run-time shape computations whose result is known or expressible.

Exporters write dynamic reshapes as `Reshape(x, Concat(Gather(Shape(x), 0), [-1], ...))`. When
shape inference knows the dims that are read (static channels) or can name them (the batch of
`x` itself), the computation is replaced by a constant: known dims become numbers, a dim of the
Reshape's own input at the same position becomes `0` ("copy"), and one dim that is left over
becomes `-1` when that is provably the same number. The shape ops then die (`dce`) and shape
inference, re-run here after a change, sees through the Reshape, which lets later passes work.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.base import Pass, PassResult
from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.cleanup._shape_values import Element, ShapeValues, as_array, dim_key
from onnxpress.passes.cleanup.infer_shapes import InferShapesPass
from onnxpress.passes.registry import register_pass

logger = logging.getLogger(__name__)

#: ops whose integer output `ShapeValues` follows: a known result replaces them.
_SHAPE_OPS = ("Shape", "Gather", "Slice", "Concat", "Cast", "Unsqueeze", "Squeeze", "Identity")


def _nonzero_keys(node: ir.Node) -> set[Element]:
    """Dim keys that are non-zero whenever `node` runs: an ancestor Reshape that infers a `-1`
    fails unless every other dim of its target is non-zero (ONNX Runtime checks exactly that)."""
    keys: set[Element] = set()
    seen: set[int] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        for value in current.inputs:
            producer = value.producer() if value is not None else None
            if producer is None or id(producer) in seen or producer.graph is not node.graph:
                continue
            seen.add(id(producer))
            stack.append(producer)
            if not u.is_onnx_op(producer, "Reshape") or u.attr_int(producer, "allowzero", 0):
                continue
            if len(producer.inputs) < 2:
                continue
            target, data = u.const_array(producer.inputs[1]), producer.inputs[0]
            if target is None or target.ndim != 1 or -1 not in target or data is None:
                continue
            keys.update(dim_key(data, i) for i in np.flatnonzero(target == 0))
    keys.discard(None)
    return keys


def _is_nonzero(key: Element | None, nonzero: set[Element]) -> bool:
    return (isinstance(key, int) and key > 0) or (key is not None and key in nonzero)


def _reshape_target(
    elements: list[Element], data: ir.Value, allowzero: bool, node: ir.Node, keep_zeros: bool
) -> list[int] | None:
    """A constant target equal to `elements` for Reshape(data, .), or None.

    `keep_zeros`: a known 0 may stay (it copies the same input's dim as before).
    """
    target: list[int | None] = []
    for i, e in enumerate(elements):
        if isinstance(e, int):
            if e == 0 and not allowzero and not keep_zeros:
                return None
            target.append(e)
        elif not allowzero and dim_key(data, i) == e:
            # Equal at run time, and a 0 there copies that very dim: "copy" is exact.
            target.append(0)
        else:
            target.append(None)
    unknown = [i for i, t in enumerate(target) if t is None]
    if not unknown:
        return target  # type: ignore[return-value]
    if len(unknown) > 1 or -1 in target:
        return None
    # The one unknown dim is numel / (product of the others) when that product is non-zero.
    nonzero = _nonzero_keys(node)
    for i, t in enumerate(target):
        if i == unknown[0] or (t is not None and t > 0):
            continue
        if t == 0 and not allowzero and _is_nonzero(dim_key(data, i), nonzero):
            continue
        return None
    target[unknown[0]] = -1
    return target  # type: ignore[return-value]


def _rebased_target(node: ir.Node, elements: list[Element]) -> tuple[ir.Value, list[int]] | None:
    """Reshape(Reshape(x, [-1]), t) -> (x, t') when t is expressible in x's dims.

    A copy of x's dim 0 is exact even when that dim is 0: the rank-1 middle's only dim, numel(x),
    is then 0 too; copies further right would have failed on the rank-1 middle.
    """
    middle = node.inputs[0]
    producer = middle.producer()
    if producer is None or not u.is_onnx_op(producer, "Reshape") or producer.inputs[0] is None:
        return None
    if middle.shape is None or len(middle.shape) != 1 or u.has_ref_attrs(producer):
        return None
    x = producer.inputs[0]
    target = _reshape_target(elements, x, bool(u.attr_int(node, "allowzero", 0)), node, keep_zeros=False)
    return None if target is None else (x, target)


@register_pass
class FoldShapesPass(Pass):
    """Fold shape computations that shape inference can see through.

    Applies (main graph and its subgraphs, default domain) to:

    * a `Shape`/`Gather`/`Slice`/`Concat`/`Cast`/`Unsqueeze`/`Squeeze` result whose every element
      is a static dim or a constant: replaced by that constant (e.g. `Gather(Shape(x), 1)` with
      `x: [N, 120, H, W]` is `120`);
    * the dynamic target of a `Reshape(data, t)`: known elements stay, an element equal to
      `data`'s own dim at the same position becomes `0` (allowzero 0 only), and if exactly one
      element is left it becomes `-1` provided the other dims are certainly non-zero (positive
      constants, static dims, or dims that an earlier `-1` Reshape already requires non-zero:
      ONNX Runtime cannot infer `-1` for an empty tensor, so zero-size inputs must keep working);
    * `Reshape(Reshape(x, [-1]), t)` whose target can be written in x's dims: `Reshape(x, t')`;
    * `ConstantOfShape` of a constant shape with at most `max-elements` elements.

    Element equality comes from shape inference's dim symbols (see `_shape_values`); after a
    change, shape inference is re-run and the pass repeats (at most `max-rounds`). Model-local
    functions are left alone (a new constant would need a Constant node there). Does not apply
    to values that are graph outputs or to Reshapes whose `0`s would change meaning.
    """

    name = "fold-shapes"

    @dataclasses.dataclass(frozen=True)
    class Options:
        max_elements: int = 1024
        max_rounds: int = 4

    def run(self, model: ir.Model, am: Any) -> PassResult:
        if u.default_opset(model) < 5:
            return PassResult(model, False, {"folded": 0})
        names = u.NameScope(model)
        stats = {"folded": 0, "reshapes": 0, "constant-of-shape": 0}
        for _ in range(self.options.max_rounds):
            changed = 0
            for graph in model.graphs():
                changed += self._round(graph, names, stats)
            if not changed:
                break
            InferShapesPass().run(model, am)
        total = sum(stats.values())
        if total:
            logger.info(
                "fold-shapes folded %d shape value(s), %d Reshape target(s), %d ConstantOfShape",
                stats["folded"], stats["reshapes"], stats["constant-of-shape"],
            )
        return PassResult(model, total > 0, stats)

    def _round(self, graph: ir.Graph, names: u.NameScope, stats: dict[str, int]) -> int:
        values = ShapeValues()
        changed = 0
        for node in list(graph):
            if node.domain not in ("", "ai.onnx") or u.has_ref_attrs(node) or len(node.outputs) != 1:
                continue
            out = node.outputs[0]
            if node.op_type in _SHAPE_OPS and out.const_value is None and not out.is_graph_output():
                got = values.get(out)
                array = None if got is None or out.dtype not in (ir.DataType.INT64, ir.DataType.INT32) else as_array(*got, out.dtype)
                if array is not None and out.uses():
                    logger.debug("folding %s %s to %s", node.op_type, node.name, array.tolist())
                    ir.convenience.replace_all_uses_with(out, u.new_initializer(graph, names, out.name or "shape", array))
                    stats["folded"] += 1
                    changed += 1
            elif node.op_type == "Reshape":
                changed += self._fold_reshape(node, graph, names, values, stats)
            elif node.op_type == "ConstantOfShape":
                changed += self._fold_constant_of_shape(node, graph, names, stats)
        return changed

    def _fold_reshape(
        self, node: ir.Node, graph: ir.Graph, names: u.NameScope, values: ShapeValues, stats: dict[str, int]
    ) -> int:
        data, shape = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
        if data is None or shape is None or shape.const_value is not None:
            return 0
        elements = values.elements(shape)
        if elements is None:
            return 0
        allowzero = bool(u.attr_int(node, "allowzero", 0))
        target = _reshape_target(elements, data, allowzero, node, keep_zeros=True)
        source = data
        if target is None:
            rebased = _rebased_target(node, elements)
            if rebased is None:
                logger.debug("Reshape %s: target %s not expressible", node.name, elements)
                return 0
            source, target = rebased
        constant = u.new_initializer(graph, names, f"{node.outputs[0].name}_shape", np.array(target, np.int64))
        node.replace_input_with(0, source)
        node.replace_input_with(1, constant)
        stats["reshapes"] += 1
        return 1

    def _fold_constant_of_shape(self, node: ir.Node, graph: ir.Graph, names: u.NameScope, stats: dict[str, int]) -> int:
        out = node.outputs[0]
        shape = u.const_array(node.inputs[0])
        if shape is None or shape.ndim != 1 or out.is_graph_output() or not out.uses():
            return 0
        if np.any(shape < 0) or math.prod(shape.tolist()) > self.options.max_elements:
            return 0
        attr = node.attributes.get("value")
        fill = np.zeros(1, np.float32) if attr is None else attr.as_tensor().numpy().reshape(-1)
        if fill.size != 1:
            return 0
        array = np.full(shape.tolist(), fill[0], dtype=fill.dtype)
        ir.convenience.replace_all_uses_with(out, u.new_initializer(graph, names, out.name or "filled", array))
        stats["constant-of-shape"] += 1
        return 1
