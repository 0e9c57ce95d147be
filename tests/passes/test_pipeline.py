"""Pipeline text: parse -> print round trip, building through the registry, clear errors."""

from __future__ import annotations

import re

import pytest

from onnxpress.errors import PipelineError
from onnxpress.passes import build_pipeline, expand_pipeline_text, parse_pipeline, print_pipeline

ROUND_TRIP = [
    "",
    "dce",
    "fold-constants,cse,dce",
    "fixpoint{max-iters=4}(fold-constants,cse,dce)",
    "fixpoint{max-iters=2}(fixpoint{max-iters=3}(cse),dce),dce",
    "prune-channels{ratio=0.3 importance=l2 round-to=8},quantize-qdq{calibration=minmax}",
    'x{ignore="re:conv (1|2)" empty=""}',
    "x{regex=a(b|c)d},y",
    "fixpoint()",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_parse_print_round_trips_exactly(text):
    assert print_pipeline(parse_pipeline(text)) == text


def test_parse_structure():
    (fix, dce) = parse_pipeline("fixpoint{max-iters=4}(fold-constants,cse),dce")
    assert fix.name == "fixpoint" and fix.options == [("max-iters", "4")]
    assert [c.name for c in fix.children] == ["fold-constants", "cse"]
    assert dce.children is None and dce.options == []


def test_whitespace_is_tolerated_and_normalised():
    assert print_pipeline(parse_pipeline(" cse , fixpoint{ max-iters=2 }( dce ) ")) == "cse,fixpoint{max-iters=2}(dce)"


@pytest.mark.parametrize(
    "text, message",
    [
        ("cse,", "expected a pass name"),
        ("fixpoint{max-iters=4", "missing '}'"),
        ("fixpoint(cse", "missing ')'"),
        ("cse)", "unexpected ')'"),
        ('x{a="unterminated}', "unterminated"),
        ("x{a}", "expected '='"),
    ],
)
def test_syntax_errors_are_pipeline_errors(text, message):
    with pytest.raises(PipelineError, match=re.escape(message)):
        parse_pipeline(text)


def test_build_and_print_back():
    passes = build_pipeline("fixpoint{max-iters=3}(fold-constants,cse),dce")
    assert [p.name for p in passes] == ["fixpoint", "dce"]
    assert passes[0].options.max_iters == 3
    assert [p.name for p in passes[0].passes] == ["fold-constants", "cse"]
    assert ",".join(p.to_text() for p in passes) == "fixpoint{max-iters=3}(fold-constants,cse),dce"


def test_named_pipelines_expand():
    assert expand_pipeline_text("O0") == ""
    o2 = expand_pipeline_text("O2")
    assert "fixpoint" in o2 and "dce" in o2
    # Expanded text is itself a valid pipeline that expands to itself.
    assert expand_pipeline_text(o2) == o2


def test_unknown_pass_lists_close_matches():
    with pytest.raises(PipelineError, match=r"unknown pass 'fold-constant'; did you mean fold-constants"):
        build_pipeline("fold-constant")


def test_unknown_option_lists_close_matches():
    with pytest.raises(PipelineError, match=r"no option 'max-iter'; did you mean max-iters"):
        build_pipeline("fixpoint{max-iter=2}(cse)")


def test_bad_option_value_and_validation():
    with pytest.raises(PipelineError, match="not a valid int"):
        build_pipeline("fixpoint{max-iters=many}(cse)")
    with pytest.raises(PipelineError, match="at least 1"):
        build_pipeline("fixpoint{max-iters=0}(cse)")


def test_nesting_only_for_adaptors():
    with pytest.raises(PipelineError, match="not an adaptor"):
        build_pipeline("cse(dce)")
    with pytest.raises(PipelineError, match="takes no options"):
        build_pipeline("O2{x=1}")


def test_pruning_passes_infer_shapes_themselves():
    """prune-channels works as the first pass of a pipeline (it infers the shapes it needs)."""
    import os

    import onnxpress

    example = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "examples", "tiny_resnet.onnx")
    result = onnxpress.optimize(example, "prune-channels{ratio=0.25}", verify="numeric",
                                input_shapes={"input": [1, 3, 32, 32]})
    stats = [r for r in result.report.passes if r["name"] == "prune-channels"][0]["stats"]
    assert stats["prunable_groups"] > 0 and stats["channels_removed"] > 0
