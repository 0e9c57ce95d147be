from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxpress.passes import PassManager
from onnxpress.passes.cleanup import FoldShapesPass
from tests.passes.cleanup._common import apply, ops
from tests.util import model_from_text

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'
PIPE = "infer-shapes,fold-shapes,dce"


def apply_at_two_sizes(pipeline: str, text: str, sizes: list[dict[str, int]]):
    """Run the pipeline once per size; each run checks the outputs on ORT at that size."""
    for dims in sizes:
        model, result = apply(pipeline, text, dims=dims)
    return model, result


def fold_only(text: str, **options):
    """infer-shapes first, then fold-shapes alone: its own result says whether it applied."""
    model = model_from_text(text)
    PassManager.from_pipeline("infer-shapes")(model)
    return model, FoldShapesPass(**options)(model)


def target_of(model: ir.Model, index: int = -1) -> list[int]:
    reshapes = [n for n in model.graph if n.op_type == "Reshape"]
    return ir.convenience.get_const_tensor(reshapes[index].inputs[1]).numpy().tolist()


def test_shape_slice_of_own_input_becomes_copy_and_constant():
    text = f"""{HEAD}
    g (float[N,4,H,W] x) => (float[N,4,?] y) <int64[1] zero = {{0}}, int64[1] two = {{2}}, int64[1] m1 = {{-1}}> {{
      s = Shape(x)
      head = Slice(s, zero, two)
      t = Concat<axis=0>(head, m1)
      y = Reshape(x, t) }}"""
    model, result = apply_at_two_sizes(PIPE, text, [{"N": 1, "H": 2, "W": 3}, {"N": 3, "H": 5, "W": 2}])
    assert result.modified
    assert ops(model) == ["Reshape"]
    assert target_of(model) == [0, 4, -1]


def test_static_dim_is_folded():
    text = f"""{HEAD}
    g (float[N,4] x) => (float[N,4] y) <int64 one = {{1}}> {{
      s = Shape(x)
      c = Gather<axis=0>(s, one)
      f = Cast<to=1>(c)
      y = Div(x, f) }}"""
    model, result = apply_at_two_sizes(PIPE + ",fold-constants,dce", text, [{"N": 1}, {"N": 5}])
    assert result.modified
    assert ops(model) == ["Div"]


def test_dim_of_another_tensor_with_the_same_symbol_becomes_copy():
    # z has the same [N, L] as x: its dims are x's, so the target is [0, 0, 2, 3].
    text = f"""{HEAD}
    g (float[N,L,6] x, float[N,L] z) => (float[N,L,2,3] y) <int64[1] zero = {{0}}, int64[1] one = {{1}}, int64[2] rest = {{2, 3}}> {{
      s = Shape(z)
      s32 = Cast<to=6>(s)
      n = Gather<axis=0>(s32, zero)
      l = Gather<axis=0>(s32, one)
      nl = Concat<axis=0>(n, l)
      nl64 = Cast<to=7>(nl)
      t = Concat<axis=0>(nl64, rest)
      y = Reshape(x, t) }}"""
    model, result = apply_at_two_sizes(PIPE, text, [{"N": 1, "L": 4}, {"N": 2, "L": 3}])
    assert result.modified
    assert ops(model) == ["Reshape"]
    assert target_of(model) == [0, 0, 2, 3]


# y = Reshape(r, [N, L2, 6]) where L2 (from w) equals L only at run time: it can only become -1.
MINUS_ONE = """
      s = Shape(r)
      n = Slice(s, zero, one)
      sw = Shape(w)
      l = Slice(sw, one, two)
      t = Concat<axis=0>(n, l, six)
      y = Reshape(r, t) }"""


def test_leftover_dim_needs_nonzero_others_for_minus_one():
    # N may be 0 at run time: Reshape could not infer -1 for an empty tensor, so nothing changes.
    text = f"""{HEAD}
    g (float[N,L,6] x, float[N,L2] w) => (float[N,L2,6] y)
      <int64[1] zero = {{0}}, int64[1] one = {{1}}, int64[1] two = {{2}}, int64[1] six = {{6}}> {{
      r = Relu(x)""" + MINUS_ONE
    model, result = fold_only(text)
    assert not result.modified
    assert "Shape" in ops(model)


def test_leftover_dim_becomes_minus_one_after_a_reshape_that_requires_nonzero():
    # The first Reshape infers a -1 next to N: whenever y is computed, N is not 0.
    text = f"""{HEAD}
    g (float[N,L,2,3] x, float[N,L2] w) => (float[N,L2,6] y)
      <int64[1] zero = {{0}}, int64[1] one = {{1}}, int64[1] two = {{2}}, int64[1] six = {{6}},
       int64[3] flat = {{0, -1, 6}}> {{
      x6 = Reshape(x, flat)
      r = Relu(x6)""" + MINUS_ONE
    model, result = apply_at_two_sizes(PIPE, text, [{"N": 1, "L": 4, "L2": 4}, {"N": 3, "L": 2, "L2": 2}])
    assert result.modified
    assert ops(model) == ["Reshape", "Relu", "Reshape"]
    assert target_of(model) == [0, -1, 6]


def test_reshape_of_flattened_input_reads_the_input():
    text = f"""{HEAD}
    g (float[N,3,L] x) => (float[N,3,L] y) <int64[1] m1 = {{-1}}> {{
      flat = Reshape(x, m1)
      e = Exp(flat)
      s = Shape(x)
      y = Reshape(flat, s) }}"""
    model, result = apply_at_two_sizes(PIPE, text, [{"N": 1, "L": 2}, {"N": 4, "L": 3}])
    assert result.modified
    reshape = [n for n in model.graph if n.op_type == "Reshape"][-1]
    assert reshape.inputs[0].name == "x"
    assert target_of(model) == [0, 3, 0]
    assert "Shape" not in ops(model)


def test_unrelated_dynamic_target_stays():
    text = f"""{HEAD}
    g (float[N,6] x, int64[2] t) => (float[?,?] y) {{
      y = Reshape(x, t) }}"""
    model, result = fold_only(text)
    assert not result.modified


def test_shape_that_is_a_graph_output_stays():
    text = f"""{HEAD}
    g (float[2,3] x) => (int64[2] y) {{
      y = Shape(x) }}"""
    model, result = fold_only(text)
    assert not result.modified
    assert ops(model) == ["Shape"]


def test_constant_of_shape_is_folded_when_small():
    text = f"""{HEAD}
    g (float[N,3] x) => (float[N,3] y) <int64[2] s = {{2, 3}}> {{
      c = ConstantOfShape<value = float[1] {{1.5}}>(s)
      r = ReduceSum<keepdims=1>(c)
      y = Add(x, r) }}"""
    model, result = apply_at_two_sizes(PIPE, text, [{"N": 1}, {"N": 3}])
    assert result.modified
    assert "ConstantOfShape" not in ops(model)
    model, result = fold_only(text, max_elements=4)
    assert not result.modified
    assert "ConstantOfShape" in ops(model)


def test_known_zero_is_not_moved_to_another_input():
    # Shape(x) is the constant [0, 3]; its 0 copies flat's dim, and would copy another on x.
    text = f"""{HEAD}
    g (float[0,3] x) => (float[0,3] y) <int64[1] m1 = {{-1}}> {{
      flat = Reshape(x, m1)
      s = Shape(x)
      y = Reshape(flat, s) }}"""
    model, _ = apply(PIPE, text)
    reshape = [n for n in model.graph if n.op_type == "Reshape"][-1]
    assert reshape.inputs[0].name == "flat"
    assert np.array_equal(target_of(model), [0, 3])


def test_scalar_shape_values_fold_to_scalar_initializers():
    """A folded 0-d shape value keeps rank 0 (np.ascontiguousarray would make it [1])."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,5] x) => (float[2,5] y) {
        s = Shape(x)
        i = Constant<value = int64 {1}>()
        n = Gather(s, i)
        f = Cast<to = 1>(n)
        y = Add(x, f)
    }
    """
    from onnxpress.ir import verify_structure

    model, result = apply("infer-shapes,fold-shapes", text)
    assert result.modified
    assert verify_structure(model) == []
    assert all(len(v.shape) == v.const_value.numpy().ndim for v in model.graph.initializers.values())
