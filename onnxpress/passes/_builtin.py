"""Registers the built-in passes and the named pipelines -O0, -O1, -O2.

The lossless clean-ups (all the -O levels need) are imported at once; the compression and
legalization families are imported the first time a name is not found among those (or when
everything is listed), so `optimize -O2` does not pay for importing pruning, low-rank (tensorly)
and quantization code it never runs.
"""

from __future__ import annotations

from onnxpress.passes import adaptors, cleanup  # noqa: F401  (register on import)
from onnxpress.passes.registry import register_pipeline

#: Load and save only.
O0 = ""
#: Cheap, local clean-ups.
O1 = "fold-constants,eliminate-noops,eliminate-identity,cse,dce"
#: Everything lossless, iterated to a fixpoint.
O2 = (
    "infer-shapes,"
    "fixpoint{max-iters=4}("
    "fold-constants,fold-shapes,onnxscript-rewrite,eliminate-noops,eliminate-identity,eliminate-casts,"
    "eliminate-transposes,eliminate-reshapes,merge-unsqueezes,fold-batchnorm,div-to-mul,fuse-conv-affine,fuse-conv-bias,fuse-matmul-add,cse,dce"
    "),"
    "lift-constants,dedup-initializers,dce"
)

#: Imported on demand (see the module docstring).
LAZY_FAMILIES = (
    "onnxpress.passes.pruning",
    "onnxpress.passes.lowrank",
    "onnxpress.passes.quantize",
    "onnxpress.passes.legalize",
)

register_pipeline("O0", O0, "load and save only")
register_pipeline("O1", O1, "cheap lossless clean-ups")
register_pipeline("O2", O2, "all lossless clean-ups to a fixpoint (the default)")
