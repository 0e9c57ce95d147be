"""`OrtBackend`: what every built-in target shares; each EP module only fills in its data.

A target is capabilities (data), the meaning of `--quantize KIND` on it (pipeline text, or the
reason it has none), and the legalization around the user's pipeline: a prelude (opset conversion
into the target's range, static shapes where it needs them) and a tail after the compression
passes (Q/DQ the target would run in float removed, ops it lacks named). `compose` puts the
pieces together; `pipeline(level)` is the default with nothing asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import onnx_ir as ir

from onnxpress.backends.base import Capabilities
from onnxpress.backends.ort import OrtRunner
from onnxpress.errors import InputError

__all__ = ["OrtBackend", "available_providers", "drop_unused_opsets", "warn_symbolic_inputs"]

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def drop_unused_opsets(model: ir.Model) -> list[str]:
    """Remove opset imports no node (in any graph or function) uses; the default domain stays.

    Returns the dropped domains."""
    from onnxpress.passes.cleanup import _util as u

    used = {""}
    for graph in u.all_graphs(model):
        used.update(node.domain for node in graph)
    used.update(f.domain for f in model.functions.values())
    dropped = sorted(d for d in model.opset_imports if d not in used)
    for domain in dropped:
        del model.opset_imports[domain]
    for function in model.functions.values():
        inner = {node.domain for node in function} | {""}
        for domain in [d for d in function.opset_imports if d not in inner]:
            del function.opset_imports[domain]
    return dropped


def warn_symbolic_inputs(target: str, model: ir.Model) -> None:
    """One warning naming the graph inputs with symbolic dims, for targets that run those slower."""
    from onnxpress.passes.legalize.fix_shapes import symbolic_input_dims

    symbolic = symbolic_input_dims(model)
    if symbolic:
        listed = "; ".join(f"{name}: {', '.join(dims)}" for name, dims in symbolic.items())
        logger.warning("%s: symbolic input dims (%s): the EP compiles the model for dynamic shapes, which runs "
                       "slower; fix them with --input-shape NAME:DIMS if the deployment's shapes are known",
                       target, listed)


class OrtBackend:
    """A target on one ONNX Runtime execution provider. Subclasses set the class attributes."""

    name: str = ""
    capabilities: Capabilities
    #: `--quantize KIND` -> pipeline fragment on this target
    quantize_fragments: Mapping[str, str] = {}
    #: `--quantize KIND` -> why this target has no such thing (kinds in neither map are unknown)
    quantize_refusals: Mapping[str, str] = {}

    # -- pipelines ---------------------------------------------------------------------------------
    def prelude(self) -> str:
        """Legalization before the user's pipeline: opset range, then static shapes if needed."""
        lo, hi = self.capabilities.opset_range
        parts = [f"convert-opset{{min={lo} max={hi}}}"]
        if self.capabilities.static_shapes_required:
            parts.append("fix-shapes")
        return ",".join(parts)

    def tail(self) -> str:
        """Legalization after it: Q/DQ the target runs in float removed, missing ops named."""
        return "remove-float-qdq,check-target-ops"

    def compose(self, body: str | None, level: int = 2, fragments: Sequence[str] = ()) -> str:
        """prelude, body (default: -O`level`), fragments (--quantize ...), tail."""
        body = f"O{level}" if body is None else body
        return ",".join(p for p in (self.prelude(), body, *fragments, self.tail()) if p)

    def pipeline(self, level: int) -> str:
        return self.compose(None, level)

    def quantize(self, kind: str) -> str:
        """Pipeline text for `--quantize KIND` on this target."""
        if kind in self.quantize_fragments:
            return self.quantize_fragments[kind]
        known = ", ".join(self.quantize_fragments) or "none"
        reason = self.quantize_refusals.get(kind)
        if reason is not None:
            raise InputError(f"--quantize {kind} is not available for target '{self.name}': {reason} "
                             f"(available here: {known})")
        raise InputError(f"--quantize takes one of {known} for target '{self.name}', got {kind!r}")

    # -- sessions ----------------------------------------------------------------------------------
    def provider_options(self, model: ir.Model | None = None) -> dict[str, str]:
        """Options for the target's own provider (subclasses may look at the model)."""
        return dict(self.capabilities.provider_options)

    def session_providers(self, model: ir.Model | None = None) -> list[Any]:
        """Providers (with options) for a session, those this onnxruntime lacks left out."""
        available = set(available_providers())
        out: list[Any] = []
        for provider in self.capabilities.providers:
            if provider not in available:
                continue
            options = self.provider_options(model) if provider == self.capabilities.provider else {}
            out.append((provider, options) if options else provider)
        return out or [CPU]

    def runner(self) -> OrtRunner:
        """Runs on the target's EP where this onnxruntime has it, else on the CPU (calibration and
        numeric checks measure float behaviour, which the CPU reproduces)."""
        providers = [p if isinstance(p, str) else p[0] for p in self.session_providers()]
        if self.capabilities.provider not in providers:
            logger.debug("%s: %s not available; calibration and checks run on %s",
                         self.name, self.capabilities.provider, ", ".join(providers))
        return OrtRunner(providers)

    def check_placement(self, model: ir.Model, feeds: Sequence[Mapping[str, Any]], *,
                        python: str | None = None) -> dict[str, Any]:
        """Which provider ran each node of `model`, from a real session (see placement.py); under
        another interpreter's onnxruntime when `python` (or $ONNXPRESS_PLACEMENT_PYTHON) names one."""
        from onnxpress.backends.placement import check_placement

        return check_placement(model, self, feeds, python=python)

    # -- output ------------------------------------------------------------------------------------
    def emit(self, model: ir.Model, path: str, *, external_data: bool | None = None) -> None:
        """Drop unused opset imports, then save atomically (external data above 2 GB or when asked)."""
        from onnxpress.ir.io import save

        dropped = drop_unused_opsets(model)
        if dropped:
            logger.info("%s: dropped unused opset imports %s", self.name, ", ".join(dropped))
        if self.capabilities.static_shapes_preferred and not self.capabilities.static_shapes_required:
            warn_symbolic_inputs(self.name, model)
        save(model, path, external_data=external_data)
