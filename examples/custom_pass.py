"""A custom onnxpress pass, registered from outside the package: fold a per-channel Mul into a Conv.

Use it without installing anything:

    optimize examples/tiny_resnet.onnx --load-plugin examples/custom_pass.py --pipeline "O1,fold-conv-scale"

A package can ship passes too, by naming a module (or Pass class) in the entry-point group
`onnxpress.passes` of its pyproject.toml:

    [project.entry-points."onnxpress.passes"]
    fold-conv-scale = "mypkg.passes:FoldConvScalePass"
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from onnxpress import Pass, PassResult, register_pass

logger = logging.getLogger(__name__)


@register_pass
class FoldConvScalePass(Pass):
    """Fold `Mul(Conv(x, W, b), s)` with a constant per-output-channel `s` into the Conv's weights.

    Applies when W (and b, if present) are constants, the Conv output has no other user, and `s`
    has shape [C_out, 1, 1] or [1, C_out, 1, ...] (or a scalar). Lossless up to float rounding.
    """

    name = "fold-conv-scale"

    @dataclasses.dataclass(frozen=True)
    class Options:
        min_channels: int = 1  # an example option: `fold-conv-scale{min-channels=8}`

    def run(self, model: ir.Model, am) -> PassResult:
        folded = 0
        for node in list(model.graph):
            if node.op_type != "Mul" or node.domain != "" or node.outputs[0].is_graph_output():
                continue
            conv_out, scale_value = node.inputs
            conv = conv_out.producer() if conv_out is not None else None
            if conv is None or conv.op_type != "Conv" or len(conv_out.uses()) != 1 or conv_out.is_graph_output():
                continue
            weight = conv.inputs[1].const_value
            bias = conv.inputs[2].const_value if len(conv.inputs) > 2 and conv.inputs[2] is not None else None
            scale = scale_value.const_value if scale_value is not None else None
            if weight is None or scale is None or (len(conv.inputs) > 2 and conv.inputs[2] is not None and bias is None):
                continue
            w = weight.numpy()
            c_out = w.shape[0]
            s = scale.numpy()
            if c_out < self.options.min_channels or s.size not in (1, c_out) or (s.size == c_out and s.ndim > 1 and s.shape[-w.ndim + 1 :].count(1) != w.ndim - 2):
                continue
            s = s.reshape(-1)
            if s.size == 1:
                s = np.repeat(s, c_out)
            new_w = ir.Value(name=f"{conv.inputs[1].name}_scaled", const_value=ir.tensor((w * s.reshape(-1, *[1] * (w.ndim - 1))).astype(w.dtype)))
            new_w.shape, new_w.dtype = ir.Shape(w.shape), weight.dtype
            model.graph.register_initializer(new_w)
            conv.replace_input_with(1, new_w)
            if bias is not None:
                new_b = ir.Value(name=f"{conv.inputs[2].name}_scaled", const_value=ir.tensor((bias.numpy() * s).astype(w.dtype)))
                new_b.shape, new_b.dtype = ir.Shape([c_out]), weight.dtype
                model.graph.register_initializer(new_b)
                conv.replace_input_with(2, new_b)
            # The Mul's output may have a broadcast-only shape difference; Conv's output replaces it.
            ir.convenience.replace_all_uses_with(node.outputs[0], conv_out, replace_graph_outputs=True)
            model.graph.remove(node, safe=True)
            folded += 1
            logger.debug("folded %s into %s", node.name, conv.name)
        if folded:
            logger.info("fold-conv-scale: folded %d scale(s)", folded)
        return PassResult(model, folded > 0, {"folded": folded})
