from __future__ import annotations

from onnxpress.passes.cleanup.onnxscript_rewrite import lossless_rules
from tests.passes.cleanup._common import apply, ops

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'


def test_min_max_becomes_clip():
    text = f"""{HEAD}
    g (float[4] x) => (float[4] y) <float lo = {{0.0}}, float hi = {{6.0}}> {{
      a = Max(x, lo)
      y = Min(a, hi) }}"""
    model, result = apply("onnxscript-rewrite,dce", text)
    assert result.modified
    assert ops(model) == ["Clip"]


def test_no_match_leaves_model():
    text = f"""{HEAD}
    g (float[4] x) => (float[4] y) {{ y = Relu(x) }}"""
    model, result = apply("onnxscript-rewrite", text)
    assert not result.modified
    assert ops(model) == ["Relu"]


def test_excludes_inexact_rules():
    names = {type(rule).__name__ + str(getattr(rule, "name", "")) for rule in lossless_rules()}
    assert not any("CastCast" in n or "SlicesSplit" in n for n in names)


def test_float16_round_trip_is_kept():
    # onnxscript's CastCast would turn double -> float -> float16 into double -> float16
    text = f"""{HEAD}
    g (double[4] x) => (float16[4] y) {{ a = Cast<to=1>(x)
      y = Cast<to=10>(a) }}"""
    model, result = apply("infer-shapes,onnxscript-rewrite", text)
    assert ops(model) == ["Cast", "Cast"]
