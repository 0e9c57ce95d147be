"""PassManager, AnalysisManager and PassContext — LLVM's new pass manager in Python's terms.

* An `Analysis` is a pure function of the model (shapes, costs, channel groups, calibration
  ranges). The `AnalysisManager` computes one on demand, caches it, and after a pass that modified
  the model drops every cached analysis the pass did not declare preserved.
* The `PassContext` (a `contextvars` scope) carries what passes may read but never import: the
  target backend's name and capabilities, a runner that executes a model on ONNX Runtime, the input
  data, free-form config, and a diagnostics list.
* The `PassManager` runs passes in order and calls its instruments around each one.
"""

from __future__ import annotations

import abc
import contextvars
import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, Protocol

import onnx_ir as ir

from onnxpress.errors import OnnxpressError, PassFailure
from onnxpress.passes.base import Pass, PassResult

__all__ = [
    "Analysis",
    "AnalysisManager",
    "PassContext",
    "PassInstrument",
    "PassManager",
    "ModelRunner",
    "current_analysis_manager",
]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Analyses
# ----------------------------------------------------------------------------------------------
class Analysis(abc.ABC):
    """A pure function of the model whose result the AnalysisManager caches.

    Subclasses implement `compute(model, am)`; an analysis may ask `am` for other analyses.
    """

    name: ClassVar[str] = ""

    @abc.abstractmethod
    def compute(self, model: ir.Model, am: "AnalysisManager") -> Any:
        ...


class AnalysisManager:
    """Computes analyses on demand and caches them until a pass invalidates them."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, type[Analysis]], Any] = {}
        self.computed: dict[type[Analysis], int] = {}

    def get(self, analysis: type[Analysis], model: ir.Model) -> Any:
        key = (id(model), analysis)
        if key not in self._cache:
            logger.debug("computing analysis %s", analysis.__name__)
            self._cache[key] = analysis().compute(model, self)
            self.computed[analysis] = self.computed.get(analysis, 0) + 1
        return self._cache[key]

    def cached(self, analysis: type[Analysis], model: ir.Model) -> bool:
        return (id(model), analysis) in self._cache

    def invalidate(self, preserved: frozenset[type] | str = frozenset()) -> list[type[Analysis]]:
        """Drop every cached analysis not in `preserved` ("all" keeps everything)."""
        if preserved == "all":
            return []
        dropped = [key for key in self._cache if key[1] not in preserved]
        for key in dropped:
            del self._cache[key]
        return [key[1] for key in dropped]

    def clear(self) -> None:
        self._cache.clear()


_CURRENT_AM: contextvars.ContextVar[AnalysisManager | None] = contextvars.ContextVar(
    "onnxpress_analysis_manager", default=None
)


def current_analysis_manager() -> AnalysisManager | None:
    return _CURRENT_AM.get()


# ----------------------------------------------------------------------------------------------
# Context
# ----------------------------------------------------------------------------------------------
class ModelRunner(Protocol):
    """Runs a model on a backend: one output dict (name -> array) per feed dict."""

    def run(self, model: ir.Model, feeds: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        ...


_CURRENT_CONTEXT: contextvars.ContextVar["PassContext | None"] = contextvars.ContextVar(
    "onnxpress_pass_context", default=None
)


@dataclasses.dataclass
class PassContext:
    """What a pass may read about the world: target, runner, data, config, diagnostics.

    Use as a context manager (`with ctx: ...`); `PassContext.current()` returns the innermost active
    one, or a default context (target "cpu", no runner, no data) when none is active.
    """

    target: str = "cpu"
    capabilities: Any = None
    runner: ModelRunner | None = None
    data: Any = None  # an onnxpress.data.FeedSource, or a list of feed dicts
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    diagnostics: list[str] = dataclasses.field(default_factory=list)
    _tokens: list[contextvars.Token] = dataclasses.field(default_factory=list, repr=False)

    @staticmethod
    def current() -> "PassContext":
        ctx = _CURRENT_CONTEXT.get()
        return ctx if ctx is not None else PassContext()

    def feeds(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The context's input data as a list of feed dicts (at most `limit`)."""
        if self.data is None:
            return []
        source = self.data
        if hasattr(source, "feeds"):
            iterator: Iterable[dict[str, Any]] = source.feeds()
        else:
            iterator = source
        out = []
        for feed in iterator:
            if limit is not None and len(out) >= limit:
                break
            out.append(feed)
        return out

    def diagnose(self, message: str) -> None:
        logger.warning(message)
        self.diagnostics.append(message)

    def __enter__(self) -> "PassContext":
        self._tokens.append(_CURRENT_CONTEXT.set(self))
        return self

    def __exit__(self, *exc: object) -> None:
        _CURRENT_CONTEXT.reset(self._tokens.pop())


# ----------------------------------------------------------------------------------------------
# Instruments
# ----------------------------------------------------------------------------------------------
class PassInstrument:
    """Hooks around every pass. Override what you need; every hook defaults to doing nothing.

    `should_run` may veto a pass (the bisect limit uses it). `after_pass` may raise an
    `OnnxpressError` (the verifiers do) to stop the pipeline and name the pass.
    """

    #: instruments that need the model as it was before each pass set this; the manager then
    #: keeps a cheap clone (weights shared) and hands it to `after_pass` as `before`.
    needs_model_before: ClassVar[bool] = False

    def before_pipeline(self, model: ir.Model, passes: Sequence[Pass]) -> None: ...

    def should_run(self, pass_: ir.passes.PassBase, index: int) -> bool:
        return True

    def before_pass(self, pass_: ir.passes.PassBase, model: ir.Model) -> None: ...

    def after_pass(
        self, pass_: ir.passes.PassBase, model: ir.Model, result: PassResult, before: ir.Model | None
    ) -> None: ...

    def after_pass_failed(
        self, pass_: ir.passes.PassBase, before: ir.Model | None, error: BaseException
    ) -> None: ...

    def after_pipeline(self, model: ir.Model) -> None: ...


def pass_name(pass_: ir.passes.PassBase) -> str:
    """The registry name of a pass, or its class name for foreign passes."""
    return getattr(pass_, "name", "") or type(pass_).__name__


def pass_text(pass_: ir.passes.PassBase) -> str:
    to_text = getattr(pass_, "to_text", None)
    return to_text() if callable(to_text) else pass_name(pass_)


# ----------------------------------------------------------------------------------------------
# The manager
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class PassRecord:
    """One pass execution as the manager saw it (the report is built from these)."""

    name: str
    text: str
    modified: bool
    seconds: float
    stats: dict[str, Any]
    skipped: bool = False


class PassManager(ir.passes.InPlacePass):
    """Runs a flat or nested list of passes under instruments and one AnalysisManager.

    Foreign `onnx_ir` passes (including onnxscript rewrite passes) run unchanged; they are treated
    as preserving nothing when they report `modified=True`.
    """

    def __init__(
        self,
        passes: Sequence[ir.passes.PassBase],
        *,
        instruments: Sequence[PassInstrument] = (),
        analysis_manager: AnalysisManager | None = None,
    ) -> None:
        self.passes = list(passes)
        self.instruments = list(instruments)
        self.am = analysis_manager or AnalysisManager()
        self.records: list[PassRecord] = []
        self._index = 0

    @classmethod
    def from_pipeline(cls, text: str, **kwargs: Any) -> "PassManager":
        from onnxpress.passes.pipeline import build_pipeline

        return cls(build_pipeline(text), **kwargs)

    def to_text(self) -> str:
        return ",".join(pass_text(p) for p in self.passes)

    def flat_passes(self) -> Iterator[ir.passes.PassBase]:
        for p in self.passes:
            inner = getattr(p, "passes", None)
            if inner is not None and not isinstance(p, Pass):
                yield from inner
            else:
                yield p

    def call(self, model: ir.Model) -> PassResult:
        self.records = []
        self._index = 0
        for inst in self.instruments:
            inst.before_pipeline(model, self.passes)
        token = _CURRENT_AM.set(self.am)
        try:
            modified = self.run_passes(model, self.passes)
        finally:
            _CURRENT_AM.reset(token)
        for inst in self.instruments:
            inst.after_pipeline(model)
        return PassResult(model, modified, {"passes": len(self.records)})

    def run_passes(self, model: ir.Model, passes: Sequence[ir.passes.PassBase]) -> bool:
        """Run `passes` once each; adaptors (fixpoint) call back into this for their bodies."""
        import time

        modified_any = False
        for pass_ in passes:
            adaptor_run = getattr(pass_, "run_with_manager", None)
            if adaptor_run is not None:
                modified_any |= adaptor_run(model, self)
                continue
            index = self._index
            self._index += 1
            if not all(inst.should_run(pass_, index) for inst in self.instruments):
                self.records.append(PassRecord(pass_name(pass_), pass_text(pass_), False, 0.0, {}, skipped=True))
                continue
            before = model.clone() if any(i.needs_model_before for i in self.instruments) else None
            for inst in self.instruments:
                inst.before_pass(pass_, model)
            start = time.perf_counter()
            try:
                result = pass_(model)
            except OnnxpressError as e:
                self._failed(pass_, before, e)
                raise
            except Exception as e:
                self._failed(pass_, before, e)
                done = [r.name for r in self.records if not r.skipped]
                after = f" (after {', '.join(done)})" if done else ""
                raise PassFailure(
                    f"pass '{pass_name(pass_)}' failed{after}: {type(e).__name__}: {e}",
                    pass_name=pass_name(pass_),
                    previous=done,
                ) from e
            seconds = time.perf_counter() - start
            if result.model is not model:
                raise PassFailure(
                    f"pass '{pass_name(pass_)}' returned a new model; onnxpress runs in-place passes only",
                    pass_name=pass_name(pass_),
                )
            if not isinstance(result, PassResult):
                result = PassResult(result.model, result.modified)
            if result.modified:
                preserved = getattr(pass_, "preserved_analyses", frozenset())
                self.am.invalidate(preserved)
            self.records.append(
                PassRecord(pass_name(pass_), pass_text(pass_), bool(result.modified), seconds, dict(result.stats))
            )
            try:
                for inst in self.instruments:
                    inst.after_pass(pass_, model, result, before)
            except OnnxpressError as e:  # a verifier rejected the pass: let the reproducer see it
                self._failed(pass_, before, e)
                raise
            modified_any |= bool(result.modified)
        return modified_any

    def _failed(self, pass_: ir.passes.PassBase, before: ir.Model | None, error: BaseException) -> None:
        for inst in self.instruments:
            try:
                inst.after_pass_failed(pass_, before, error)
            except Exception:  # an instrument must not hide the real failure
                logger.exception("instrument %s failed while handling a pass failure", inst)


def run_passes(
    model: ir.Model,
    passes: Sequence[ir.passes.PassBase],
    *,
    instruments: Sequence[PassInstrument] = (),
) -> PassResult:
    """Convenience: run `passes` over `model` under a fresh PassManager."""
    return PassManager(passes, instruments=instruments)(model)


Callback = Callable[[ir.Model], None]
