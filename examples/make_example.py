"""Generate the example model shipped with onnxpress: a small residual CNN classifier.

`python examples/make_example.py` writes `examples/tiny_resnet.onnx` and `examples/data.npz`
(fixed seed, so the files are reproducible). The graph looks like what exporters emit: Conv +
BatchNormalization + Relu blocks with residual Adds, a strided downsampling block with a 1x1
projection, Identity and Dropout left behind by training code, a Flatten computed through a
Shape/Gather/Concat subgraph, a per-channel Mul after a Conv (for the custom-pass example), and a
classifier head written as MatMul + Add. `optimize` has real work to do on it.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 20261122
NUM_CLASSES = 10


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, prefix: str, array: np.ndarray) -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], prefix: str | None = None, **attrs) -> str:
        out = self.name(prefix or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{out}_node", **attrs))
        return out

    def conv_bn(self, x: str, cin: int, cout: int, k: int, stride: int = 1, relu: bool = True) -> str:
        fan_in = cin * k * k
        w = (self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        y = self.node("Conv", [x, self.const("conv.weight", w)], "conv",
                      kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
        gamma = self.rng.uniform(0.5, 1.5, cout).astype(np.float32)
        beta = self.rng.normal(0, 0.1, cout).astype(np.float32)
        mean = self.rng.normal(0, 0.1, cout).astype(np.float32)
        var = self.rng.uniform(0.5, 1.5, cout).astype(np.float32)
        y = self.node("BatchNormalization", [y, self.const("bn.scale", gamma), self.const("bn.bias", beta),
                                             self.const("bn.mean", mean), self.const("bn.var", var)], "bn",
                      epsilon=1e-5)
        return self.node("Relu", [y], "relu") if relu else y

    def basic_block(self, x: str, cin: int, cout: int, stride: int) -> str:
        y = self.conv_bn(x, cin, cout, 3, stride)
        y = self.conv_bn(y, cout, cout, 3, 1, relu=False)
        shortcut = x if (stride == 1 and cin == cout) else self.conv_bn(x, cin, cout, 1, stride, relu=False)
        return self.node("Relu", [self.node("Add", [y, shortcut], "add")], "relu")


def build_model(seed: int = SEED) -> onnx.ModelProto:
    b = _Builder(seed)
    x = b.node("Identity", ["input"], "input_copy")  # an exporter artefact
    y = b.conv_bn(x, 3, 16, 3)
    # A per-channel scale after a conv (e.g. a layer-scale), foldable into the conv weights.
    w = (b.rng.standard_normal((16, 16, 1, 1)) * 0.3).astype(np.float32)
    y = b.node("Conv", [y, b.const("proj.weight", w)], "conv", kernel_shape=[1, 1])
    y = b.node("Mul", [y, b.const("layer_scale", b.rng.uniform(0.5, 1.5, (1, 16, 1, 1)).astype(np.float32))], "scale")
    y = b.basic_block(y, 16, 16, 1)
    y = b.basic_block(y, 16, 32, 2)
    y = b.basic_block(y, 32, 32, 1)
    y = b.node("GlobalAveragePool", [y], "gap")
    y = b.node("Dropout", [y], "dropout")
    # Flatten spelled the way tracing exporters spell it: Reshape(x, Concat(Gather(Shape(x), 0), [-1])).
    shape = b.node("Shape", [y], "shape")
    batch = b.node("Gather", [shape, b.const("zero", np.array(0, dtype=np.int64))], "batch", axis=0)
    batch = b.node("Unsqueeze", [batch, b.const("axes0", np.array([0], dtype=np.int64))], "batch1")
    target = b.node("Concat", [batch, b.const("minus_one", np.array([-1], dtype=np.int64))], "target", axis=0)
    y = b.node("Reshape", [y, target], "flat")
    wfc = (b.rng.standard_normal((32, NUM_CLASSES)) * 0.2).astype(np.float32)
    bfc = b.rng.normal(0, 0.1, NUM_CLASSES).astype(np.float32)
    y = b.node("MatMul", [y, b.const("fc.weight", wfc)], "fc")
    y = b.node("Add", [y, b.const("fc.bias", bfc)], "logits_pre")
    b.nodes.append(helper.make_node("Identity", [y], ["logits"], name="logits_node"))

    graph = helper.make_graph(
        b.nodes,
        "tiny_resnet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", NUM_CLASSES])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxpress-example")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def build_data(n: int = 8, seed: int = SEED) -> dict[str, np.ndarray]:
    """Sample inputs: N samples of shape [1, 3, 32, 32] (smooth images, not white noise)."""
    rng = np.random.default_rng(seed + 1)
    base = rng.standard_normal((n, 1, 3, 8, 8)).astype(np.float32)
    images = base.repeat(4, axis=3).repeat(4, axis=4) + 0.1 * rng.standard_normal((n, 1, 3, 32, 32)).astype(np.float32)
    return {"input": images.astype(np.float32)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--out-dir", default=here)
    args = parser.parse_args()
    model_path = os.path.join(args.out_dir, "tiny_resnet.onnx")
    data_path = os.path.join(args.out_dir, "data.npz")
    onnx.save(build_model(), model_path)
    np.savez(data_path, **build_data())
    print(f"wrote {model_path} and {data_path}")


if __name__ == "__main__":
    main()
