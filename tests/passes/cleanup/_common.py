"""Shared by the clean-up pass tests: run one pass (or pipeline) on a model from ONNX text."""

from __future__ import annotations

import onnx_ir as ir

from onnxpress.passes import PassManager
from onnxpress.passes.base import PassResult
from tests.util import assert_same_outputs, model_from_text, random_feeds


def apply(pipeline: str, text: str, check: bool = True, dims: dict[str, int] | None = None) -> tuple[ir.Model, PassResult]:
    """Run `pipeline` on the model; unless `check=False`, assert the outputs stay the same on ORT."""
    before = model_from_text(text)
    after = model_from_text(text)
    result = PassManager.from_pipeline(pipeline)(after)
    if check:
        proto = ir.serde.serialize_model(after)
        reloaded = ir.serde.deserialize_model(proto)
        assert_same_outputs(before, reloaded, random_feeds(before, dims=dims))
    return after, result


def ops(model: ir.Model | ir.Graph) -> list[str]:
    graph = model.graph if isinstance(model, ir.Model) else model
    return [node.op_type for node in graph]


def modified(result: PassResult) -> bool:
    return bool(result.modified)
