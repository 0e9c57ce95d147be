"""-O1 / -O2 end to end on small models with subgraphs, functions and custom-domain nodes."""

from __future__ import annotations

import pytest

from tests.passes.cleanup._common import apply, ops

CNN = """<ir_version: 8, opset_import: ["" : 17]>
g (float[1,2,5,5] x) => (float[1,8] y)
  <float[3,2,3,3] w = {0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, 0.8, -0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
                       0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, 0.8, -0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
                       0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, 0.8, -0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9},
   float[3,1,1] cb = {0.1, 0.2, 0.3},
   float[3] s = {1.0, 2.0, 0.5}, float[3] b = {0.1, 0.2, 0.3}, float[3] m = {0.0, 0.1, -0.1}, float[3] v = {1.0, 0.5, 2.0},
   float[27,8] fw = {0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08,
                     0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08,
                     0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08,
                     0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08,
                     0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08,
                     0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08,
                     0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08,
                     0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08,
                     0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08,
                     0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08,
                     0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08,
                     0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08,
                     0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08,
                     0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08},
   float[8] fb = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0}, float one = {1.0},
   int64 zero = {0}, int64[1] zero1 = {0}, int64[1] minus1 = {-1}> {
  c = Conv(x, w)
  cb2 = Add(c, cb)
  n = BatchNormalization(cb2, s, b, m, v)
  r = Relu(n)
  d = Dropout(r)
  shp = Shape(d)
  batch = Gather<axis=0>(shp, zero)
  batch1 = Unsqueeze(batch, zero1)
  flat_shape = Concat<axis=0>(batch1, minus1)
  f = Reshape(d, flat_shape)
  i = Identity(f)
  mm = MatMul(i, fw)
  a = Add(mm, fb)
  y = Mul(a, one)
}"""


def test_o2_collapses_a_small_cnn():
    model, result = apply("O2", CNN)
    assert result.modified
    assert ops(model) == ["Conv", "Relu", "Reshape", "Gemm"]


def test_o1_is_cheap_and_safe():
    model, result = apply("O1", CNN)
    assert result.modified
    assert "Identity" not in ops(model) and "Dropout" not in ops(model)


SUBGRAPHS = """<ir_version: 8, opset_import: ["" : 17, "local" : 1, "com.microsoft" : 1]>
g (float[2,3] x, bool cond) => (float[2,3] y, float[2,3] z) <float zero = {0.0}> {
  g1 = com.microsoft.FastGelu(x)
  y = If(cond) <
    then_branch = t () => (float[2,3] a) { t1 = Add(g1, zero)
      a = local.F(t1) },
    else_branch = e () => (float[2,3] b) { e1 = Transpose<perm=[1, 0]>(g1)
      e2 = Transpose<perm=[1, 0]>(e1)
      b = Relu(e2) }>
  z = local.F(x)
}
<domain: "local", opset_import: ["" : 17]>
F (p) => (q) { p1 = Identity(p)
  q = Neg(p1) }"""


@pytest.mark.parametrize("pipeline", ["O1", "O2"])
def test_subgraphs_functions_and_custom_domains(pipeline):
    model, result = apply(pipeline, SUBGRAPHS)
    assert result.modified
    top = model.graph
    assert ops(model) == ["FastGelu", "If", "F"]
    assert top.node(0).domain == "com.microsoft"
    if pipeline == "O2":
        if_node = top.node(1)
        assert [n.op_type for n in if_node.attributes["then_branch"].as_graph()] == ["F"]
        assert [n.op_type for n in if_node.attributes["else_branch"].as_graph()] == ["Relu"]
    assert [n.op_type for n in model.functions[("local", "F", "")]] == ["Neg"]


def test_o2_is_idempotent_on_its_output():
    model, _ = apply("O2", CNN)
    from onnxpress.passes import PassManager

    assert not PassManager.from_pipeline("O2")(model).modified or ops(model) == ["Conv", "Relu", "Reshape", "Gemm"]
