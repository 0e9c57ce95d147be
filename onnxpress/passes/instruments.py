"""Instruments: hooks the PassManager calls around every pass, each behind one CLI flag.

* `TimingInstrument` — wall time per pass and in total.
* `StatisticsInstrument` — each pass's stats and the node count before and after it.
* `VerifyEachInstrument` — the structural verifier after every pass; new problems name the pass.
* `NumericCheckInstrument` — runs the model before and after each modifying pass on the same feeds
  and compares the outputs with the pass's tolerance; the first pass out of tolerance is named.
* `PrintIRInstrument` / `DumpIRInstrument` — the IR as text after each change, or as
  `NN-pass.onnx` files.
* `ReproducerInstrument` — on a failure, writes the model before the failing pass and the one-pass
  pipeline that breaks it.
* `BisectInstrument` — runs only the first N pass executions, to find the one that breaks a model.

Order matters only for failures: put `ReproducerInstrument` anywhere — the manager tells every
instrument about a failure raised by a pass or by another instrument's `after_pass`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any

import onnx_ir as ir

from onnxpress.errors import InputError, VerificationError
from onnxpress.passes.base import LOSSLESS, Pass, PassResult, Tolerance
from onnxpress.passes.manager import PassInstrument, pass_name, pass_text

__all__ = [
    "TimingInstrument",
    "StatisticsInstrument",
    "PassStatistics",
    "VerifyEachInstrument",
    "NumericCheckInstrument",
    "PrintIRInstrument",
    "DumpIRInstrument",
    "ReproducerInstrument",
    "BisectInstrument",
    "count_nodes",
]

logger = logging.getLogger(__name__)


def count_nodes(model: ir.Model) -> int:
    """Nodes in the main graph and every subgraph."""
    return sum(1 for _ in ir.traversal.RecursiveGraphIterator(model.graph))


def _save(model: ir.Model, path: str) -> None:
    from onnxpress.ir.io import save

    save(model, path)


def _file_stem(index: int, name: str) -> str:
    return f"{index:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}"


def _passes_before(done: Sequence[str]) -> str:
    return f"passes before: {', '.join(done)}" if done else "no passes before"


class _History(PassInstrument):
    """Remembers the names of the passes that completed, for messages that name the culprit."""

    def __init__(self) -> None:
        self.done: list[str] = []
        self._done_at_start = 0

    def before_pipeline(self, model: ir.Model, passes: Sequence[ir.passes.PassBase]) -> None:
        self.done = []
        self._done_at_start = 0

    def before_pass(self, pass_: ir.passes.PassBase, model: ir.Model) -> None:
        self._done_at_start = len(self.done)

    def _finished(self, pass_: ir.passes.PassBase) -> None:
        self.done.append(pass_name(pass_))

    def done_before_current(self) -> list[str]:
        """The passes completed before the current one (even if it was already recorded)."""
        return self.done[: self._done_at_start]


# ----------------------------------------------------------------------------------------------
# Timing and statistics
# ----------------------------------------------------------------------------------------------
class TimingInstrument(PassInstrument):
    """Wall time of every pass execution (`timings`) and of the whole pipeline (`total`)."""

    def __init__(self) -> None:
        self.timings: list[tuple[str, float]] = []
        self.total = 0.0
        self._pipeline_start = 0.0
        self._pass_start = 0.0

    def before_pipeline(self, model: ir.Model, passes: Sequence[ir.passes.PassBase]) -> None:
        self.timings = []
        self._pipeline_start = time.perf_counter()

    def before_pass(self, pass_: ir.passes.PassBase, model: ir.Model) -> None:
        self._pass_start = time.perf_counter()

    def after_pass(self, pass_: ir.passes.PassBase, model: ir.Model, result: PassResult, before: ir.Model | None) -> None:
        self._stop(pass_)

    def after_pass_failed(self, pass_: ir.passes.PassBase, before: ir.Model | None, error: BaseException) -> None:
        self._stop(pass_)  # no-op when a later instrument rejected a pass already timed

    def _stop(self, pass_: ir.passes.PassBase) -> None:
        if self._pass_start:
            self.timings.append((pass_name(pass_), time.perf_counter() - self._pass_start))
            self._pass_start = 0.0

    def after_pipeline(self, model: ir.Model) -> None:
        self.total = time.perf_counter() - self._pipeline_start
        logger.info("pipeline took %.3f s over %d pass execution(s)", self.total, len(self.timings))

    def by_pass(self) -> dict[str, float]:
        """Seconds summed per pass name (a pass inside a fixpoint runs several times)."""
        out: dict[str, float] = {}
        for name, seconds in self.timings:
            out[name] = out.get(name, 0.0) + seconds
        return out


@dataclasses.dataclass
class PassStatistics:
    name: str
    modified: bool
    nodes_before: int
    nodes_after: int
    stats: dict[str, Any]


class StatisticsInstrument(PassInstrument):
    """Every pass's `stats` and the node count before and after it (`entries`, `totals()`)."""

    def __init__(self) -> None:
        self.entries: list[PassStatistics] = []
        self._nodes_before = 0

    def before_pipeline(self, model: ir.Model, passes: Sequence[ir.passes.PassBase]) -> None:
        self.entries = []

    def before_pass(self, pass_: ir.passes.PassBase, model: ir.Model) -> None:
        self._nodes_before = count_nodes(model)

    def after_pass(self, pass_: ir.passes.PassBase, model: ir.Model, result: PassResult, before: ir.Model | None) -> None:
        stats = dict(getattr(result, "stats", {}) or {})
        nodes_after = count_nodes(model) if result.modified else self._nodes_before
        self.entries.append(PassStatistics(pass_name(pass_), bool(result.modified), self._nodes_before, nodes_after, stats))
        if result.modified:
            logger.info("%s: %d -> %d nodes %s", pass_name(pass_), self._nodes_before, nodes_after, stats or "")

    def totals(self) -> dict[str, float]:
        """Numeric stats summed over all executions, keyed `pass.stat`."""
        out: dict[str, float] = {}
        for entry in self.entries:
            for key, value in entry.stats.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    full = f"{entry.name}.{key}"
                    out[full] = out.get(full, 0) + value
        return out


# ----------------------------------------------------------------------------------------------
# Verifiers
# ----------------------------------------------------------------------------------------------
class VerifyEachInstrument(_History):
    """Runs the structural verifier after every pass; raises `VerificationError` naming the pass.

    Problems the input model already had are reported once as a warning and never blamed on a pass.
    """

    def __init__(self, verify: Callable[[ir.Model], list[str]] | None = None) -> None:
        super().__init__()
        self._verify = verify
        self._known: set[str] = set()

    def _problems(self, model: ir.Model) -> list[str]:
        if self._verify is None:
            from onnxpress.ir.verify import verify_structure

            self._verify = verify_structure
        return list(self._verify(model))

    def before_pipeline(self, model: ir.Model, passes: Sequence[ir.passes.PassBase]) -> None:
        super().before_pipeline(model, passes)
        problems = self._problems(model)
        self._known = set(problems)
        if problems:
            logger.warning("the input model already fails verification: %s", "; ".join(problems[:5]))

    def after_pass(self, pass_: ir.passes.PassBase, model: ir.Model, result: PassResult, before: ir.Model | None) -> None:
        new = [p for p in self._problems(model) if p not in self._known]
        if new:
            more = f" (+{len(new) - 3} more)" if len(new) > 3 else ""
            raise VerificationError(
                f"verification failed after pass '{pass_name(pass_)}' ({_passes_before(self.done)}): "
                f"{'; '.join(new[:3])}{more}",
                pass_name=pass_name(pass_),
                details={"problems": new, "passes_before": list(self.done)},
            )
        self._finished(pass_)


@dataclasses.dataclass
class NumericCheck:
    """One numeric check: the pass, whether it passed, and the worst output."""

    pass_name: str
    ok: bool
    worst: str


class NumericCheckInstrument(_History):
    """Runs the model before and after every modifying pass and compares the outputs.

    The tolerance is `tolerances[pass name]` when given, else the pass's own `tolerance`, else
    (foreign passes) `LOSSLESS`. The outputs after one pass are the reference for the next, so each
    model state runs once; passes that report `modified=False` are not checked.
    """

    needs_model_before = True

    def __init__(
        self,
        runner: Any,
        feeds: Iterable[Mapping[str, Any]] | Any,
        tolerances: Mapping[str, Tolerance] | None = None,
        *,
        max_samples: int | None = 8,
    ) -> None:
        super().__init__()
        self.runner = runner
        source = feeds.feeds() if hasattr(feeds, "feeds") else feeds
        self.feeds: list[dict[str, Any]] = []
        for feed in source:
            if max_samples is not None and len(self.feeds) >= max_samples:
                break
            self.feeds.append(dict(feed))
        if not self.feeds:
            raise InputError("the numeric check needs at least one input sample")
        self.tolerances = dict(tolerances or {})
        self.checks: list[NumericCheck] = []
        self._reference: list[dict[str, Any]] | None = None

    def before_pipeline(self, model: ir.Model, passes: Sequence[ir.passes.PassBase]) -> None:
        super().before_pipeline(model, passes)
        self.checks = []
        self._reference = None

    def tolerance_for(self, pass_: ir.passes.PassBase) -> Tolerance:
        override = self.tolerances.get(pass_name(pass_))
        if override is not None:
            return override
        return pass_.tolerance if isinstance(pass_, Pass) else LOSSLESS

    def after_pass(self, pass_: ir.passes.PassBase, model: ir.Model, result: PassResult, before: ir.Model | None) -> None:
        from onnxpress.passes.fidelity import within_tolerance

        name = pass_name(pass_)
        if not result.modified:
            self._finished(pass_)
            return
        context = f"pass '{name}' ({_passes_before(self.done)})"
        if self._reference is None:
            if before is None:
                raise VerificationError(f"numeric check after {context}: the manager kept no model before the pass")
            try:
                self._reference = self.runner.run(before, self.feeds)
            except InputError as e:
                raise InputError(f"numeric check cannot run the model before {context}: {e}") from e
        try:
            candidate = self.runner.run(model, self.feeds)
        except InputError as e:
            raise VerificationError(f"numeric check failed after {context}: {e}", pass_name=name) from e
        tol = self.tolerance_for(pass_)
        ok, worst = within_tolerance(self._reference, candidate, tol)
        self.checks.append(NumericCheck(name, ok, worst))
        if not ok:
            raise VerificationError(
                f"numeric check failed after {context}: {worst}",
                pass_name=name,
                details={"passes_before": list(self.done), "tolerance": dataclasses.asdict(tol)},
            )
        logger.debug("numeric check after '%s': %s", name, worst)
        self._reference = candidate
        self._finished(pass_)


# ----------------------------------------------------------------------------------------------
# Looking at the IR
# ----------------------------------------------------------------------------------------------
class PrintIRInstrument(PassInstrument):
    """Writes the IR as text after each pass (only after passes that changed it, by default).

    `sink` is a text stream (anything with `write`) or a callable taking the text.
    """

    def __init__(self, sink: IO[str] | Callable[[str], Any], only_changed: bool = True) -> None:
        self.sink = sink
        self.only_changed = only_changed

    def after_pass(self, pass_: ir.passes.PassBase, model: ir.Model, result: PassResult, before: ir.Model | None) -> None:
        if self.only_changed and not result.modified:
            return
        text = f"// ----- IR after {pass_text(pass_)} -----\n{model}\n"
        write = getattr(self.sink, "write", None)
        if write is not None:
            write(text)
        else:
            self.sink(text)  # type: ignore[operator]


class DumpIRInstrument(PassInstrument):
    """Saves `00-input.onnx`, then `NN-<pass>.onnx` after every pass execution that changed the model."""

    def __init__(self, directory: str | os.PathLike, include_input: bool = True) -> None:
        self.directory = os.fspath(directory)
        self.include_input = include_input
        self.written: list[str] = []
        self._count = 0

    def before_pipeline(self, model: ir.Model, passes: Sequence[ir.passes.PassBase]) -> None:
        os.makedirs(self.directory, exist_ok=True)
        self.written = []
        self._count = 0
        if self.include_input:
            self._write(model, "input")

    def before_pass(self, pass_: ir.passes.PassBase, model: ir.Model) -> None:
        self._count += 1

    def after_pass(self, pass_: ir.passes.PassBase, model: ir.Model, result: PassResult, before: ir.Model | None) -> None:
        if result.modified:
            self._write(model, pass_name(pass_))

    def _write(self, model: ir.Model, label: str) -> None:
        path = os.path.join(self.directory, _file_stem(self._count, label) + ".onnx")
        _save(model, path)
        self.written.append(path)
        logger.debug("dumped IR to %s", path)


# ----------------------------------------------------------------------------------------------
# Failures
# ----------------------------------------------------------------------------------------------
_README = """\
onnxpress crash reproducer

Pass '{name}' failed{previous}:
    {error}

model.onnx    the model just before the failing pass
pipeline.txt  the one-pass pipeline that fails on it

Reproduce with:
    optimize model.onnx --pipeline "$(cat pipeline.txt)"
{flags}"""


class ReproducerInstrument(_History):
    """On a failure, writes `model.onnx` (before the failing pass), `pipeline.txt` and `README.txt`."""

    needs_model_before = True

    def __init__(self, directory: str | os.PathLike, *, flags: str = "") -> None:
        super().__init__()
        self.directory = os.fspath(directory)
        self.flags = flags
        self.written: str | None = None

    def before_pipeline(self, model: ir.Model, passes: Sequence[ir.passes.PassBase]) -> None:
        super().before_pipeline(model, passes)
        self.written = None

    def after_pass(self, pass_: ir.passes.PassBase, model: ir.Model, result: PassResult, before: ir.Model | None) -> None:
        self._finished(pass_)

    def after_pass_failed(self, pass_: ir.passes.PassBase, before: ir.Model | None, error: BaseException) -> None:
        if self.written is not None:  # only the first failure; the pipeline stops there
            return
        os.makedirs(self.directory, exist_ok=True)
        name = pass_name(pass_)
        if before is not None:
            _save(before, os.path.join(self.directory, "model.onnx"))
        else:
            logger.warning("no model before pass '%s' was kept; the reproducer holds only the pipeline", name)
        with open(os.path.join(self.directory, "pipeline.txt"), "w", encoding="utf-8") as f:
            f.write(pass_text(pass_) + "\n")
        done = self.done_before_current()
        previous = f" (after {', '.join(done)})" if done else ""
        flags = f"adding the flags that caught it: {self.flags}\n" if self.flags else ""
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        with open(os.path.join(self.directory, "README.txt"), "w", encoding="utf-8") as f:
            f.write(_README.format(name=name, previous=previous, error=message, flags=flags))
        self.written = self.directory
        logger.warning("wrote a reproducer for pass '%s' to %s", name, self.directory)


class BisectInstrument(PassInstrument):
    """Runs only pass executions with index < `limit` (0-based, counted across nested pipelines).

    Lower the limit until the model stops breaking: the last pass run is the culprit.
    """

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise InputError(f"bisect limit must be >= 0, got {limit}")
        self.limit = limit
        self.ran: list[tuple[int, str]] = []
        self.skipped: list[tuple[int, str]] = []

    def before_pipeline(self, model: ir.Model, passes: Sequence[ir.passes.PassBase]) -> None:
        self.ran = []
        self.skipped = []

    def should_run(self, pass_: ir.passes.PassBase, index: int) -> bool:
        if index < self.limit:
            self.ran.append((index, pass_name(pass_)))
            return True
        self.skipped.append((index, pass_name(pass_)))
        logger.info("bisect: skipping pass #%d '%s'", index, pass_name(pass_))
        return False

    def after_pipeline(self, model: ir.Model) -> None:
        last = f"#{self.ran[-1][0]} '{self.ran[-1][1]}'" if self.ran else "none"
        logger.info(
            "bisect limit %d: ran %d pass execution(s), last %s; skipped %d",
            self.limit,
            len(self.ran),
            last,
            len(self.skipped),
        )
