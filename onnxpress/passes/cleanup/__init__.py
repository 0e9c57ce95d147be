"""Lossless clean-up passes: outputs must not change beyond float rounding.

Passes that onnx_ir and onnxscript already provide are registered here under our names by thin
wrappers; the rest live one per module beside this file.
"""

from __future__ import annotations

from onnxpress.passes.cleanup import _wrapped  # noqa: F401  (registers on import)
