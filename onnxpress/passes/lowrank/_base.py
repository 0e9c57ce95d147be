"""What the four low-rank passes share: lossy tolerance, option checks, the layer-by-layer run.

`LayerwisePass.run` finds the candidate layers (`candidates`), decomposes each on its own
(`decompose`: a `LayerRecord`, or the reason it was skipped) and returns the stats of
`_records.summary`. `lowrank-svd` overrides `run` to feed its data-aware waves through the same
`decompose`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import onnx_ir as ir

from onnxpress.passes.base import Pass, PassResult, Tolerance
from onnxpress.passes.cleanup._util import NameScope
from onnxpress.passes.lowrank._emit import node_names
from onnxpress.passes.lowrank._records import LayerRecord, decompose_each, result

__all__ = ["DEFAULT_KEEP", "LOSSY", "LayerwisePass", "check_common", "check_rank_options"]

#: Fraction of a layer's parameters kept when no rank option is given.
DEFAULT_KEEP = 0.5
#: Lossy by design: the numeric check reports, it only fails a pass that breaks the model.
LOSSY = Tolerance(rtol=1.0, atol=1e9, min_cosine=0.0)


def check_rank_options(**given: Any) -> None:
    """At most one way to choose ranks may be set (None or empty means not set)."""
    chosen = [key.replace("_", "-") for key, value in given.items() if value not in (None, ())]
    if len(chosen) > 1:
        raise ValueError(f"give only one of {', '.join(k.replace('_', '-') for k in given)} (got {', '.join(chosen)})")


def check_common(min_gain: float, align: int = 1) -> None:
    if not 0.0 <= min_gain < 1.0:
        raise ValueError("min-gain must be in [0, 1)")
    if align < 1:
        raise ValueError("align must be at least 1")


class LayerwisePass(Pass):
    """Base of the low-rank passes: each candidate layer decomposed on its own."""

    tolerance = LOSSY

    def candidates(self, model: ir.Model, skipped: Counter[str]) -> list[Any]:
        """The layers to try; the reasons for the others are counted in `skipped`."""
        raise NotImplementedError

    def decompose(self, layer: Any, names: NameScope, taken: set[str]) -> LayerRecord | str:
        """Replace `layer` and return its record, or return why it was left alone (nothing changed)."""
        raise NotImplementedError

    def run(self, model: ir.Model, am: Any) -> PassResult:
        skipped: Counter[str] = Counter()
        names, taken = NameScope(model), node_names(model.graph)
        layers = self.candidates(model, skipped)
        records = decompose_each(layers, lambda layer: self.decompose(layer, names, taken), self.name, skipped)
        return result(model, self.name, records, skipped)
