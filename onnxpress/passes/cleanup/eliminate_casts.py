"""`eliminate-casts`: Cast(Cast(x)) -> Cast(x) or x when the inner cast loses nothing."""

from __future__ import annotations

import logging
from typing import Any

import onnx_ir as ir

from onnxpress.passes.base import Pass, PassResult
from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.registry import register_pass

logger = logging.getLogger(__name__)

D = ir.DataType
_INTS_AND_FLOATS = {D.INT8, D.INT16, D.INT32, D.INT64, D.UINT8, D.UINT16, D.UINT32, D.UINT64,
                    D.FLOAT16, D.BFLOAT16, D.FLOAT, D.DOUBLE}

#: source -> the types that represent every value of the source exactly.
_EXACT: dict[ir.DataType, frozenset[ir.DataType]] = {
    D.BOOL: frozenset(_INTS_AND_FLOATS),
    D.UINT8: frozenset({D.UINT16, D.UINT32, D.UINT64, D.INT16, D.INT32, D.INT64,
                        D.FLOAT16, D.BFLOAT16, D.FLOAT, D.DOUBLE}),
    D.INT8: frozenset({D.INT16, D.INT32, D.INT64, D.FLOAT16, D.BFLOAT16, D.FLOAT, D.DOUBLE}),
    D.UINT16: frozenset({D.UINT32, D.UINT64, D.INT32, D.INT64, D.FLOAT, D.DOUBLE}),
    D.INT16: frozenset({D.INT32, D.INT64, D.FLOAT, D.DOUBLE}),
    D.UINT32: frozenset({D.UINT64, D.INT64, D.DOUBLE}),
    D.INT32: frozenset({D.INT64, D.DOUBLE}),
    D.FLOAT16: frozenset({D.FLOAT, D.DOUBLE}),
    D.BFLOAT16: frozenset({D.FLOAT, D.DOUBLE}),
    D.FLOAT: frozenset({D.DOUBLE}),
}

#: types whose Cast is value-based (casting an exactly equal value gives the same result).
_PLAIN = frozenset(_INTS_AND_FLOATS | {D.BOOL})


def _to(node: ir.Node) -> ir.DataType | None:
    attr = node.attributes.get("to")
    if attr is None or attr.is_ref():
        return None
    try:
        return ir.DataType(attr.as_int())
    except ValueError:
        return None


@register_pass
class EliminateCastsPass(Pass):
    """Skip an inner Cast that is exact: `Cast(Cast(x, T1), T2)` becomes `Cast(x, T2)`, or `x`
    itself when T2 is x's own type (e.g. float -> double -> float).

    Applies when x's type T0 is known and T1 represents every T0 value exactly (widening: bool to
    numbers, small ints to wider ints and to floats with enough mantissa, float16/bfloat16 to
    float, float to double), and T2 is a plain numeric or bool type. Works in subgraphs and
    model-local functions; the inner Cast stays while something else uses it.

    Never collapses a narrowing inner cast (float -> int32 -> float truncates; float -> float16 ->
    float rounds), and leaves string, float8 and 4-bit types alone.
    """

    name = "eliminate-casts"

    def run(self, model: ir.Model, am: Any) -> PassResult:
        changed = 0
        for graph in list(u.all_graphs(model)):
            for node in list(graph):
                if not u.is_onnx_op(node, "Cast") or node.inputs[0] is None:
                    continue
                inner = node.inputs[0].producer()
                if inner is None or not u.is_onnx_op(inner, "Cast") or inner.inputs[0] is None:
                    continue
                x = inner.inputs[0]
                t0, t1, t2 = x.dtype, _to(inner), _to(node)
                if t0 is None or t1 is None or t2 not in _PLAIN or t1 not in _EXACT.get(t0, ()):
                    continue
                if t2 == t0:
                    u.bypass(node, x)
                else:
                    node.replace_input_with(0, x)
                changed += 1
        if changed:
            logger.info("eliminate-casts removed %d redundant inner cast(s)", changed)
        return PassResult(model, changed > 0, {"removed": changed})
