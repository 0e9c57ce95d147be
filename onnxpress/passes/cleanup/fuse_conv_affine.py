"""`fuse-conv-affine`: per-channel scales and shifts next to a Conv folded into its weights and bias.

Models exported from Paddle (PP-LCNet's learnable affine blocks), RepVGG-style training and
hand-written normalisations put `Mul` / `Add` by per-channel constants right after or right
before convolutions. In float, ONNX Runtime fuses some of them at session start; in a quantized
model each one becomes its own requantizing QLinearMul / QLinearAdd (one more rounding and one
more pass over the tensor), so folding them first makes int8 models both faster and closer to
the float one. Two rewrites, both exact up to float rounding:

- after:  `Mul(Conv(x, W, b), s)` -> `Conv(x, W·s, b·s)` (s per output channel or scalar; a
  following `Add` is then folded into the bias by `fuse-conv-bias`);
- before: `Conv(Mul(x, s), W, b)` -> `Conv(x, W·s, b)` and `Conv(Add(x, t), W, b)` ->
  `Conv(x, W, b + Σ W·t)` (s, t per input channel or scalar). A shift before a Conv is folded only
  when the Conv pads nothing: padded borders see zeros, not the shift.

Conv and ConvTranspose (any group) qualify when the weight (and bias) are constants read by this
node only and the folded op's output feeds nothing else. New weights are new initializers.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.base import Pass, PassResult
from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.registry import register_pass

logger = logging.getLogger(__name__)


def _vector(array: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """`array` as a [channels] float64 vector when it broadcasts as [1, C|1, 1, ...] onto rank `rank`."""
    if array.ndim > rank or array.dtype.kind != "f":
        return None
    shape = (1,) * (rank - array.ndim) + array.shape
    if shape[0] != 1 or shape[1] not in (1, channels) or any(d != 1 for d in shape[2:]):
        return None
    return np.broadcast_to(array.reshape(shape[1]).astype(np.float64), (channels,))


def _operand(node: ir.Node, value: ir.Value) -> ir.Value | None:
    """The other input of a binary `node` that reads `value` (None if not exactly one such input)."""
    if len(node.inputs) != 2 or (node.inputs[0] is value) == (node.inputs[1] is value):
        return None
    return node.inputs[1] if node.inputs[0] is value else node.inputs[0]


def _channel_maps(conv: ir.Node, w: np.ndarray) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(C_out, C_in, out-channel index, in-channel index) of every weight element's [out, in] pair.

    Conv weights are [C_out, C_in/g, *k]; ConvTranspose weights [C_in, C_out/g, *k].
    """
    group = u.attr_int(conv, "group", 1)
    if conv.op_type == "Conv":
        per_out, per_in = w.shape[0] // group, w.shape[1]
        o = np.arange(w.shape[0])[:, None]
        i = (o // per_out) * per_in + np.arange(per_in)[None, :]
        return w.shape[0], per_in * group, o + 0 * i, i
    per_in, per_out = w.shape[0] // group, w.shape[1]
    i = np.arange(w.shape[0])[:, None]
    o = (i // per_in) * per_out + np.arange(per_out)[None, :]
    return per_out * group, w.shape[0], o, i + 0 * o


def _no_padding(conv: ir.Node) -> bool:
    auto_pad = conv.attributes.get("auto_pad")
    if auto_pad is not None and (auto_pad.is_ref() or auto_pad.as_string() not in ("NOTSET", "VALID")):
        return False
    pads = u.attr_ints(conv, "pads")
    return conv.op_type == "Conv" and not any(pads or [])


@register_pass
class FuseConvAffinePass(Pass):
    """Fold constant per-channel Mul after a Conv, and Mul / Add before one, into its weights and bias.

    Exact up to float rounding; see the module docstring for the conditions. Stats: `after`
    (Muls folded after a Conv) and `before` (Muls and Adds folded before one).
    """

    name = "fuse-conv-affine"

    def run(self, model: ir.Model, am: Any) -> PassResult:
        names = u.NameScope(model)
        counts = {"after": 0, "before": 0}
        for graph in model.graphs():
            changed = True
            while changed:
                changed = False
                for node in list(graph):
                    if node.graph is not graph or not u.is_onnx_op(node, "Conv", "ConvTranspose"):
                        continue
                    if self._fold_after(graph, names, node):
                        counts["after"] += 1
                        changed = True
                    elif self._fold_before(graph, names, node):
                        counts["before"] += 1
                        changed = True
        total = sum(counts.values())
        if total:
            logger.info("fuse-conv-affine folded %d Mul/Add node(s) into Conv weights", total)
        return PassResult(model, total > 0, counts)

    # -- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _parts(conv: ir.Node) -> tuple[np.ndarray, np.ndarray | None] | None:
        """(W, b) when both are constants read by `conv` alone (b None when absent), else None."""
        if u.has_ref_attrs(conv) or len(conv.inputs) < 2 or conv.inputs[1] is None:
            return None
        w = u.const_array(conv.inputs[1])
        if w is None or w.ndim < 3 or w.dtype.kind != "f" or not u.only_user(conv.inputs[1], conv):
            return None
        b_value = conv.inputs[2] if len(conv.inputs) > 2 else None
        if b_value is None:
            return w, None
        b = u.const_array(b_value)
        if b is None or b.dtype != w.dtype or not u.only_user(b_value, conv):
            return None
        return w, b

    @staticmethod
    def _rebuild(graph: ir.Graph, names: u.NameScope, conv: ir.Node, x: ir.Value, w: np.ndarray,
                 b: np.ndarray | None, old: list[ir.Node], output: ir.Value) -> None:
        """Replace `old` (ending in the node that produces `output`) by `conv` reading `x` with W, b."""
        base = conv.inputs[1].name or "conv"
        inputs = [x, u.new_initializer(graph, names, f"{base}_affine", w)]
        if b is not None:
            inputs.append(u.new_initializer(graph, names, f"{base}_affine_bias", np.asarray(b).astype(w.dtype)))
        u.replace_node(old, conv.op_type, inputs, dict(conv.attributes), output, name=conv.name)

    def _fold_after(self, graph: ir.Graph, names: u.NameScope, conv: ir.Node) -> bool:
        out = conv.outputs[0]
        uses = list(out.uses())
        if len(uses) != 1 or out.is_graph_output():
            return False
        mul = uses[0].node
        if not u.is_onnx_op(mul, "Mul") or mul.graph is not graph:
            return False
        other = _operand(mul, out)
        parts = self._parts(conv)
        scale = u.const_array(other) if other is not None else None
        if parts is None or scale is None:
            return False
        w, b = parts
        n_out, _n_in, o, _i = _channel_maps(conv, w)
        s = _vector(scale, w.ndim, n_out)
        if s is None or scale.dtype != w.dtype:
            return False
        factor = s[o].reshape(o.shape + (1,) * (w.ndim - 2))
        new_w = w.astype(np.float64) * factor
        new_b = None if b is None else b.astype(np.float64) * s
        self._rebuild(graph, names, conv, conv.inputs[0], new_w.astype(w.dtype), new_b, [conv, mul], mul.outputs[0])
        return True

    def _fold_before(self, graph: ir.Graph, names: u.NameScope, conv: ir.Node) -> bool:
        x = conv.inputs[0]
        op = x.producer() if x is not None else None
        if op is None or op.graph is not graph or not u.is_onnx_op(op, "Mul", "Add") or not u.only_user(x, conv):
            return False
        parts = self._parts(conv)
        if parts is None:
            return False
        for source in op.inputs:
            other = _operand(op, source) if source is not None else None
            array = u.const_array(other) if other is not None else None
            if array is None or u.const_array(source) is not None:
                continue
            w, b = parts
            _n_out, n_in, o, i = _channel_maps(conv, w)
            vec = _vector(array, w.ndim, n_in)
            if vec is None or array.dtype != w.dtype:
                return False
            w64 = w.astype(np.float64)
            if op.op_type == "Mul":
                new_w, new_b = w64 * vec[i].reshape(i.shape + (1,) * (w.ndim - 2)), b
            else:
                if not _no_padding(conv):
                    return False
                shift = (w64 * vec[i].reshape(i.shape + (1,) * (w.ndim - 2))).sum(axis=tuple(range(2, w.ndim)))
                per_out = np.zeros(_n_out)
                np.add.at(per_out, o.reshape(-1), shift.reshape(-1))
                new_w, new_b = w64, (0.0 if b is None else b.astype(np.float64)) + per_out
            self._rebuild(graph, names, conv, source, new_w.astype(w.dtype), new_b, [op, conv], conv.outputs[0])
            return True
        return False

