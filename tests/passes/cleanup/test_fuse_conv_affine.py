"""fuse-conv-affine: per-channel Mul after a Conv, Mul / Add before one, folded into W and b."""

from __future__ import annotations

import pytest

from tests.passes.cleanup._common import apply, ops

HEAD = '<ir_version: 8, opset_import: ["" : 17]>'
W3 = "float[2,2,3,3] w = {" + ", ".join(str(0.1 * (i % 7) - 0.3) for i in range(36)) + "}"
B = "float[2] b = {0.25, -0.5}"


@pytest.mark.parametrize(
    "scale, conv",
    [
        ("float[2,1,1] s = {0.5, -1.5}", "Conv <pads = [1, 1, 1, 1]> (x, w, b)"),
        ("float[1,2,1,1] s = {2.0, 3.0}", "Conv <pads = [1, 1, 1, 1]> (x, w)"),
        ("float s = {-0.75}", "Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (x, w, b)"),
    ],
    ids=["per-channel", "no-bias", "scalar"],
)
def test_folds_a_scale_after_the_conv(scale, conv):
    text = f"""{HEAD}
    g (float[1,2,6,6] x) => (float[1,2,N,M] y) <{W3}, {B}, {scale}> {{
      k = {conv}
      y = Mul(s, k) }}"""
    model, result = apply("fuse-conv-affine", text)
    assert result.modified
    assert ops(model) == ["Conv"]


def test_scale_and_shift_after_the_conv_become_one_conv_in_o2():
    text = f"""{HEAD}
    g (float[1,2,6,6] x) => (float[1,2,6,6] y) <{W3}, {B}, float s = {{0.5}}, float[2,1,1] t = {{1.0, -2.0}}> {{
      k = Conv <pads = [1, 1, 1, 1]> (x, w, b)
      m = Mul(k, s)
      y = Add(m, t) }}"""
    model, _ = apply("O2", text)
    assert ops(model) == ["Conv"]


@pytest.mark.parametrize(
    ("affine", "conv", "folded"),
    [
        ("a = Mul(x, s)", "Conv <pads = [1, 1, 1, 1]> (a, w, b)", True),  # a scale survives zero padding
        ("a = Add(t, x)", "Conv (a, w1)", True),  # no padding: the shift goes into a new bias
        ("a = Add(x, t)", "Conv <pads = [1, 1, 1, 1]> (a, w, b)", False),  # borders would see the shift
        ("a = Add(x, t)", "Conv <auto_pad = \"SAME_UPPER\"> (a, w, b)", False),
    ],
    ids=["scale-padded", "shift-unpadded", "shift-padded", "shift-same"],
)
def test_folds_an_affine_before_the_conv_where_exact(affine, conv, folded):
    text = f"""{HEAD}
    g (float[1,2,6,6] x) => (float[1,2,N,M] y) <{W3}, {B}, float[2,1,1] s = {{0.5, -2.0}},
        float[1,2,1,1] t = {{0.25, 1.5}}, float[2,2,1,1] w1 = {{1.0, -0.5, 0.25, 2.0}}> {{
      {affine}
      y = {conv} }}"""
    model, result = apply("fuse-conv-affine", text)
    assert bool(result.modified) == folded
    assert ops(model) == (["Conv"] if folded else [affine.split("=")[1].split("(")[0].strip(), "Conv"])


def test_grouped_and_transposed_convolutions():
    # depthwise Conv (group 2) after a per-channel scale; ConvTranspose (group 2) before one
    text = f"""{HEAD}
    g (float[1,2,5,5] x) => (float[1,4,10,10] y) <float[2,1,3,3] dw = {{{", ".join(str(0.1 * i - 0.8) for i in range(18))}}},
        float[2,2,2,2] tw = {{{", ".join(str(0.05 * i - 0.4) for i in range(16))}}}, float[4] tb = {{0.1, 0.2, 0.3, 0.4}},
        float[2,1,1] s = {{0.5, -3.0}}, float[4,1,1] r = {{1.0, 2.0, -1.0, 0.5}}> {{
      a = Mul(x, s)
      d = Conv <group = 2, pads = [1, 1, 1, 1]> (a, dw)
      t = ConvTranspose <group = 2, strides = [2, 2]> (d, tw, tb)
      y = Mul(t, r) }}"""
    model, result = apply("fuse-conv-affine", text)
    assert result.modified
    assert ops(model) == ["Conv", "ConvTranspose"]


@pytest.mark.parametrize(
    "body",
    [
        # the weight is shared by two convs
        "k = Conv <pads = [1, 1, 1, 1]> (x, w, b)\n k2 = Conv <pads = [1, 1, 1, 1]> (x, w, b)\n"
        " m = Mul(k, s)\n y = Add(m, k2)",
        # the conv output has another reader
        "k = Conv <pads = [1, 1, 1, 1]> (x, w, b)\n m = Mul(k, s)\n y = Add(m, k)",
        # a per-position scale
        "k = Conv <pads = [1, 1, 1, 1]> (x, w, b)\n y = Mul(k, p)",
    ],
    ids=["shared-weight", "second-reader", "per-position"],
)
def test_leaves_what_it_cannot_fold_exactly(body):
    text = f"""{HEAD}
    g (float[1,2,6,6] x) => (float[1,2,6,6] y) <{W3}, {B}, float[2,1,1] s = {{0.5, 2.0}},
        float[6,6] p = {{{", ".join(str(i) for i in range(36))}}}> {{
      {body} }}"""
    model, result = apply("fuse-conv-affine", text, check=False)
    assert not result.modified
