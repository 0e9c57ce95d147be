"""QuantizeWeightsPass: weight-only blockwise quantization of MatMul weights (and embeddings).

`quantize-weights{bits=4 block-size=32 symmetric=true format=qdq method=rtn embeddings=false}`
stores each constant [K, N] MatMul weight as 4- or 8-bit codes with one scale (and zero point) per
block of `block-size` rows along K; activations stay float. The math is in `blockwise`.

Two forms:
* `format=qdq`: an opset-21 `DequantizeLinear(codes, scale, zero_point, axis=0, block_size)` feeds
  the unchanged MatMul; codes are int4 / int8 (symmetric) or uint4 / uint8 with zero points. The
  model's default opset is upgraded to 21 first when it is older. ONNX Runtime's CPU EP fuses the
  pair into `MatMulNBits` (with its default `session.qdq_matmulnbits_accuracy_level` of 4, i.e. int8
  activations; set that session option to 0 for float compute).
* `format=matmulnbits`: `com.microsoft.MatMulNBits` directly (no opset change); `accuracy-level`
  sets its attribute (0 leaves it unset: float compute).

Methods: `rtn` rounds each block to nearest; `gptq` and `awq` read calibration data from the
PassContext and minimise each layer's output error ‖X(W − Ŵ)‖ on it (layers go in waves on the
partly quantized model, as GPTQ does; `sequential=false` collects all statistics in one run on the
float model). GPTQ keeps RTN's result for a layer where RTN happens to do better on the data; AWQ
inserts `Mul(x, 1/s)` before the layer so `x·W` is unchanged up to rounding. Without a runner or
data, both fall back to RTN with a diagnostic.

With `embeddings=true`, constant tables read by `Gather(table, ids, axis=0)` are quantized with
blocks along the feature axis (`DequantizeLinear(axis=1)` + Gather, in both formats, so it needs
opset 21 too). A weight shared by several MatMuls is quantized once (its Grams summed for the data-
aware methods) and shared; a weight with any other reader is left alone. Gemm, nodes inside
subgraphs or functions, non-float and non-2-D weights are skipped and counted in
`stats["skip_reasons"]`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import ml_dtypes
import numpy as np
import onnx_ir as ir

from onnxpress.passes.base import Pass, PassResult, Tolerance
from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.lowrank._calibration import ready
from onnxpress.passes.manager import PassContext
from onnxpress.passes.pruning.calibration import ChannelStats, GramAccumulator, iter_values
from onnxpress.passes.quantize import blockwise as bw
from onnxpress.passes.quantize.weight_groups import WeightGroup, drop_if_unused, weight_groups
from onnxpress.passes.registry import register_pass

__all__ = [
    "LayerStats",
    "QuantizeWeightsPass",
    "WeightGroup",
    "drop_if_unused",
    "ensure_opset",
    "input_statistics",
    "weight_groups",
]

logger = logging.getLogger(__name__)

MS_DOMAIN = "com.microsoft"
#: Opset of blocked DequantizeLinear and of the int4 / uint4 types.
BLOCKED_DQ_OPSET = 21
#: IR version that introduced int4 / uint4.
INT4_IR_VERSION = 10


# ----------------------------------------------------------------------------------------------
# Opset
# ----------------------------------------------------------------------------------------------
def ensure_opset(model: ir.Model, version: int, pass_name: str) -> tuple[int, int] | None:
    """Raise the default-domain opset to at least `version`; (before, after) when changed.

    Uses onnxscript's version converter (falling back to onnx's); raises on failure, before which
    nothing has been changed only where the converter itself is all-or-nothing, so callers convert
    before they edit anything else.
    """
    before = u.default_opset(model)
    if model.ir_version < INT4_IR_VERSION:
        model.ir_version = INT4_IR_VERSION
    if before >= version:
        return None
    import onnxscript.version_converter as vc

    logger.info("%s: upgrading the default opset %d -> %d", pass_name, before, version)
    vc.convert_version(model, version, fallback=True)
    model.ir_version = max(model.ir_version, INT4_IR_VERSION)
    after = u.default_opset(model)
    if after < version:
        raise RuntimeError(f"opset upgrade to {version} left the model at {after}")
    return before, after


# ----------------------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class InputStats:
    """What the data-aware methods need of a layer's input: XᵀX and mean |x| per channel."""

    gram: np.ndarray  # [K, K] float64
    mean_abs: np.ndarray  # [K]
    rows: int


def input_statistics(model: ir.Model, values: Sequence[ir.Value], runner: Any,
                     feeds: Sequence[dict[str, Any]]) -> dict[str, InputStats]:
    """{name: InputStats} for the named float values (last axis = channels), streamed over feeds."""
    names = [v.name for v in values if v.name]
    if not names:
        return {}
    grams: dict[str, GramAccumulator] = {}
    means: dict[str, ChannelStats] = {}
    for (captured,) in iter_values(runner, [(model, list(dict.fromkeys(names)))], feeds):
        for name, array in captured.items():
            if array.ndim < 1:
                continue
            rows = np.asarray(array, dtype=np.float64).reshape(-1, array.shape[-1])
            k = rows.shape[1]
            acc = grams.setdefault(name, GramAccumulator(k, 0))
            if acc.n_in != k:
                continue
            acc.update(rows, np.zeros((rows.shape[0], 0)))
            means.setdefault(name, ChannelStats(k)).update(rows, 1)
    return {
        name: InputStats(acc.gram[: acc.n_in, : acc.n_in], means[name].mean_abs(), acc.rows)
        for name, acc in grams.items() if acc.rows
    }


@dataclasses.dataclass
class _UserLayer:
    """A (node, input) pair, the shape `lowrank._calibration.ready` reads."""

    node: ir.Node
    x: ir.Value


def _next_wave(graph: ir.Graph, pending: list[WeightGroup]) -> list[WeightGroup]:
    """The pending groups none of whose users' inputs depend on another pending group."""
    layers = [_UserLayer(node, node.inputs[0]) for g in pending for node in g.users]
    free = {id(layer.node) for layer in ready(graph, layers)}
    wave = [g for g in pending if all(id(node) in free for node in g.users)]
    return wave or pending[:1]  # a weight tied across depths: take it as it stands


# ----------------------------------------------------------------------------------------------
# The pass
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LayerStats:
    """One quantized weight, for `stats["layers"]`."""

    weight: str
    users: int
    shape: tuple[int, int]
    method: str
    bytes_before: int
    bytes_after: int
    output_error: float | None = None  # ‖X(W − Ŵ)‖ / ‖XW‖ on the calibration inputs

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["shape"] = list(self.shape)
        if self.output_error is None:
            out.pop("output_error")
        return out


def quantized_bytes(quant: bw.BlockQuant, scale_itemsize: int) -> int:
    k, n = quant.shape
    codes = -(-k * n * quant.bits // 8)
    zero_points = 0 if quant.symmetric else -(-quant.scale.size * quant.bits // 8)
    return codes + quant.scale.size * scale_itemsize + zero_points


def _code_array(codes: np.ndarray, bits: int, symmetric: bool) -> np.ndarray:
    if bits == 4:
        return codes.astype(ml_dtypes.int4 if symmetric else ml_dtypes.uint4)
    return codes.astype(np.int8 if symmetric else np.uint8)


@register_pass
class QuantizeWeightsPass(Pass):
    """Weight-only blockwise int4 / int8 quantization of MatMul weights (see the module docstring).

    Stats: `layers_quantized` (nodes), `weights_quantized`, `embeddings_quantized`, `bytes_before`
    and `bytes_after` of the quantized weights, `methods` (how many weights each method produced),
    `opset` ("13->21" when upgraded), `skip_reasons`, and `layers`, one dict per weight.
    """

    name = "quantize-weights"
    tolerance = Tolerance(rtol=1e-4, atol=1e-5, min_cosine=0.9)

    @dataclasses.dataclass(frozen=True)
    class Options:
        bits: int = 4
        block_size: int = 32
        symmetric: bool = True
        format: str = "qdq"
        method: str = "rtn"
        embeddings: bool = False
        accuracy_level: int = 0
        damp: float = 0.01
        sequential: bool = True
        max_samples: int = 64
        exclude: tuple[str, ...] = ()

        def __post_init__(self) -> None:
            if self.bits not in (4, 8):
                raise ValueError("bits must be 4 or 8")
            if self.block_size < 16 or self.block_size & (self.block_size - 1):
                raise ValueError("block-size must be a power of 2, at least 16")
            if self.format not in ("qdq", "matmulnbits"):
                raise ValueError("format must be qdq or matmulnbits")
            if self.method not in ("rtn", "gptq", "awq"):
                raise ValueError("method must be rtn, gptq or awq")
            if not 0 <= self.accuracy_level <= 4:
                raise ValueError("accuracy-level must be in 0..4")
            if self.damp <= 0:
                raise ValueError("damp must be positive")
            if self.max_samples < 1:
                raise ValueError("max-samples must be at least 1")

    def run(self, model: ir.Model, am: Any) -> PassResult:
        opts = self.options
        skipped: Counter[str] = Counter()
        groups = weight_groups(model, gather=opts.embeddings, exclude=opts.exclude, skipped=Counter())
        if not groups:
            weight_groups(model, gather=opts.embeddings, exclude=opts.exclude, skipped=skipped)
            return PassResult(model, False, {"layers_quantized": 0, "skip_reasons": dict(skipped)})
        stats: dict[str, Any] = {}
        if opts.format == "qdq" or any(g.kind == "gather" for g in groups):
            try:
                changed = ensure_opset(model, BLOCKED_DQ_OPSET, self.name)
            except Exception as e:  # the converter cannot take this model: leave it alone
                PassContext.current().diagnose(
                    f"{self.name}: cannot upgrade the model to opset {BLOCKED_DQ_OPSET} ({e}); "
                    "nothing quantized (format=matmulnbits needs no upgrade)")
                return PassResult(model, False, {"layers_quantized": 0})
            if changed:
                stats["opset"] = f"{changed[0]}->{changed[1]}"
        # the converter may rebuild the graph: find the weights again, now for real
        groups = weight_groups(model, gather=opts.embeddings, exclude=opts.exclude, skipped=skipped)
        records = self._quantize_all(model, groups, skipped)
        stats.update(_summary(records, skipped))
        logger.info("%s: %d weights quantized (%d -> %d bytes)", self.name, len(records),
                    stats["bytes_before"], stats["bytes_after"])
        return PassResult(model, bool(records) or "opset" in stats, stats)

    # -- driving -------------------------------------------------------------------------------
    def _quantize_all(self, model: ir.Model, groups: list[WeightGroup], skipped: Counter[str]) -> list[LayerStats]:
        opts = self.options
        graph = model.graph
        names = u.NameScope(model)
        ctx = PassContext.current()
        aware = [g for g in groups if g.kind == "matmul" and all(n.inputs[0] is not None for n in g.users)]
        if opts.method != "rtn":
            feeds = ctx.feeds(opts.max_samples)
            if ctx.runner is None or not feeds:
                ctx.diagnose(f"{self.name}: method={opts.method} needs calibration data and a runner; "
                             "round-to-nearest used instead")
                aware = []
        else:
            aware, feeds = [], []
        chosen = {id(g) for g in aware}
        records = [self._quantize(model, g, names, None) for g in groups if id(g) not in chosen]
        pending = aware
        while pending:
            wave = _next_wave(graph, pending) if opts.sequential else pending
            inputs = {id(node.inputs[0]): node.inputs[0] for g in wave for node in g.users}
            measured = input_statistics(model, list(inputs.values()), ctx.runner, feeds)
            for group in wave:
                parts = [measured.get(node.inputs[0].name or "") for node in group.users]
                if any(p is None for p in parts):
                    skipped["input not captured; rtn used"] += 1
                    records.append(self._quantize(model, group, names, None))
                    continue
                gram = sum(p.gram for p in parts)  # type: ignore[union-attr]
                mean_abs = np.mean([p.mean_abs for p in parts], axis=0)  # type: ignore[union-attr]
                records.append(self._quantize(model, group, names, (gram, mean_abs)))
            done = {id(g) for g in wave}
            pending = [g for g in pending if id(g) not in done]
        return records

    def _quantize(self, model: ir.Model, group: WeightGroup, names: u.NameScope,
                  data: tuple[np.ndarray, np.ndarray] | None) -> LayerStats:
        opts = self.options
        graph = model.graph
        w = group.array
        method, awq_scale, error = "rtn", None, None
        if group.kind == "gather":  # blocks along the feature axis: quantize the transpose
            quant = bw.quantize_rtn(w.T, opts.bits, opts.block_size, opts.symmetric)
        else:
            quant = bw.quantize_rtn(w, opts.bits, opts.block_size, opts.symmetric)
        if data is not None:
            gram, mean_abs = data
            error = bw.output_error(w, quant.dequantize(), gram)
            if opts.method == "gptq":
                candidate = bw.gptq(w, gram, opts.bits, opts.block_size, opts.symmetric, opts.damp)
                candidate_error = bw.output_error(w, candidate.dequantize(), gram)
                if candidate_error <= error:
                    quant, error, method = candidate, candidate_error, "gptq"
                else:
                    method = "rtn (better than gptq here)"
            else:
                s, candidate, candidate_error = bw.awq_search(w, mean_abs, gram, opts.bits, opts.block_size,
                                                              opts.symmetric)
                if candidate_error < error and not np.allclose(s, 1.0):
                    quant, error, method, awq_scale = candidate, candidate_error, "awq", s
            reference = float(np.einsum("ij,ij->", w, gram @ w))
            error = float(np.sqrt(error / reference)) if reference > 0 else 0.0
        scale_dtype = group.weight.const_value.numpy().dtype  # type: ignore[union-attr]
        if awq_scale is not None:
            self._insert_input_scaling(graph, group, names, (1.0 / awq_scale).astype(scale_dtype))
        if opts.format == "matmulnbits" and group.kind == "matmul":
            self._emit_matmulnbits(model, group, quant, names, scale_dtype)
        else:
            self._emit_dq(graph, group, quant, names, scale_dtype)
        drop_if_unused(graph, group.weight)
        return LayerStats(
            weight=group.name,
            users=len(group.users),
            shape=tuple(w.shape),  # type: ignore[arg-type]
            method=method if group.kind == "matmul" else "rtn (embedding)",
            bytes_before=w.size * scale_dtype.itemsize,
            bytes_after=quantized_bytes(quant, scale_dtype.itemsize),
            output_error=error,
        )

    # -- emission ------------------------------------------------------------------------------
    def _emit_dq(self, graph: ir.Graph, group: WeightGroup, quant: bw.BlockQuant, names: u.NameScope,
                 scale_dtype: np.dtype) -> None:
        opts = self.options
        codes, scale, zero_point = quant.codes, quant.scale, quant.zero_point
        axis = 0
        if group.kind == "gather":
            codes, scale = codes.T, scale.T
            zero_point = None if zero_point is None else zero_point.T
            axis = 1
        base = group.weight.name or "weight"
        inputs = [
            u.new_initializer(graph, names, f"{base}_q", _code_array(codes, opts.bits, opts.symmetric)),
            u.new_initializer(graph, names, f"{base}_scale", scale.astype(scale_dtype)),
        ]
        if zero_point is not None:
            inputs.append(u.new_initializer(graph, names, f"{base}_zero_point",
                                            _code_array(zero_point, opts.bits, opts.symmetric)))
        out = ir.Value(name=names.fresh(f"{base}_dq"), type=ir.TensorType(group.weight.dtype),
                       shape=ir.Shape(codes.shape))
        dq = ir.Node("", "DequantizeLinear", inputs,
                     attributes=[ir.AttrInt64("axis", axis), ir.AttrInt64("block_size", opts.block_size)],
                     outputs=[out], name=names.fresh(f"{base}_DequantizeLinear"))
        graph.insert_before(group.users[0], dq)
        for node in group.users:
            node.replace_input_with(group.index, out)

    def _emit_matmulnbits(self, model: ir.Model, group: WeightGroup, quant: bw.BlockQuant, names: u.NameScope,
                          scale_dtype: np.dtype) -> None:
        opts = self.options
        graph = model.graph
        b, scales, zero_points = bw.to_matmulnbits(quant)
        base = group.weight.name or "weight"
        shared = [
            u.new_initializer(graph, names, f"{base}_qB", b),
            u.new_initializer(graph, names, f"{base}_scales", scales.astype(scale_dtype)),
        ]
        if zero_points is not None:
            shared.append(u.new_initializer(graph, names, f"{base}_zero_points", zero_points))
        k, n = quant.shape
        attributes = [ir.AttrInt64("K", k), ir.AttrInt64("N", n), ir.AttrInt64("bits", opts.bits),
                      ir.AttrInt64("block_size", opts.block_size)]
        if opts.accuracy_level:
            attributes.append(ir.AttrInt64("accuracy_level", opts.accuracy_level))
        model.opset_imports.setdefault(MS_DOMAIN, 1)
        for node in group.users:
            new = ir.Node(MS_DOMAIN, "MatMulNBits", [node.inputs[0], *shared], attributes=list(attributes),
                          num_outputs=1, name=node.name)
            ir.convenience.replace_nodes_and_values(graph, node, [node], [new], [node.outputs[0]], new.outputs)

    def _insert_input_scaling(self, graph: ir.Graph, group: WeightGroup, names: u.NameScope,
                              inverse: np.ndarray) -> None:
        """x -> x / s in front of every user (AWQ): one shared constant, one Mul per user."""
        base = group.weight.name or "weight"
        factor = u.new_initializer(graph, names, f"{base}_awq_inv_scale", inverse)
        for node in group.users:
            x = node.inputs[0]
            assert x is not None
            scaled = ir.Value(name=names.fresh(f"{x.name or base}_awq"), type=x.type, shape=x.shape)
            mul = ir.Node("", "Mul", [x, factor], outputs=[scaled], name=names.fresh(f"{base}_awq_Mul"))
            graph.insert_before(node, mul)
            node.replace_input_with(0, scaled)


def _summary(records: list[LayerStats], skipped: Counter[str]) -> dict[str, Any]:
    return {
        "layers_quantized": sum(r.users for r in records if not r.method.endswith("(embedding)")),
        "weights_quantized": sum(1 for r in records if not r.method.endswith("(embedding)")),
        "embeddings_quantized": sum(1 for r in records if r.method.endswith("(embedding)")),
        "bytes_before": sum(r.bytes_before for r in records),
        "bytes_after": sum(r.bytes_after for r in records),
        "methods": dict(Counter(r.method for r in records)),
        "skip_reasons": dict(skipped),
        "layers": [r.as_dict() for r in records],
    }
