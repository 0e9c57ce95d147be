"""Small models for the target tests: a conv net and an MLP, saved to a folder, symbolic batch."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CONV_SHAPE = {"x": [1, 3, 16, 16]}
MLP_SHAPE = {"x": [2, 16]}


def _inits(seed: int, shapes: dict[str, tuple[int, ...]]) -> list[onnx.TensorProto]:
    rng = np.random.default_rng(seed)
    return [numpy_helper.from_array(rng.normal(0, 0.3, s).astype(np.float32), n) for n, s in shapes.items()]


def _save(graph: onnx.GraphProto, path, opset: int, extra_opsets: dict[str, int] | None = None) -> str:
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def conv_model(path, *, seed: int = 0, opset: int = 17, softmax: bool = True,
               extra_opsets: dict[str, int] | None = None) -> str:
    """Conv-Relu-MaxPool-Conv-Relu-Add(residual)-GAP-Flatten-Gemm[-Softmax], batch dim `N`."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Conv", ["p", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Add", ["r2", "p"], ["s"], name="add"),
        helper.make_node("GlobalAveragePool", ["s"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], transB=1, name="fc"),
    ]
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["prob"], axis=1, name="softmax"))
        out = "prob"
    graph = helper.make_graph(
        nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 10])],
        _inits(seed, {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (8, 8, 3, 3), "b2": (8,), "w3": (10, 8), "b3": (10,)}),
    )
    return _save(graph, path, opset, extra_opsets)


def conv_only_model(path, *, seed: int = 0) -> str:
    """Conv-Relu-Conv with the last Conv's output as the graph output (CPU rules quantize it)."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], pads=[1, 1, 1, 1], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        _inits(seed, {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (4, 8, 3, 3), "b2": (4,)}),
    )
    return _save(graph, path, 17)


def mlp_model(path, *, seed: int = 1, opset: int = 17) -> str:
    """MatMul+Add-Relu-MatMul+Add-Softmax on [N, 16]."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
        helper.make_node("Relu", ["hb"], ["a"], name="relu"),
        helper.make_node("MatMul", ["a", "w2"], ["o"], name="mm2"),
        helper.make_node("Add", ["o", "b2"], ["ob"], name="bias2"),
        helper.make_node("Softmax", ["ob"], ["y"], axis=-1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        _inits(seed, {"w1": (16, 32), "b1": (32,), "w2": (32, 8), "b2": (8,)}),
    )
    return _save(graph, path, opset)
