"""onnxpress: a compiler for trained ONNX models.

Public API only; see README.md. `optimize` runs a pipeline and returns the model with a report.
"""

from onnxpress.api import Result, load, optimize, resolve_pipeline, save
from onnxpress.errors import InputError, OnnxpressError, PassFailure, PipelineError, VerificationError
from onnxpress.passes import (
    Analysis,
    AnalysisManager,
    Pass,
    PassContext,
    PassInstrument,
    PassManager,
    PassResult,
    Tolerance,
    register_pass,
    register_pipeline,
)

__version__ = "0.1.0"

__all__ = [
    "Analysis",
    "AnalysisManager",
    "InputError",
    "OnnxpressError",
    "Pass",
    "PassContext",
    "PassFailure",
    "PassInstrument",
    "PassManager",
    "PassResult",
    "PipelineError",
    "Result",
    "Tolerance",
    "VerificationError",
    "__version__",
    "load",
    "optimize",
    "register_pass",
    "register_pipeline",
    "resolve_pipeline",
    "save",
]
