"""`convert-opset{min=N max=M}`: convert the default-domain opset into the target's range.

A model below `min` is upgraded to `min`, one above `max` is downgraded to `max`, with onnx's
version converter (through the same guarded helper quantize-qdq uses: initializers keep their
lazy tensors, models with local functions or over 1 GiB of weights are left alone). A model inside
the range is not touched. When the converter cannot map an op the model stays as it was and a
diagnostic names the problem: the target may still refuse it, but that is its call, not ours.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import onnx_ir as ir

from onnxpress.passes.base import Pass, PassResult
from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.manager import PassContext
from onnxpress.passes.registry import register_pass

__all__ = ["ConvertOpsetPass"]

logger = logging.getLogger(__name__)


@register_pass
class ConvertOpsetPass(Pass):
    """Convert the model's default-domain opset into [min, max] (onnx version converter).

    Skips (diagnostic, `modified=False`) when the converter fails or the model is too large or
    has local functions. `max=0` means "no upper bound"."""

    name = "convert-opset"

    @dataclasses.dataclass(frozen=True)
    class Options:
        min: int = 7
        max: int = 0

        def __post_init__(self) -> None:
            if self.min < 1 or (self.max and self.max < self.min):
                raise ValueError(f"need 1 <= min <= max, got min={self.min} max={self.max}")

    def run(self, model: ir.Model, am: Any) -> PassResult:
        from onnxpress.passes.quantize.qdq import upgrade_opset

        opset = u.default_opset(model)
        lo, hi = self.options.min, self.options.max or opset
        wanted = min(max(opset, lo), hi)
        if wanted == opset:
            return PassResult(model, False, {"opset": opset})
        problem = upgrade_opset(model, wanted)
        if problem is not None:
            PassContext.current().diagnose(
                f"convert-opset: could not convert opset {opset} to {wanted} for target "
                f"'{PassContext.current().target}' ({problem}); left at {opset}")
            return PassResult(model, False, {"opset": opset, "skipped": problem})
        logger.info("convert-opset: opset %d -> %d", opset, wanted)
        return PassResult(model, True, {"opset": f"{opset}->{wanted}"})
