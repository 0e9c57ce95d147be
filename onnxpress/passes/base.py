"""The pass base class: a kebab-case name, a frozen Options dataclass, declared preserved analyses.

`Pass` subclasses `onnx_ir.passes.InPlacePass`, so an onnxpress pass runs unchanged inside a plain
`onnx_ir.passes.Sequential`; inside our `PassManager` it additionally receives the manager's
`AnalysisManager` (cached analyses) and runs under the instruments. Subclasses implement
`run(model, am)` and return a `PassResult` whose `stats` say what changed.
"""

from __future__ import annotations

import abc
import dataclasses
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import onnx_ir as ir

from onnxpress.errors import PipelineError

__all__ = ["Pass", "PassResult", "NoOptions", "Tolerance", "LOSSLESS", "options_from_text"]

_KEBAB = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


@dataclasses.dataclass
class PassResult(ir.passes.PassResult):
    """`onnx_ir`'s result (model, modified) plus `stats`: counters a report can show."""

    stats: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """Options of a pass that takes none."""


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """How far a pass may move the model's outputs, checked by the numeric instrument.

    An output passes when `|after - before| <= atol + rtol * |before| + scale_rtol * max|before|`
    elementwise (the max over that output of that sample), or, for lossy passes, when the cosine
    similarity of the flattened outputs is at least `min_cosine`.
    """

    rtol: float = 1e-4
    atol: float = 1e-5
    min_cosine: float | None = None
    scale_rtol: float = 0.0


#: Float rounding only: the tolerance of every lossless clean-up. Reordered float32 arithmetic
#: through a deep network moves an output by ~1e-5 of its largest magnitude (PP-OCRv4 det after
#: fold-batchnorm, on a real 640×640 page: 6.6e-5 on a sigmoid map), where the elementwise bound
#: alone is 1e-5 near 0: `scale_rtol` allows 1e-4 of the output's scale.
LOSSLESS = Tolerance(rtol=1e-4, atol=1e-5, scale_rtol=1e-4)


class Pass(ir.passes.InPlacePass):
    """Base class of onnxpress passes.

    Class attributes a subclass sets:
        name: kebab-case name used in pipeline text and the registry.
        Options: a frozen dataclass; its fields (underscores read as dashes) are the pipeline options.
        preserved_analyses: analysis classes still valid after the pass modified the model
            (the string "all" when the pass never invalidates anything).
        tolerance: what the numeric check allows this pass to change.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    preserved_analyses: ClassVar[frozenset[type] | str] = frozenset()
    tolerance: ClassVar[Tolerance] = LOSSLESS

    def __init__(self, options: Any | None = None, /, **kwargs: Any) -> None:
        if options is not None and kwargs:
            raise TypeError("pass either an Options instance or keyword options, not both")
        if options is None:
            options = self.Options(**kwargs)
        elif not isinstance(options, self.Options):
            raise TypeError(f"{type(self).__name__} expects {self.Options.__name__}, got {type(options).__name__}")
        self.options = options

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name and not _KEBAB.match(cls.name):
            raise ValueError(f"pass name {cls.name!r} of {cls.__qualname__} is not kebab-case")
        if not (dataclasses.is_dataclass(cls.Options) and cls.Options.__dataclass_params__.frozen):  # type: ignore[attr-defined]
            raise TypeError(f"{cls.__qualname__}.Options must be a frozen dataclass")

    # -- running -----------------------------------------------------------------------------
    def call(self, model: ir.Model) -> PassResult:
        # Imported here: manager imports this module.
        from onnxpress.passes.manager import AnalysisManager, current_analysis_manager

        am = current_analysis_manager()
        if am is None:
            am = AnalysisManager()
        result = self.run(model, am)
        if not isinstance(result, PassResult):
            result = PassResult(result.model, result.modified)
        return result

    @abc.abstractmethod
    def run(self, model: ir.Model, am: Any) -> PassResult:
        """Transform `model` in place; `am` is the AnalysisManager to ask for analyses."""

    # -- text --------------------------------------------------------------------------------
    def option_items(self) -> list[tuple[str, str]]:
        """(kebab-key, text-value) for every option that differs from its default."""
        items = []
        for field in dataclasses.fields(self.options):
            value = getattr(self.options, field.name)
            if field.default is not dataclasses.MISSING and value == field.default:
                continue
            if field.default_factory is not dataclasses.MISSING and value == field.default_factory():  # type: ignore[misc]
                continue
            items.append((field.name.replace("_", "-"), format_option_value(value)))
        return items

    def to_text(self) -> str:
        """This pass as pipeline text, e.g. `prune-channels{ratio=0.3}`."""
        from onnxpress.passes.pipeline import PipelineElement

        return PipelineElement(self.name, self.option_items(), None).to_text()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.to_text()}>"

    def __str__(self) -> str:
        return self.to_text()


def format_option_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list, frozenset)):
        return ",".join(format_option_value(v) for v in value)
    if value is None:
        return "none"
    return str(value)


def _convert(text: str, annotation: Any, key: str, pass_name: str) -> Any:
    """Turn the option text `text` into the field's type (given as a string annotation)."""
    ann = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    ann = ann.replace(" ", "")
    optional = "None" in ann.split("|") or ann.startswith("Optional[")
    if optional and text.lower() == "none":
        return None
    base = [part for part in ann.split("|") if part != "None"]
    base_ann = base[0] if base else ann
    try:
        if base_ann == "bool":
            lowered = text.lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError(text)
        if base_ann == "int":
            return int(text)
        if base_ann == "float":
            return float(text)
        if base_ann.startswith(("tuple[str", "tuple[int", "tuple[float")):
            item = base_ann[len("tuple[") :].split(",")[0].rstrip("]")
            items = [t for t in text.split(",") if t != ""] if text else []
            conv = {"str": str, "int": int, "float": float}[item]
            return tuple(conv(t) for t in items)
        return text
    except ValueError:
        raise PipelineError(f"option {key}={text!r} of pass '{pass_name}' is not a valid {base_ann}") from None


def options_from_text(cls: type[Pass], items: list[tuple[str, str]] | Mapping[str, str]) -> Any:
    """Build `cls.Options` from (kebab-key, text) pairs; unknown keys fail with close matches."""
    import difflib

    fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(cls.Options)}
    kwargs: dict[str, Any] = {}
    pairs = items.items() if isinstance(items, Mapping) else items
    for key, text in pairs:
        field = fields.get(key)
        if field is None:
            close = difflib.get_close_matches(key, list(fields), n=3, cutoff=0.5)
            known = ", ".join(fields) or "none"
            hint = f"; did you mean {', '.join(close)}?" if close else f"; its options: {known}"
            raise PipelineError(f"pass '{cls.name}' has no option '{key}'{hint}")
        kwargs[field.name] = _convert(text, field.type, key, cls.name)
    try:
        return cls.Options(**kwargs)
    except (TypeError, ValueError) as e:
        raise PipelineError(f"bad options for pass '{cls.name}': {e}") from None
