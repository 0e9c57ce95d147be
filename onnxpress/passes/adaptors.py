"""Adaptors: passes that run a nested pipeline, e.g. `fixpoint{max-iters=4}(fold-constants,cse,dce)`."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import onnx_ir as ir

from onnxpress.passes.base import Pass, PassResult
from onnxpress.passes.registry import register_pass

logger = logging.getLogger(__name__)


class Adaptor(Pass):
    """A pass with a nested pipeline; prints as `name{options}(child,child)`."""

    is_adaptor = True

    def __init__(self, options: Any | None = None, /, *, children: Sequence[ir.passes.PassBase] = (), **kwargs: Any):
        super().__init__(options, **kwargs)
        self.passes = list(children)

    def to_text(self) -> str:
        from onnxpress.passes.manager import pass_text

        return super().to_text() + "(" + ",".join(pass_text(p) for p in self.passes) + ")"


@register_pass
class FixpointPass(Adaptor):
    """Repeat the nested pipeline until it changes nothing, at most `max-iters` times."""

    name = "fixpoint"
    preserved_analyses = frozenset()

    @dataclasses.dataclass(frozen=True)
    class Options:
        max_iters: int = 4

        def __post_init__(self) -> None:
            if self.max_iters < 1:
                raise ValueError("max-iters must be at least 1")

    def run(self, model: ir.Model, am: Any) -> PassResult:
        # Outside a PassManager (e.g. in onnx_ir.passes.Sequential): run the children directly.
        modified_any = False
        for i in range(self.options.max_iters):
            modified = False
            for p in self.passes:
                modified |= bool(p(model).modified)
            modified_any |= modified
            if not modified:
                break
        return PassResult(model, modified_any, {"iterations": i + 1})

    def run_with_manager(self, model: ir.Model, manager: Any) -> bool:
        modified_any = False
        for i in range(self.options.max_iters):
            modified = manager.run_passes(model, self.passes)
            modified_any |= modified
            if not modified:
                logger.debug("fixpoint reached after %d iteration(s)", i + 1)
                break
        return modified_any
