"""Tiny models for the pruning tests, built with onnx.helper and numpy weights.

Exactness models zero *every* slice of the channels meant to go (producer rows, biases, BN
parameters, consumer columns): those channels then score exactly the lowest under L1/L2 and their
removal cannot change any output, so the pruned model must match the original on ORT.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

from onnxpress.passes import PassManager
from tests.util import assert_same_outputs, random_feeds, run

Shape = Sequence[int | str]


class Builder:
    """Accumulates nodes and float initializers; `model()` returns a checked onnx_ir model."""

    def __init__(self, opset: int = 17, seed: int = 0) -> None:
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self._n = 0
        self._domains: set[str] = set()
        self.value_info: list[onnx.ValueInfoProto] = []  # shapes onnx cannot infer (function ops)

    def rand(self, *shape: int, positive: bool = False) -> np.ndarray:
        a = self.rng.standard_normal(shape).astype(np.float32)
        return np.abs(a) + 0.5 if positive else a

    def input(self, name: str, shape: Shape, dtype: int = TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, list(shape)))
        return name

    def typed(self, name: str, shape: Shape) -> str:
        """Declare the float shape of an intermediate value."""
        self.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        return name

    def init(self, name: str, array: Any) -> str:
        self.inits.append(onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def ints(self, name: str, values: Sequence[int]) -> str:
        return self.init(name, np.asarray(values, dtype=np.int64))

    def op(self, op_type: str, inputs: Sequence[str], name: str | None = None, outputs: int | Sequence[str] = 1,
           domain: str = "", **attrs: Any) -> Any:
        self._n += 1
        if domain:
            self._domains.add(domain)
        name = name or f"{op_type.lower()}_{self._n}"
        outs = [f"{name}_out{i}" for i in range(outputs)] if isinstance(outputs, int) else list(outputs)
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, domain=domain, **attrs))
        return outs[0] if len(outs) == 1 else outs

    # -- layers --------------------------------------------------------------------------------
    def conv(self, x: str, w: np.ndarray, b: np.ndarray | None = None, name: str | None = None, **attrs: Any) -> str:
        name = name or f"conv_{self._n + 1}"
        inputs = [x, self.init(f"{name}.w", w)] + ([self.init(f"{name}.b", b)] if b is not None else [])
        if w.shape[-1] > 1 and "pads" not in attrs:
            attrs["pads"] = [w.shape[-1] // 2] * 4
        return self.op("Conv", inputs, name=name, **attrs)

    def bn(self, x: str, gamma: np.ndarray, beta: np.ndarray, name: str | None = None) -> str:
        name = name or f"bn_{self._n + 1}"
        c = len(gamma)
        mean = self.rand(c) * np.abs(gamma) / (np.abs(gamma) + 1e-12)  # zero where gamma is
        return self.op("BatchNormalization", [x, self.init(f"{name}.scale", gamma), self.init(f"{name}.bias", beta),
                                              self.init(f"{name}.mean", mean.astype(np.float32)),
                                              self.init(f"{name}.var", np.ones(c, np.float32))], name=name)

    def model(self, outputs: Sequence[str]) -> ir.Model:
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
        graph = helper.make_graph(self.nodes, "g", self.inputs, outs, self.inits, value_info=self.value_info)
        opsets = [helper.make_opsetid("", self.opset)] + [helper.make_opsetid(d, 1) for d in self._domains]
        ir_version = max(8, helper.find_min_ir_version_for(opsets[:1]))
        proto = helper.make_model(graph, opset_imports=opsets, ir_version=ir_version)
        if not self._domains:  # graph outputs get their inferred shapes (the checker wants one)
            proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
            onnx.checker.check_model(proto)
        return ir.serde.deserialize_model(proto)


def zero(array: np.ndarray, axis: int, index: Sequence[int]) -> np.ndarray:
    """A copy of `array` with the slices `index` along `axis` set to 0."""
    out = np.array(array, copy=True)
    sl: list[Any] = [slice(None)] * out.ndim
    sl[axis] = list(index)
    out[tuple(sl)] = 0
    return out


def rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


# -- running the pass ------------------------------------------------------------------------------
def prune(model: ir.Model, options: str = "ratio=0.25", *, check: bool | str = True,
          dims: dict[str, int] | None = None) -> tuple[ir.Model, Any, Any]:
    """Run `infer-shapes,prune-channels{options}` on `model` in place.

    check=True: the result passes the full onnx checker and gives the same outputs on ORT;
    check="runs": it passes the checker and ORT runs it; check=False: nothing (custom ops).
    Returns (pruned model, PassManager result, the prune-channels pass instance)."""
    original = model.clone()
    pm = PassManager.from_pipeline(f"infer-shapes,prune-channels{{{options}}}")
    result = pm(model)
    if check:
        proto = ir.serde.serialize_model(model)
        onnx.checker.check_model(proto, full_check=True)
        reloaded = ir.serde.deserialize_model(proto)
        feeds = random_feeds(original, dims=dims)
        if check == "runs":
            run(reloaded, feeds)
        else:
            assert_same_outputs(original, reloaded, feeds)
    return model, result, pm.passes[-1]


def shapes(model: ir.Model) -> dict[str, list[int]]:
    """Initializer name -> shape."""
    return {name: list(v.const_value.shape) for name, v in model.graph.initializers.items()}


def arrays(model: ir.Model) -> dict[str, np.ndarray]:
    return {name: v.const_value.numpy() for name, v in model.graph.initializers.items()}


def assert_untouched(before: ir.Model, after: ir.Model) -> None:
    a, b = arrays(before), arrays(after)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert [n.op_type for n in before.graph] == [n.op_type for n in after.graph]


# -- shared models ---------------------------------------------------------------------------------
def conv_chain(widths: Sequence[int] = (16, 16), seed: int = 0, scale: Sequence[np.ndarray] | None = None,
               names: Sequence[str] | None = None) -> ir.Model:
    """x[1,3,8,8] -> (Conv k3 + bias -> Relu) per width -> Conv 1x1 `head` to 4 channels -> y (frozen).

    `scale[i]` multiplies layer i's output rows and bias and the next layer's input columns, so
    channel j of group i scores in proportion to `scale[i][j]`."""
    b = Builder(seed=seed)
    h = b.input("x", [1, 3, 8, 8])
    names = names or [f"conv{i + 1}" for i in range(len(widths))]
    scale = scale or [np.ones(c, np.float32) for c in widths]
    col = np.ones(3, np.float32)
    for name, c, s in zip(names, widths, scale):
        w = b.rand(c, len(col), 3, 3) * s[:, None, None, None] * col[None, :, None, None]
        h = b.op("Relu", [b.conv(h, w.astype(np.float32), (b.rand(c) * s).astype(np.float32), name=name)])
        col = np.asarray(s, np.float32)
    head = b.rand(4, len(col), 1, 1) * col[None, :, None, None]
    y = b.conv(h, head.astype(np.float32), name="head")
    return b.model([y])


def resnet_block(zero_res: Sequence[int] = (1, 5), zero_inner: Sequence[int] = (2, 6)) -> ir.Model:
    """stem Conv -> [Conv-BN-Relu-Conv-BN] + skip -> Relu -> head Conv: the Add ties stem and conv2."""
    b = Builder()
    x = b.input("x", [1, 3, 8, 8])
    stem = b.op("Relu", [b.conv(x, zero(b.rand(8, 3, 3, 3), 0, zero_res), zero(b.rand(8), 0, zero_res), name="stem")])
    w1 = zero(zero(b.rand(8, 8, 3, 3), 0, zero_inner), 1, zero_res)
    g1 = zero(b.rand(8, positive=True), 0, zero_inner)
    h = b.op("Relu", [b.bn(b.conv(stem, w1, name="conv1"), g1, zero(b.rand(8), 0, zero_inner), name="bn1")])
    w2 = zero(zero(b.rand(8, 8, 3, 3), 0, zero_res), 1, zero_inner)
    g2 = zero(b.rand(8, positive=True), 0, zero_res)
    h = b.bn(b.conv(h, w2, name="conv2"), g2, zero(b.rand(8), 0, zero_res), name="bn2")
    h = b.op("Relu", [b.op("Add", [h, stem], name="residual")])
    y = b.conv(h, zero(b.rand(4, 8, 1, 1), 1, zero_res), b.rand(4), name="head")
    return b.model([y])


def mobilenet_block(multiplier: int = 1, zero_in: Sequence[int] = (1, 4), zero_pw: Sequence[int] = (3,)) -> ir.Model:
    """stem Conv -> Relu -> depthwise Conv (group=8) -> Relu -> pointwise Conv -> Relu -> Conv."""
    b = Builder()
    x = b.input("x", [1, 3, 8, 8])
    h = b.op("Relu", [b.conv(x, zero(b.rand(8, 3, 3, 3), 0, zero_in), zero(b.rand(8), 0, zero_in), name="stem")])
    dw_zero = [i * multiplier + k for i in zero_in for k in range(multiplier)]
    c_dw = 8 * multiplier
    wd = zero(b.rand(c_dw, 1, 3, 3), 0, dw_zero)
    h = b.op("Relu", [b.conv(h, wd, zero(b.rand(c_dw), 0, dw_zero), name="dw", group=8)])
    wp = zero(zero(b.rand(6, c_dw, 1, 1), 1, dw_zero), 0, zero_pw)
    h = b.op("Relu", [b.conv(h, wp, zero(b.rand(6), 0, zero_pw), name="pw")])
    y = b.conv(h, zero(b.rand(4, 6, 1, 1), 1, zero_pw), name="head")
    return b.model([y])


def encoder_layer(ffn_zero: Sequence[int] = tuple(range(0, 32, 4))) -> ir.Model:
    """Embedding MatMul -> one post-norm transformer encoder layer (2 heads of 8) -> MatMul head."""
    b = Builder(seed=3)
    d, heads, hd, ff, s = 16, 2, 8, 32, 4
    x = b.input("x", [1, s, 8])
    h0 = b.op("MatMul", [x, b.init("embed.w", b.rand(8, d))], name="embed")
    proj = {}
    for n in "qkv":
        t = b.op("Add", [b.op("MatMul", [h0, b.init(f"{n}.w", b.rand(d, d))], name=n), b.init(f"{n}.b", b.rand(d))])
        proj[n] = b.op("Reshape", [t, b.ints(f"{n}.shape", [1, s, heads, hd])], name=f"{n}_heads")
    q = b.op("Transpose", [proj["q"]], perm=[0, 2, 1, 3])
    k = b.op("Transpose", [proj["k"]], perm=[0, 2, 3, 1])
    v = b.op("Transpose", [proj["v"]], perm=[0, 2, 1, 3])
    att = b.op("Softmax", [b.op("Mul", [b.op("MatMul", [q, k]), b.init("scale", np.float32(hd ** -0.5))])], axis=-1)
    o = b.op("Transpose", [b.op("MatMul", [att, v])], perm=[0, 2, 1, 3])
    o = b.op("Reshape", [o, b.ints("o.shape", [1, s, d])])
    o = b.op("Add", [b.op("MatMul", [o, b.init("o.w", b.rand(d, d))], name="o"), b.init("o.b", b.rand(d))])
    h1 = b.op("LayerNormalization", [b.op("Add", [o, h0]), b.init("ln1.g", b.rand(d)), b.init("ln1.b", b.rand(d))],
              name="ln1")
    z = list(ffn_zero)
    f = b.op("MatMul", [h1, b.init("ffn1.w", zero(b.rand(d, ff), 1, z))], name="ffn1")
    f = b.op("Relu", [b.op("Add", [f, b.init("ffn1.b", zero(b.rand(ff), 0, z))])])
    f = b.op("MatMul", [f, b.init("ffn2.w", zero(b.rand(ff, d), 0, z))], name="ffn2")
    f = b.op("Add", [f, b.init("ffn2.b", b.rand(d))])
    h2 = b.op("LayerNormalization", [b.op("Add", [f, h1]), b.init("ln2.g", b.rand(d)), b.init("ln2.b", b.rand(d))],
              name="ln2")
    y = b.op("MatMul", [h2, b.init("head.w", b.rand(d, 3))], name="head")
    return b.model([y])
