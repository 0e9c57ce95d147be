"""QuantizeQdqPass: static post-training quantization in QDQ form, placed where the target fuses it.

`quantize-qdq{activations=uint8 weights=int8 per-channel=true symmetric-activations=false
symmetric-weights=true calibration=auto percentile=99.999 exclude= bias=int32 force=false
range-ratio=100 max-samples=64 upgrade-opset=true fallback=auto target-sqnr=20 max-float=16
fallback-samples=8 fallback-trials=24 max-float-macs=0.05 max-slowdown=0.1 part-timing=true if-slower=warn}`

Steps: refuse models that are already quantized (unless `force`); list the nodes the backend's
`Capabilities.qdq_ops` could run quantized (`placement.candidates`); make sure the opset can
express what is asked (per-channel needs 13, 16-bit needs 21: upgrade with onnx's version converter
when that is safe, else per-tensor / com.microsoft Q/DQ, with a diagnostic); calibrate the tensors
that would set scales (`calibration.calibrate`, streaming; `calibration=auto` derives from the
same histograms the ranges of percentile 99.999, percentile 99.99 and the least-error clip `mse`,
quantizes a clone with each and keeps the one with the best output SQNR on the calibration feeds:
transformers need their outlier channels, CNN detectors want their long tails clipped); decide placement from the ranges
(`placement.place`); with `fallback=auto`, keep float the few tensors whose quantization noise
costs the most output fidelity, measured on clones until the output SQNR on the calibration feeds
reaches `target-sqnr` dB (`fallback.choose_float_nodes`; at most `max-float` tensors and
`max-float-macs` of the quantized MACs, and, timed on the runner, at most `max-slowdown` slower than
the all-quantized model); with `part-timing`, profile the float model and the quantized clone
on the runner (ORT's per-kernel times attributed to nodes, `speed.kernel_times` / `node_times`)
and keep float the kinds of parts whose integer kernels are slower, each only where a timed trial
confirms the model gets faster without losing fidelity or growing (`speed.choose_float_parts`);
time the model quantized so against the float one on
the context's runner (`speed.compare_latency`) and, where it is not faster, warn (`if-slower=warn`)
or leave the model float (`if-slower=keep-float`). Timing runs at `config["timing_threads"]`
(the CLI's `--threads`) intra-op threads, else the runner's; then `qdq_build.Builder` computes every scale and integer
tensor and only then edits the model (activations Q -> DQ; weights as integer initializers + DQ;
constant Add / Mul operands and Gather tables in the activation type; int32 biases).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import onnx_ir as ir

from onnxpress.ir import ops
from onnxpress.ir.io import weight_bytes
from onnxpress.ir.shapes import infer_shapes
from onnxpress.passes.base import Pass, PassResult, Tolerance
from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.manager import PassContext
from onnxpress.passes.quantize import fallback as fb
from onnxpress.passes.quantize.ranges import reclip
from onnxpress.passes.quantize import speed as sp
from onnxpress.passes.quantize.speed import compare_latency
from onnxpress.passes.quantize import placement as pl
from onnxpress.passes.quantize import quant_math as qm
from onnxpress.passes.quantize.calibration import calibrate
from onnxpress.passes.quantize.qdq_build import Builder
from onnxpress.passes.registry import register_pass

__all__ = ["QuantizeQdqPass"]

logger = logging.getLogger(__name__)

ACTIVATION_TYPES = ("uint8", "int8", "uint16", "int16")
WEIGHT_TYPES = ("int8", "uint8")
CALIBRATION_METHODS = ("percentile", "minmax", "entropy", "mse", "auto")
#: What `calibration=auto` chooses among, all derived from one percentile histogram pass.
AUTO_CLIPS = (("percentile", 99.999), ("percentile", 99.99), ("mse", None))
#: Models with more weight bytes than this are not timed (each timed run would take seconds).
TIMING_MAX_BYTES = 1 << 30
BIAS_MODES = ("int32", "float")
FALLBACK_MODES = ("auto", "none")
#: What to do when the quantized model is not faster than the float one on the target (measured).
IF_SLOWER_MODES = ("warn", "keep-float", "ignore")

#: Opsets: QuantizeLinear exists from 10, `axis` (per-channel) from 13, 16-bit types from 21.
OPSET_QDQ, OPSET_PER_CHANNEL, OPSET_16BIT = 10, 13, 21
#: The IR version each of those opsets needs at least.
_IR_FOR_OPSET = {OPSET_PER_CHANNEL: 7, OPSET_16BIT: 10}
#: Models above this many weight bytes are not round-tripped through onnx's version converter.
_UPGRADE_MAX_BYTES = 1 << 30
_MS_DOMAIN = "com.microsoft"
#: ops of ORT's contrib domain that mean "already quantized"
_QUANTIZED_CONTRIB = frozenset({"MatMulNBits", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm", "QAttention"})


@register_pass
class QuantizeQdqPass(Pass):
    """Insert QuantizeLinear / DequantizeLinear pairs that the target backend fuses into int kernels.

    Applies to float32 tensors of the main graph and of subgraphs whose values were calibrated (the
    calibration cannot see inside If / Loop bodies today: those stay float and the stats say so).
    Leaves alone, with a diagnostic and `modified=False`: models that already contain Q/DQ or
    quantized ops (`force=true` to go ahead), contexts without a runner or data, and models whose
    opset predates QuantizeLinear and cannot be upgraded. Lossy: the numeric check compares by
    cosine.
    """

    name = "quantize-qdq"
    tolerance = Tolerance(min_cosine=0.98)

    @dataclasses.dataclass(frozen=True)
    class Options:
        activations: str = "uint8"
        weights: str = "int8"
        per_channel: bool = True
        symmetric_activations: bool = False
        symmetric_weights: bool = True
        calibration: str = "auto"
        percentile: float = 99.999
        exclude: tuple[str, ...] = ()
        bias: str = "int32"
        force: bool = False
        range_ratio: float = 100.0
        max_samples: int | None = 64
        upgrade_opset: bool = True
        fallback: str = "auto"
        target_sqnr: float = 20.0
        max_float: int = 16
        fallback_samples: int = 8
        fallback_trials: int = 24
        max_float_macs: float = 0.05
        if_slower: str = "warn"
        max_slowdown: float | None = 0.1
        part_timing: bool = True

        def __post_init__(self) -> None:
            if not 0.0 <= self.max_float_macs <= 1.0:
                raise ValueError(f"max-float-macs is a fraction in [0, 1], got {self.max_float_macs}")
            if self.max_slowdown is not None and self.max_slowdown < 0:
                raise ValueError(f"max-slowdown is a fraction >= 0 (or none), got {self.max_slowdown}")
            if self.max_float < 0 or self.fallback_samples < 1 or self.fallback_trials < 0:
                raise ValueError("max-float and fallback-trials must be at least 0, fallback-samples at least 1")
            for key, value, allowed in (
                ("fallback", self.fallback, FALLBACK_MODES),
                ("if-slower", self.if_slower, IF_SLOWER_MODES),
                ("activations", self.activations, ACTIVATION_TYPES),
                ("weights", self.weights, WEIGHT_TYPES),
                ("calibration", self.calibration, CALIBRATION_METHODS),
                ("bias", self.bias, BIAS_MODES),
            ):
                if value not in allowed:
                    raise ValueError(f"{key}={value!r}; expected one of {', '.join(allowed)}")
            if not 0.0 < self.percentile <= 100.0:
                raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")
            if self.range_ratio <= 1.0:
                raise ValueError(f"range-ratio must be above 1, got {self.range_ratio}")
            if self.max_samples is not None and self.max_samples < 1:
                raise ValueError("max-samples must be at least 1 (or none for all data)")
            object.__setattr__(self, "exclude", tuple(self.exclude))
            for pattern in self.exclude:
                if pattern.startswith("re:"):
                    try:
                        re.compile(pattern[3:])
                    except re.error as e:
                        raise ValueError(f"exclude pattern {pattern!r} is not a valid regex: {e}") from None

    # ------------------------------------------------------------------------------------------
    def run(self, model: ir.Model, am: Any) -> PassResult:
        opts = self.options
        ctx = PassContext.current()
        caps = ctx.capabilities
        stats: dict[str, Any] = {}

        existing = _quantized_nodes(model)
        if existing and not opts.force:
            ctx.diagnose(f"quantize-qdq: the model already contains {existing} quantization node(s) "
                         "(QuantizeLinear / DequantizeLinear / QLinear*); left alone (force=true to quantize anyway)")
            return PassResult(model, False, {"skipped": "already quantized"})
        if ctx.runner is None or not ctx.feeds(1):
            ctx.diagnose("quantize-qdq: no runner or no calibration data in the context; nothing quantized")
            return PassResult(model, False, {"skipped": "no calibration data"})

        excluded = pl.exclusion_matcher(opts.exclude)
        qdq_ops = caps.qdq_ops if caps is not None else frozenset(pl.RULES)
        if not any(not excluded(n) for n, _ in pl.candidates(model, qdq_ops)):
            return PassResult(model, False, {"skipped": "no quantizable ops"})

        bytes_before = weight_bytes(model)
        setup = self._prepare_opset(model, ctx, stats)
        if setup is None:
            return PassResult(model, bool(stats.get("opset")), stats)
        per_channel, domain = setup
        infer_shapes(model)

        cands = pl.candidates(model, qdq_ops)
        names = pl.tensors_to_calibrate(model, cands, excluded)
        method = "percentile" if opts.calibration == "auto" else opts.calibration
        ranges = calibrate(model, ctx, names, method=method, percentile=opts.percentile,
                           limit=opts.max_samples, cache_dir=ctx.config.get("calibration_cache_dir"))
        float_bias = opts.bias == "float" or bool(caps is not None and caps.float_bias)
        symmetric_acts = opts.symmetric_activations or bool(caps is not None and caps.symmetric_activations_only)

        def place(target: ir.Model, keep_float: dict[ir.Node, str] | None = None, using: Any = None) -> pl.Plan:
            return pl.place(target, pl.candidates(target, qdq_ops), ranges if using is None else using, excluded,
                            range_ratio=opts.range_ratio, per_channel=per_channel, quantize_bias=not float_bias,
                            keep_float=keep_float)

        def quantize_clone(clone: ir.Model, keep_float: dict[ir.Node, str]) -> None:
            Builder(clone, place(clone, keep_float), opts, symmetric_acts, domain).build().apply()

        reference = fb.FloatReference(model, ctx, opts.fallback_samples)  # float outputs, run once if needed
        if opts.calibration == "auto":
            def quantize_with(clone: ir.Model, using: Any) -> None:
                Builder(clone, place(clone, using=using), opts, symmetric_acts, domain).build().apply()

            ranges, stats["calibration_choice"] = self._choose_clipping(model, ctx, ranges, quantize_with, reference)

        plan = place(model)
        keep_float: dict[ir.Node, str] = {}
        if opts.fallback == "auto" and plan.tensors:
            found = fb.choose_float_nodes(
                model, ctx, plan, self._histograms(model, ctx, plan, ranges), quantize_clone,
                act_type=qm.quant_type(opts.activations), symmetric=symmetric_acts, target_db=opts.target_sqnr,
                max_float=opts.max_float, samples=opts.fallback_samples, max_trials=opts.fallback_trials,
                max_float_macs=opts.max_float_macs,
                timer=self._timer(ctx, model) if opts.max_slowdown is not None else None,
                max_slowdown=opts.max_slowdown or 0.0, reference=reference)
            stats["fallback"] = found.stats
            if found.float_nodes:
                plan = place(model, found.float_nodes)
                keep_float = found.float_nodes
        if opts.part_timing and (plan.nodes or plan.shared_nodes):
            slower, stats["part_timing"] = self._time_parts(model, ctx, plan, keep_float, quantize_clone, reference)
            if slower:
                keep_float = {**keep_float, **slower}
                plan = place(model, keep_float)
        if opts.if_slower != "ignore" and (plan.nodes or plan.shared_nodes):
            stats["speed"] = self._speed(model, ctx, keep_float, quantize_clone)
            ratio = stats["speed"].get("ratio")
            if ratio is not None and ratio > 1.0:
                message = (f"quantize-qdq: the quantized model took {ratio:.2f}x the float model's time on this "
                           f"target ({stats['speed']['quantized_ms']:.3g} vs {stats['speed']['float_ms']:.3g} ms, "
                           f"threads: {stats['speed']['threads']}): its integer kernels do not pay here")
                if opts.if_slower == "keep-float":
                    ctx.diagnose(message + "; the model stays float (if-slower=keep-float)")
                    stats["kept_float_model"] = True
                    return PassResult(model, bool(stats.get("opset")), stats)
                ctx.diagnose(message + "; quantized anyway for size (if-slower=keep-float keeps it float)")
        built = Builder(model, plan, opts, symmetric_acts, domain).build()
        built.apply()
        # equal scales / zero points / constant operands (every `/ 6` of a hard-swish) become one
        # initializer each: a few hundred bytes apiece, a visible share of a small model's size
        from onnxpress.passes.cleanup.dedup_initializers import DeduplicateInitializersPass

        merged = DeduplicateInitializersPass().run(model, am).stats.get("merged", 0)

        stats.update(
            ops_quantized=pl.count_by_type(plan.nodes),
            scale_shared_ops=pl.count_by_type(plan.shared_nodes),
            tables_quantized=len(plan.table_gathers),
            activations_folded=pl.count_by_type(plan.folded),
            kept_float=dict(Counter(plan.kept_float.values())),
            kept_float_nodes=dict(list(plan.kept_float.items())[:50]),
            tensors_kept_float=dict(list(plan.tensors_kept_float.items())[:50]),
            tensors_calibrated=len(ranges),
            activation_scales=len(plan.tensors),
            scales=built.scales,
            weights_quantized=len(built.weights),
            constant_operands_quantized=len(built.constants),
            tied_weights=sum(len(w.users) > 1 for w in plan.weights.values()),
            biases_quantized=built.biases,
            biases_kept_float=built.biases_float,
            per_channel=per_channel,
            symmetric_activations=symmetric_acts,
            calibration=opts.calibration,
            weight_bytes_before=bytes_before,
            weight_bytes_after=weight_bytes(model),
            initializers_merged=merged,
        )
        stats["size_ratio"] = round(stats["weight_bytes_after"] / max(bytes_before, 1), 4)
        modified = bool(plan.nodes or plan.shared_nodes or plan.table_gathers or stats.get("opset"))
        logger.info("quantize-qdq: %d op(s) quantized %s, %d kept float, weights %d -> %d bytes",
                    len(plan.nodes), stats["ops_quantized"], len(plan.kept_float),
                    bytes_before, stats["weight_bytes_after"])
        return PassResult(model, modified, stats)

    # ------------------------------------------------------------------------------------------
    def _histograms(self, model: ir.Model, ctx: PassContext, plan: pl.Plan, ranges: dict[str, Any]) -> dict[str, Any]:
        """Signed value histograms of the plan's activation tensors (the fallback ranks by them).

        Percentile calibration already has them; otherwise one percentile-100 pass measures them."""
        opts = self.options
        if opts.calibration in ("percentile", "mse", "auto"):  # signed histograms already
            return ranges
        names = [v.name for v in plan.tensors if v.name in ranges]
        return calibrate(model, ctx, names, method="percentile", percentile=100.0, limit=opts.max_samples,
                         cache_dir=ctx.config.get("calibration_cache_dir"))

    def _choose_clipping(self, model: ir.Model, ctx: PassContext, ranges: dict[str, Any],
                         quantize_with: Any, float_ref: fb.FloatReference) -> tuple[dict[str, Any], dict[str, Any]]:
        """`calibration=auto`: the clipping rule (AUTO_CLIPS, re-derived from the same histograms)
        whose quantized model has the best output SQNR on the fallback feeds; (ranges, stats)."""
        feeds, outputs = float_ref.feeds, float_ref.names
        if not feeds or not outputs:
            return ranges, {"skipped": "no feeds or no float outputs"}
        try:
            reference = float_ref.outputs()
        except RuntimeError as e:  # keep the percentile ranges
            return ranges, {"skipped": f"the runner failed on the float model: {e}"}
        scores: dict[str, float] = {}
        options: dict[str, dict[str, Any]] = {}
        for method, percentile in AUTO_CLIPS:
            label = f"percentile {percentile:g}" if method == "percentile" else method
            options[label] = {name: reclip(r, method, percentile) for name, r in ranges.items()}
            clone = model.clone()
            quantize_with(clone, options[label])
            try:
                scores[label] = round(fb.output_sqnr_db(reference, ctx.runner.run(clone, feeds), outputs), 2)
            except Exception:  # noqa: BLE001 - a candidate the runner rejects is not chosen
                scores[label] = float("-inf")
        chosen = max(scores, key=scores.get)
        logger.info("quantize-qdq: calibration=auto chose %s (output SQNR %s)", chosen, scores)
        return options[chosen], {"chosen": chosen, "sqnr_db": scores, "samples": len(feeds)}

    @staticmethod
    def _timer(ctx: PassContext, model: ir.Model) -> Any:
        """Latency of one clone relative to another on the context's runner, or None (not timed)."""
        if not hasattr(ctx.runner, "session") or weight_bytes(model) > TIMING_MAX_BYTES:
            return None
        feed = ctx.feeds(1)[0]
        threads = timing_threads(ctx)

        def timer(reference: ir.Model, candidate: ir.Model) -> float:
            try:
                return compare_latency(ctx.runner, reference, candidate, feed, budget_s=1.5, threads=threads)["ratio"]
            except Exception:  # noqa: BLE001 - an untimed trial is not held against the tensor
                return 1.0
        return timer

    def _time_parts(self, model: ir.Model, ctx: PassContext, plan: pl.Plan, keep_float: dict[ir.Node, str],
                    quantize_clone: Any, reference: fb.FloatReference) -> tuple[dict[ir.Node, str], dict[str, Any]]:
        """`part-timing`: the kinds of parts whose int8 kernels ORT's profiler finds slower than their
        float ones on this target, each kept float where a timed trial confirms it (`speed`)."""
        timer = self._timer(ctx, model)
        if timer is None:
            return {}, {"skipped": "the runner cannot time sessions" if not hasattr(ctx.runner, "session")
                        else f"weights over {TIMING_MAX_BYTES >> 30} GiB: not timed"}
        # the profile names kernels after nodes: every node needs a unique name
        ir.passes.common.NameFixPass()(model)
        feed = ctx.feeds(1)[0]
        threads = timing_threads(ctx)
        try:
            float_kernels = sp.kernel_times(ctx.runner, model, feed, threads=threads)
            quantized_kernels = sp.kernel_times(ctx.runner, fb.quantized_clone(model, quantize_clone, keep_float), feed,
                                                threads=threads)
        except Exception as e:  # noqa: BLE001 - advisory: a failed profile quantizes every part
            return {}, {"skipped": f"profiling failed: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"}
        float_us, float_other = sp.node_times(float_kernels, model)
        quantized_us, quantized_other = sp.node_times(quantized_kernels, model)
        total = sum(k.us for k in quantized_kernels.values())
        candidates = [n for n in [*plan.nodes, *plan.shared_nodes] if n not in keep_float]
        parts = sp.slower_parts(float_us, quantized_us, candidates, total)
        stats: dict[str, Any] = {
            "profile_us": {"float": round(sum(k.us for k in float_kernels.values()), 1), "quantized": round(total, 1),
                           "unattributed": [round(float_other, 1), round(quantized_other, 1)]},
            "threads": sp.threads_label(ctx.runner, threads),
        }

        def fidelity(clone: ir.Model) -> float:
            try:
                return fb.output_sqnr_db(reference.outputs(), ctx.runner.run(clone, reference.feeds), reference.names)
            except Exception:  # noqa: BLE001 - a trial that does not run is not kept
                return float("-inf")

        def runs_float(trial: ir.Model, nodes: Sequence[ir.Node]) -> bool:
            try:
                kernels = sp.kernel_times(ctx.runner, trial, feed, runs=1, warmup=0, threads=threads)
            except Exception:  # noqa: BLE001 - a trial that does not run is not kept
                return False
            return not set(nodes) & sp.integer_nodes(kernels, model)

        touching = fb.nodes_touching(plan)

        def widen(nodes: Sequence[ir.Node]) -> list[ir.Node]:
            """The nodes that must stay float too for the part's input tensors to get no Q / DQ."""
            return list(dict.fromkeys(other for node in nodes for value in node.inputs
                                      for other in touching.get(value, ())))

        chosen, stats["trials"] = sp.choose_float_parts(
            parts, keep_float, lambda keep: fb.quantized_clone(model, quantize_clone, keep), timer, fidelity,
            runs_float=runs_float, widen=widen)
        stats["kept_float"] = pl.count_by_type(chosen)
        if chosen:
            logger.info("quantize-qdq: %d node(s) stay float, slower in int8 on this target: %s", len(chosen),
                        stats["kept_float"])
        return chosen, stats

    @staticmethod
    def _speed(model: ir.Model, ctx: PassContext, keep_float: dict[ir.Node, str],
               quantize_clone: Any) -> dict[str, Any]:
        """Latency of the model quantized as planned (built on a clone) vs float, on the context's runner."""
        if not hasattr(ctx.runner, "session"):
            return {"skipped": "the runner cannot time sessions"}
        if weight_bytes(model) > TIMING_MAX_BYTES:
            return {"skipped": f"weights over {TIMING_MAX_BYTES >> 30} GiB: not timed"}
        clone = fb.quantized_clone(model, quantize_clone, keep_float)
        try:
            return compare_latency(ctx.runner, model, clone, ctx.feeds(1)[0], threads=timing_threads(ctx))
        except Exception as e:  # noqa: BLE001 - timing is advisory: a failure is reported, not fatal
            return {"skipped": f"timing failed: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"}

    def _prepare_opset(self, model: ir.Model, ctx: PassContext, stats: dict[str, Any]) -> tuple[bool, str] | None:
        """(per_channel, Q/DQ domain) the model's opset allows, upgrading it where asked and safe.

        None when the model cannot hold QuantizeLinear at all."""
        opts = self.options
        sixteen = qm.quant_type(opts.activations).bits == 16
        opset = u.default_opset(model)
        wanted = OPSET_16BIT if sixteen else OPSET_PER_CHANNEL if opts.per_channel else OPSET_QDQ
        if opset < wanted and opts.upgrade_opset:
            problem = upgrade_opset(model, wanted)
            if problem is None:
                stats["opset"] = f"{opset}->{wanted}"
                logger.info("quantize-qdq: opset upgraded %d -> %d", opset, wanted)
                opset = wanted
            else:
                ctx.diagnose(f"quantize-qdq: could not upgrade opset {opset} to {wanted} ({problem})")
        if opset < OPSET_QDQ:
            ctx.diagnose(f"quantize-qdq: opset {opset} has no QuantizeLinear; nothing quantized")
            return None
        per_channel = opts.per_channel
        if per_channel and opset < OPSET_PER_CHANNEL:
            ctx.diagnose(f"quantize-qdq: opset {opset} < 13 has no per-channel DequantizeLinear; "
                         "weights quantized per tensor")
            per_channel = False
        domain = ""
        if sixteen and opset < OPSET_16BIT:
            ctx.diagnose(f"quantize-qdq: opset {opset} < 21 has no 16-bit QuantizeLinear; "
                         "using ONNX Runtime's com.microsoft QuantizeLinear / DequantizeLinear")
            domain = _MS_DOMAIN
            model.opset_imports.setdefault(_MS_DOMAIN, 1)
        return per_channel, domain


# ----------------------------------------------------------------------------------------------
# Opset
# ----------------------------------------------------------------------------------------------
def upgrade_opset(model: ir.Model, target: int) -> str | None:
    """Convert `model` in place to default-domain opset `target`; the reason it was not, or None.

    Safe only for models without local functions and under 1 GiB of weights (the converter works
    on a serialized copy). Initializers keep their original (possibly memory-mapped) tensors."""
    import onnx
    import onnx.version_converter

    if model.functions:
        return "the model has local functions"
    if weight_bytes(model) > _UPGRADE_MAX_BYTES:
        return "the model is too large to convert in memory"
    try:
        proto = ir.serde.serialize_model(model)
        converted = onnx.version_converter.convert_version(proto, target)
        converted.ir_version = max(converted.ir_version, _IR_FOR_OPSET.get(target, 7))
        onnx.checker.check_model(converted)
        new = ir.serde.deserialize_model(converted)
    except Exception as e:  # the converter and checker raise many types for ops they cannot map
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    old = model.graph.initializers
    for name, value in new.graph.initializers.items():
        before = old.get(name)
        if before is not None and before.const_value is not None and before.dtype == value.dtype \
                and before.shape == value.shape:
            value.const_value = before.const_value
    model.graph = new.graph
    model.ir_version = new.ir_version
    return None


def timing_threads(ctx: PassContext) -> int | None:
    """The intra-op thread count speed checks time at: `config["timing_threads"]` (the CLI's
    `--threads`), else None (the runner's own setting)."""
    value = ctx.config.get("timing_threads")
    return int(value) if value else None


def _quantized_nodes(model: ir.Model) -> int:
    count = 0
    for graph in u.all_graphs(model):
        for node in graph:
            if ops.QUANTIZATION in ops.op_metatypes(node.op_type, node.domain) or (
                node.domain == _MS_DOMAIN and (node.op_type.startswith("QLinear") or node.op_type in _QUANTIZED_CONTRIB)
            ):
                count += 1
    return count
