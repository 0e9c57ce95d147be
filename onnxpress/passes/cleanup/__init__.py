"""Lossless clean-up passes: outputs must not change beyond float rounding.

Passes that onnx_ir and onnxscript already provide are registered here under our names by thin
wrappers; the rest live one per module beside this file.
"""

from __future__ import annotations

from onnxpress.passes.cleanup import _wrapped  # noqa: F401  (registers on import)
from onnxpress.passes.cleanup.dedup_initializers import DeduplicateInitializersPass
from onnxpress.passes.cleanup.eliminate_casts import EliminateCastsPass
from onnxpress.passes.cleanup.eliminate_identity import EliminateIdentityPass
from onnxpress.passes.cleanup.eliminate_noops import EliminateNoopsPass
from onnxpress.passes.cleanup.eliminate_reshapes import EliminateReshapesPass
from onnxpress.passes.cleanup.eliminate_transposes import EliminateTransposesPass
from onnxpress.passes.cleanup.fold_batchnorm import FoldBatchNormPass
from onnxpress.passes.cleanup.fold_shapes import FoldShapesPass
from onnxpress.passes.cleanup.div_to_mul import DivToMulPass
from onnxpress.passes.cleanup.fuse_conv_affine import FuseConvAffinePass
from onnxpress.passes.cleanup.fuse_conv_bias import FuseConvBiasPass
from onnxpress.passes.cleanup.fuse_matmul_add import FuseMatMulAddPass
from onnxpress.passes.cleanup.infer_shapes import InferShapesPass
from onnxpress.passes.cleanup.merge_unsqueezes import MergeUnsqueezesPass
from onnxpress.passes.cleanup.onnxscript_rewrite import OnnxscriptRewritePass

__all__ = [
    "DeduplicateInitializersPass",
    "EliminateCastsPass",
    "EliminateIdentityPass",
    "EliminateNoopsPass",
    "EliminateReshapesPass",
    "EliminateTransposesPass",
    "FoldBatchNormPass",
    "FoldShapesPass",
    "DivToMulPass",
    "FuseConvAffinePass",
    "FuseConvBiasPass",
    "FuseMatMulAddPass",
    "InferShapesPass",
    "MergeUnsqueezesPass",
    "OnnxscriptRewritePass",
]
