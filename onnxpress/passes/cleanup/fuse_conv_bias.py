"""`fuse-conv-bias`: Conv/ConvTranspose followed by Add of a per-channel constant -> Conv bias."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.base import Pass, PassResult
from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.registry import register_pass

logger = logging.getLogger(__name__)


def _channels(conv: ir.Node, w: np.ndarray) -> int:
    if conv.op_type == "Conv":
        return w.shape[0]
    return w.shape[1] * u.attr_int(conv, "group", 1)


def _per_channel(addend: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """The addend as a [channels] vector when it broadcasts as [1, C|1, 1, ...] onto rank `rank`."""
    if addend.ndim > rank:
        return None
    shape = (1,) * (rank - addend.ndim) + addend.shape
    if shape[0] != 1 or shape[1] not in (1, channels) or any(d != 1 for d in shape[2:]):
        return None
    return np.broadcast_to(addend.reshape(shape[1]), (channels,))


@register_pass
class FuseConvBiasPass(Pass):
    """Fold `Add(Conv(x, W, b), c)` (either operand order) into `Conv(x, W, b + c)`.

    Applies to Conv and ConvTranspose whose output feeds only this Add, with a constant weight, a
    constant bias or none, and a constant float addend that is per-channel or a scalar (shape
    broadcasting as [1, C, 1, ...] onto the output, so the output shape cannot change). The new
    bias is a new initializer.

    Does not apply to other addends (per-position ones would change the meaning), in model-local
    functions (no initializers there), or to custom-domain nodes.
    """

    name = "fuse-conv-bias"

    def run(self, model: ir.Model, am: Any) -> PassResult:
        names = u.NameScope(model)
        fused = 0
        for graph in model.graphs():
            for add in list(graph):
                if not u.is_onnx_op(add, "Add") or len(add.inputs) != 2:
                    continue
                for i in (0, 1):
                    conv_out, other = add.inputs[i], add.inputs[1 - i]
                    conv = conv_out.producer() if conv_out is not None else None
                    if conv is None or not u.is_onnx_op(conv, "Conv", "ConvTranspose") or conv.graph is not graph:
                        continue
                    if u.has_ref_attrs(conv) or not u.only_user(conv_out, add):
                        continue
                    w = u.const_array(conv.inputs[1])
                    addend = u.const_array(other)
                    b_value = conv.inputs[2] if len(conv.inputs) > 2 else None
                    bias = u.const_array(b_value) if b_value is not None else None
                    if w is None or addend is None or w.ndim < 3 or addend.dtype != w.dtype or w.dtype.kind != "f":
                        continue
                    if b_value is not None and bias is None:
                        continue
                    channels = _channels(conv, w)
                    vector = _per_channel(addend, w.ndim, channels)
                    if vector is None:
                        continue
                    base = bias if bias is not None else np.zeros(channels, dtype=w.dtype)
                    if base.shape != (channels,):
                        continue
                    new_bias = (base.astype(np.float64) + vector.astype(np.float64)).astype(w.dtype)
                    b_new = u.new_initializer(graph, names, f"{conv.inputs[1].name or 'conv'}_bias", new_bias)
                    u.replace_node(
                        [conv, add], conv.op_type, [conv.inputs[0], conv.inputs[1], b_new], dict(conv.attributes), add.outputs[0]
                    )
                    fused += 1
                    break
        if fused:
            logger.info("fuse-conv-bias folded %d Add node(s) into Conv biases", fused)
        return PassResult(model, fused > 0, {"fused": fused})
