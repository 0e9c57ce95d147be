"""Pass infrastructure: Pass, PassResult, PassManager, analyses, pipelines, the registry."""

from onnxpress.passes.adaptors import Adaptor, FixpointPass
from onnxpress.passes.base import LOSSLESS, NoOptions, Pass, PassResult, Tolerance
from onnxpress.passes.manager import (
    Analysis,
    AnalysisManager,
    ModelRunner,
    PassContext,
    PassInstrument,
    PassManager,
    PassRecord,
)
from onnxpress.passes.pipeline import PipelineElement, build_pipeline, parse_pipeline, print_pipeline
from onnxpress.passes.registry import (
    expand_pipeline_text,
    get_pass,
    list_entries,
    load_plugin,
    register_pass,
    register_pipeline,
    wrap_ir_pass,
)

__all__ = [
    "Adaptor",
    "Analysis",
    "AnalysisManager",
    "FixpointPass",
    "LOSSLESS",
    "ModelRunner",
    "NoOptions",
    "Pass",
    "PassContext",
    "PassInstrument",
    "PassManager",
    "PassRecord",
    "PassResult",
    "PipelineElement",
    "Tolerance",
    "build_pipeline",
    "expand_pipeline_text",
    "get_pass",
    "list_entries",
    "load_plugin",
    "parse_pipeline",
    "print_pipeline",
    "register_pass",
    "register_pipeline",
    "wrap_ir_pass",
]
