"""Imports every built-in pass module and registers the named pipelines -O0, -O1, -O2."""

from __future__ import annotations

from onnxpress.passes import adaptors, cleanup, legalize, lowrank, pruning, quantize  # noqa: F401  (register on import)
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
    "eliminate-transposes,eliminate-reshapes,merge-unsqueezes,fold-batchnorm,fuse-conv-bias,fuse-matmul-add,cse,dce"
    "),"
    "lift-constants,dedup-initializers,dce"
)

register_pipeline("O0", O0, "load and save only")
register_pipeline("O1", O1, "cheap lossless clean-ups")
register_pipeline("O2", O2, "all lossless clean-ups to a fixpoint (the default)")
