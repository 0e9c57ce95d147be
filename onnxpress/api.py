"""The Python API: `load`, `save`, `optimize`. The CLI is a thin layer over `optimize`.

`optimize` loads the model (never modifying the caller's object or file), builds a PassContext
for the target (runner, data, capabilities), runs the pipeline under the instruments asked for,
measures fidelity against the original on the input data, and returns the optimized model with a
`Report`. Writing the output is atomic.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import onnx_ir as ir

from onnxpress.errors import InputError, OnnxpressError
from onnxpress.passes.base import Tolerance
from onnxpress.passes.manager import PassContext, PassInstrument, PassManager
from onnxpress.passes.pipeline import build_pipeline

__all__ = ["RANDOM_DATA", "Result", "load", "save", "optimize", "replay", "resolve_pipeline", "VERIFY_MODES",
           "PLACEMENT_MODES"]

logger = logging.getLogger(__name__)

VERIFY_MODES = ("auto", "none", "structure", "numeric")
#: `placement=`: "auto" checks models up to 1 GiB of weights where the target's EP is installed.
PLACEMENT_MODES = ("auto", "on", "off")

#: `data=RANDOM_DATA` asks for seeded random feeds (for calibration without user data), and says so
#: loudly in the report.
RANDOM_DATA = "random"

#: How many feeds the per-pass numeric check uses (the final fidelity uses all of them).
PER_PASS_FEEDS = 2


def load(source: Any, *, base_dir: str | None = None) -> ir.Model:
    """Load a model from a path, bytes, `onnx.ModelProto` or `onnx_ir.Model` (weights stay lazy)."""
    from onnxpress.ir.io import load as _load

    return _load(source, base_dir=base_dir)


def save(model: ir.Model, path: str | os.PathLike, *, external_data: bool | None = None) -> None:
    """Save atomically; external data when asked or when the weights exceed 2 GB."""
    from onnxpress.ir.io import save as _save

    _save(model, os.fspath(path), external_data=external_data)


@dataclasses.dataclass
class Result:
    """What `optimize` returns: the optimized model and the report of the run."""

    model: ir.Model
    report: Any  # onnxpress.report.Report

    def save(self, path: str | os.PathLike, *, external_data: bool | None = None) -> None:
        save(self.model, path, external_data=external_data)


def resolve_pipeline(pipeline: str | None = None, *, level: int | None = None, target: str = "cpu",
                     fragments: Sequence[str] = ()) -> str:
    """The full pipeline text: an explicit pipeline, else the target's -O level, then fragments;
    on targets with legalization (every built-in one but `cpu`) its prelude and tail around them."""
    from onnxpress.backends.base import get_backend

    backend = get_backend(target)
    compose = getattr(backend, "compose", None)
    if compose is not None:  # the target's legalization goes around the body and the fragments
        return compose(pipeline, 2 if level is None else level, list(fragments))
    if pipeline is None:
        pipeline = backend.pipeline(2 if level is None else level)
    parts = [p for p in (pipeline, *fragments) if p]
    return ",".join(parts)


def optimize(
    model: Any,
    pipeline: str | None = None,
    *,
    data: Any = None,
    verify: str = "auto",
    target: str = "cpu",
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    output: str | os.PathLike | None = None,
    external_data: bool | None = None,
    tolerances: Mapping[str, Tolerance] | None = None,
    dump_dir: str | None = None,
    reproducer_dir: str | None = None,
    bisect_limit: int | None = None,
    print_ir: Callable[[str], None] | None = None,
    instruments: Sequence[PassInstrument] = (),
    num_random: int = 4,
    config: Mapping[str, Any] | None = None,
    placement: str = "auto",
) -> Result:
    """Run `pipeline` (default: the target's -O2) over `model` and return the result with a report.

    Args:
        model: a path, bytes, `onnx.ModelProto` or `onnx_ir.Model` (never modified: an
            `ir.Model` is cloned, weights shared).
        pipeline: pipeline text such as ``"O2"`` or ``"fold-constants,cse,dce"``.
        data: input feeds (path to .npz / folder, ``"pkg.mod:function"``, a callable, a FeedSource)
            for numeric verification and data-aware passes; ``None`` uses seeded random feeds
            when a numeric check is asked for; ``"random"`` gives data-aware passes seeded random
            feeds, with a warning in the report.
        verify: ``"none"``, ``"structure"`` (verifier after every pass), ``"numeric"`` (also
            outputs compared to the pre-pass model after every pass that changed something, and
            the final fidelity), or ``"auto"`` (numeric when `data` is given, else structure).
        output: where to save the result (atomically); ``None`` keeps it in memory only.
        placement: ``"auto"`` / ``"on"``: after the pipeline, run the result once in a profiled
            session on the target's EP (where this onnxruntime has it) and report which provider
            ran each node (``"auto"`` skips models over 1 GiB of weights); ``"off"``: don't.

    The result carries its recipe in `metadata_props` (backends/recipe.py): the expanded pipeline,
    the target, the onnxpress version and the input's sha256; `replay` re-runs it.
    """
    from onnxpress.backends.base import get_backend
    from onnxpress.passes import instruments as inst
    from onnxpress.report import Report, summarize_model

    if verify not in VERIFY_MODES:
        raise InputError(f"unknown verify mode '{verify}'; choose one of {', '.join(VERIFY_MODES)}")
    if placement not in PLACEMENT_MODES:
        raise InputError(f"unknown placement mode '{placement}'; choose one of {', '.join(PLACEMENT_MODES)}")
    start = time.perf_counter()
    input_path = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
    if output is not None and input_path is not None and _same_file(input_path, os.fspath(output)):
        raise InputError(f"refusing to overwrite the input model {input_path}; choose another output")

    original = load(model)  # an ir.Model comes back as is; it is never modified
    working = original.clone()  # weights shared, never written into
    if input_shapes:
        from onnxpress.ir.shapes import set_input_shapes

        set_input_shapes(working, {k: list(v) for k, v in input_shapes.items()})

    backend = get_backend(target)
    text = pipeline if pipeline is not None else resolve_pipeline(target=target)
    passes = build_pipeline(text)
    expanded = ",".join(getattr(p, "to_text", lambda p=p: type(p).__name__)() for p in passes)

    mode = verify
    if mode == "auto":
        mode = "numeric" if data is not None else "structure"
    source = None
    random_data = False
    runner = backend.runner()
    diagnostics: list[str] = []
    if data is not None or mode == "numeric":
        from onnxpress.data import load_data

        random_data = isinstance(data, str) and data == RANDOM_DATA
        source = load_data(None if random_data else data, working, input_shapes=dict(input_shapes or {}),
                           num_random=num_random)
        if random_data:
            diagnostics.append(
                "WARNING: calibrated on seeded RANDOM inputs (no --data): quantization scales and "
                "data-aware choices may not fit real inputs; pass --data with representative samples"
            )

    ctx = PassContext(target=target, capabilities=backend.capabilities, runner=runner, data=source,
                      config=dict(config or {}), diagnostics=diagnostics)

    timing = inst.TimingInstrument()
    stats = inst.StatisticsInstrument()
    chain: list[PassInstrument] = [timing, stats]
    if bisect_limit is not None:
        chain.append(inst.BisectInstrument(bisect_limit))
    if mode in ("structure", "numeric"):
        chain.append(inst.VerifyEachInstrument())
    reference = None
    if mode == "numeric":
        feeds = ctx.feeds()
        reference = _run_or_none(runner, original, feeds, diagnostics, explicit=(verify == "numeric"))
        if reference is not None:
            chain.append(inst.NumericCheckInstrument(runner, feeds[:PER_PASS_FEEDS], dict(tolerances or {})))
    if print_ir is not None:
        chain.append(inst.PrintIRInstrument(print_ir))
    if dump_dir is not None:
        chain.append(inst.DumpIRInstrument(dump_dir))
    if reproducer_dir is not None:
        flags = f"--verify {mode}"
        if isinstance(data, (str, os.PathLike)):
            flags += f" --data {os.fspath(data)}"
        chain.append(inst.ReproducerInstrument(reproducer_dir, flags=flags))
    chain.extend(instruments)

    from onnxpress.ir.shapes import infer_shapes

    shaped = working.clone()  # the input as given has no inner shapes: infer them to count MACs
    infer_shapes(shaped)
    before_summary = summarize_model(shaped, input_path)
    del shaped
    manager = PassManager(passes, instruments=chain)
    with ctx:
        manager(working)

    fidelity = None
    if reference is not None:
        from onnxpress.passes.fidelity import compare_outputs

        got = runner.run(working, ctx.feeds())
        fidelity = compare_outputs(reference, got)

    from onnxpress.backends.recipe import Recipe, input_digest, record_recipe
    from onnxpress.report import onnxpress_version

    record_recipe(working, Recipe(
        pipeline=expanded, target=target, version=onnxpress_version(),
        input_sha256=input_digest(model if input_path is None else input_path, original),
        input_shapes={k: list(v) for k, v in input_shapes.items()} if input_shapes else None,
        data=RANDOM_DATA if random_data else None,
    ))
    if output is not None:
        backend.emit(working, os.fspath(output), external_data=external_data)
    placed = _check_placement(backend, working, placement, ctx, input_shapes)
    after_summary = summarize_model(working, os.fspath(output) if output is not None else None)
    report = Report(
        input_path=input_path,
        output_path=os.fspath(output) if output is not None else None,
        pipeline=expanded,
        target=target,
        verify=mode,
        before=before_summary,
        after=after_summary,
        passes=manager.records,
        fidelity=fidelity,
        diagnostics=diagnostics,
        seconds=time.perf_counter() - start,
        data=source.describe() if source is not None and hasattr(source, "describe") else None,
        placement=placed,
    )
    return Result(working, report)


def replay(recipe_from: Any, model: Any, *, input_shapes: Mapping[str, Sequence[int]] | None = None,
           data: Any = None, **kwargs: Any) -> Result:
    """Re-run the recipe recorded in an emitted model (a path or `ir.Model`) on another input.

    The recorded pipeline and target are used as they are; recorded input shapes unless
    `input_shapes` is given; seeded random calibration data if the recipe was made with it and no
    `data` is given. Other keyword arguments go to `optimize`.
    """
    from onnxpress.backends.recipe import read_recipe

    recipe = read_recipe(recipe_from)
    if recipe.version != "unknown":
        from onnxpress.report import onnxpress_version

        if recipe.version != onnxpress_version():
            logger.warning("the recipe was written by onnxpress %s, this is %s: the output may differ",
                           recipe.version, onnxpress_version())
    if data is None and recipe.data == RANDOM_DATA:
        data = RANDOM_DATA
    shapes = input_shapes if input_shapes is not None else recipe.input_shapes
    return optimize(model, recipe.pipeline, target=recipe.target, input_shapes=shapes, data=data, **kwargs)


def _check_placement(backend: Any, model: ir.Model, mode: str, ctx: PassContext,
                     input_shapes: Mapping[str, Sequence[int]] | None) -> dict[str, Any] | None:
    """Where the target's EP ran each node (None when not asked); never fails the run."""
    check = getattr(backend, "check_placement", None)
    if mode == "off" or check is None:
        return None
    from onnxpress.backends.placement import PLACEMENT_MAX_BYTES
    from onnxpress.ir.io import weight_bytes

    provider = backend.capabilities.providers[0]
    if mode == "auto" and weight_bytes(model) > PLACEMENT_MAX_BYTES:
        return {"checked": False, "target_provider": provider,
                "reason": "model over 1 GiB of weights (ask for placement='on' to check anyway)"}
    try:
        feeds = ctx.feeds(1)
        if not feeds:
            from onnxpress.data import load_data

            feeds = load_data(None, model, input_shapes=dict(input_shapes or {}), num_random=1).take(1)
        return check(model, feeds)
    except Exception as e:  # the check reports; it must never cost the user the optimized model
        logger.debug("placement check failed", exc_info=True)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return {"checked": False, "target_provider": provider, "reason": f"could not run the model: {reason}"}


def _run_or_none(runner: Any, model: ir.Model, feeds: list, diagnostics: list[str], explicit: bool):
    """Reference outputs of the original model; None (with a diagnostic) if ORT cannot run it."""
    try:
        return runner.run(model, feeds)
    except OnnxpressError as e:
        if explicit:
            raise InputError(f"numeric verification impossible: {e}") from None
        diagnostics.append(f"numeric verification skipped: {e}")
        return None


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)
