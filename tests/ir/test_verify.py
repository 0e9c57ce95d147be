"""Structural verification: a correct model is clean, and each hand-made break is named."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxpress.errors import VerificationError
from onnxpress.ir.verify import check_structure, verify_structure
from tests.util import model_from_text

TEXT = """
<ir_version: 9, opset_import: ["": 18, "local": 1]>
g (bool c, float[4] x) => (float[4] y, float[4] z) <float[4] w = {1, 2, 3, 4}> {
  a = Mul(x, w)
  b = local.AddTwice(a, x)
  y = If (c) <then_branch = t () => (float[4] o) { o = Add(b, w) },
              else_branch = e () => (float[4] o2) { o2 = Neg(a) }>
  z = Relu(b)
}
<domain: "local", opset_import: ["": 18]>
AddTwice (p, q) => (r) {
  s = Add(p, q)
  r = Add(s, q)
}
"""


@pytest.fixture
def model() -> ir.Model:
    return model_from_text(TEXT)


def _nodes(model: ir.Model) -> dict[str, ir.Node]:
    return {node.outputs[0].name: node for node in model.graph}


def _one(problems: list[str], *words: str) -> None:
    assert len(problems) == 1, problems
    for word in words:
        assert word in problems[0], problems[0]


def test_correct_model_with_subgraph_and_function_is_clean(model):
    assert verify_structure(model) == []
    check_structure(model)


def test_undefined_input(model):
    _nodes(model)["z"].replace_input_with(0, ir.Value(name="ghost"))
    _one(verify_structure(model), "'ghost'", "not defined", "Relu")


def test_undefined_outer_value_in_subgraph(model):
    branch = _nodes(model)["y"].attributes["then_branch"].value
    branch[0].replace_input_with(1, ir.Value(name="nowhere"))
    _one(verify_structure(model), "subgraph 't'", "'nowhere'", "not defined")


def test_subgraph_may_not_read_a_later_outer_value(model):
    nodes = _nodes(model)
    branch = nodes["y"].attributes["else_branch"].value
    branch[0].replace_input_with(0, nodes["z"].outputs[0])  # z is computed after the If
    _one(verify_structure(model), "subgraph 'e'", "'z'", "not defined")


def test_not_topologically_sorted(model):
    nodes = _nodes(model)
    model.graph.remove(nodes["a"])
    model.graph.append(nodes["a"])
    problems = verify_structure(model)
    assert any("'a'" in p and "later node" in p for p in problems), problems


def test_duplicate_value_and_node_names(model):
    nodes = _nodes(model)
    nodes["z"].outputs[0].name = "b"
    _one(verify_structure(model), "value name 'b' is used twice")
    nodes["z"].outputs[0].name = "z"
    nodes["a"].name = nodes["z"].name = "same"
    _one(verify_structure(model), "node name 'same' is used twice")


def test_graph_output_not_produced(model):
    model.graph.outputs.append(ir.Value(name="dangling", shape=ir.Shape([4])))
    _one(verify_structure(model), "graph output 'dangling'")


def test_initializer_shape_and_dtype_mismatch(model):
    w = model.graph.initializers["w"]
    w.shape = ir.Shape([5])
    _one(verify_structure(model), "initializer 'w'", "shape [5]", "[4]")
    w.shape = ir.Shape([4])
    w.const_value = ir.tensor(np.arange(4, dtype=np.int64), name="w")
    _one(verify_structure(model), "initializer 'w'", "FLOAT", "INT64")


def test_domain_missing_from_opset_imports(model):
    _nodes(model)["z"].domain = "com.example"
    _one(verify_structure(model), "'com.example'", "opset imports")
    del model.opset_imports["local"]
    assert len(verify_structure(model)) == 2


def test_missing_function(model):
    _nodes(model)["b"].op_type = "AddThrice"
    _one(verify_structure(model), "local::AddThrice", "does not define")


def test_problem_inside_function_body(model):
    function = model.functions[("local", "AddTwice", "")]
    function[1].replace_input_with(1, ir.Value(name="stray"))
    _one(verify_structure(model), "function local::AddTwice", "'stray'")


def test_check_structure_raises_with_the_first_problems(model):
    nodes = _nodes(model)
    for i in range(7):
        model.graph.outputs.append(ir.Value(name=f"dangling{i}"))
    nodes["z"].domain = "com.example"
    with pytest.raises(VerificationError, match=r"opset imports.*and 3 more") as info:
        check_structure(model)
    assert len(info.value.details["problems"]) == 8
