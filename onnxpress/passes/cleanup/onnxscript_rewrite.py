"""`onnxscript-rewrite`: the lossless part of onnxscript's default rewrite rules.

`onnxscript.rewriter._DEFAULT_REWRITE_RULES` minus the rules that are not exact everywhere:

* `CastCast` (x -> float -> float16 as x -> float16 rounds twice for double x),
* `SlicesSplit` (wrong for an odd last dim, and `num_outputs` needs opset 18),
* the Dropout rules (match opset-specific attributes; `eliminate-noops` handles Dropout),
* `MaterializeReshapeShape` as is (it emits `allowzero`, opset 14+): a variant that refuses zero
  dims and leaves `allowzero` out is used instead.
"""

from __future__ import annotations

import logging
from typing import Any

import onnx_ir as ir

from onnxpress.passes.base import Pass, PassResult
from onnxpress.passes.registry import register_pass

logger = logging.getLogger(__name__)


def lossless_rules() -> list[Any]:
    """The rule list (built lazily: importing the rewriter takes a moment)."""
    from onnxscript.rewriter import _basics
    from onnxscript.rewriter.rules.common import (
        _basic_rules,
        _broadcast_to_matmul,
        _cast_constant_of_shape,
        _collapse_slices,
        _fuse_pad_into_conv,
        _fuse_relus_clips,
        _materialize_reshape_shape,
        _min_max_to_clip,
        _no_op,
        _redundant_scatter_nd,
        _remove_optional_bias,
    )

    class MaterializeReshapeShapeNoZero(_materialize_reshape_shape.MaterializeReshapeShape):
        """The onnxscript rule, but without `allowzero` (valid at every opset) and no zero dims."""

        def check(self, context, data: ir.Value, shape: ir.Value) -> Any:
            result = super().check(context, data, shape)
            if result and 0 in self._new_dims:
                return _basics.MatchResult().fail("a zero dim needs allowzero")
            return result

        def rewrite(self, op, data: ir.Value, shape: ir.Value) -> Any:
            return op.Reshape(data, op.Constant(value=ir.tensor(self._new_dims, dtype=ir.DataType.INT64)))

    basic = _basic_rules
    no_op = _no_op
    return [
        *no_op.mul_by_1_rule.commute(),
        *no_op.add_0_rule.commute(),
        no_op.sub_0_rule,
        no_op.div_by_1_rule,
        *_broadcast_to_matmul.rules.rules,
        *_cast_constant_of_shape.rules.rules,
        *_collapse_slices.rules.rules,
        MaterializeReshapeShapeNoZero.rule(),
        *_min_max_to_clip.rules.rules,
        *_fuse_relus_clips.rules.rules,
        basic.no_op_cast_rule,
        basic.no_op_expand_rule,
        basic.flatten_to_reshape_rule,
        basic.reshape_reshape_rule,
        basic.no_op_transpose_rule,
        basic.transpose_transpose_rule,
        basic.unsqueeze_unsqueeze_rule,
        basic.squeeze_reshape_1d_rule,
        *_redundant_scatter_nd.rules.rules,
        *_fuse_pad_into_conv.rules.rules,
        *_remove_optional_bias.rules.rules,
    ]


@register_pass
class OnnxscriptRewritePass(Pass):
    """Apply onnxscript's default pattern rewrites that are exact (see the module docstring).

    Applies everywhere onnxscript's `RewritePass` does: the main graph, subgraphs and model-local
    functions; custom-domain nodes never match. Rewrites leave Identity nodes and dead nodes
    behind: follow with `eliminate-identity,dce`.
    """

    name = "onnxscript-rewrite"

    def run(self, model: ir.Model, am: Any) -> PassResult:
        from onnxscript.rewriter import RewritePass

        result = RewritePass(lossless_rules())(model)
        return PassResult(model, bool(result.modified))
