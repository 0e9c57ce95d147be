"""`check-target-ops`: warn about ops the target has no kernel for (`Capabilities.missing_ops`).

Such nodes fall back to the CPU provider at best (an extra copy each way) or make session creation
fail (ConvInteger on an EP without it, Olive#686). The pass changes nothing; it names the ops in a
diagnostic and counts them in its stats so that the summary shows them before the user deploys.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import onnx_ir as ir

from onnxpress.passes.base import Pass, PassResult
from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.manager import PassContext
from onnxpress.passes.registry import register_pass

__all__ = ["CheckTargetOpsPass"]

logger = logging.getLogger(__name__)


@register_pass
class CheckTargetOpsPass(Pass):
    """Diagnose nodes whose op type the target lacks; never modifies the model."""

    name = "check-target-ops"

    def run(self, model: ir.Model, am: Any) -> PassResult:
        ctx = PassContext.current()
        missing = getattr(ctx.capabilities, "missing_ops", None) or frozenset()
        found = Counter(n.op_type for g in u.all_graphs(model) for n in g if n.op_type in missing)
        if found:
            listed = ", ".join(f"{op} x{n}" for op, n in sorted(found.items()))
            ctx.diagnose(f"target '{ctx.target}' has no kernel for: {listed}; those nodes will fall back "
                         "to another provider or fail to load")
        return PassResult(model, False, {"missing_ops": dict(sorted(found.items()))})
