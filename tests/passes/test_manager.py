"""PassManager, AnalysisManager invalidation, PassContext, and running our passes in onnx_ir."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir
import pytest

from onnxpress.errors import PassFailure
from onnxpress.passes import Analysis, AnalysisManager, Pass, PassContext, PassManager, PassResult
from tests.util import model_from_text

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,4] x) => (float[2,4] y) {
    a = Identity(x)
    b = Relu(a)
    y = Neg(b)
}
"""


class NodeCount(Analysis):
    def compute(self, model, am):
        return sum(1 for _ in model.graph)


class OpTypes(Analysis):
    def compute(self, model, am):
        am.get(NodeCount, model)  # analyses may depend on others
        return sorted(n.op_type for n in model.graph)


class UsesAnalyses(Pass):
    """Reads both analyses; changes nothing."""

    name = "test-uses-analyses"
    preserved_analyses = "all"

    def run(self, model, am):
        self.seen = (am.get(NodeCount, model), am.get(OpTypes, model))
        return PassResult(model, False)


class RemoveFirstIdentity(Pass):
    """Removes one Identity; keeps NodeCount? No: it changes the count, so it preserves OpTypes only as a test."""

    name = "test-remove-identity"
    preserved_analyses = frozenset({OpTypes})  # deliberately (wrongly) claims OpTypes survives

    def run(self, model, am):
        for node in model.graph:
            if node.op_type == "Identity":
                ir.convenience.replace_all_uses_with(node.outputs[0], node.inputs[0])
                model.graph.remove(node, safe=True)
                return PassResult(model, True, {"removed": 1})
        return PassResult(model, False)


def test_analysis_is_cached_and_invalidated():
    model = model_from_text(MODEL)
    am = AnalysisManager()
    user = UsesAnalyses()
    pm = PassManager([user, RemoveFirstIdentity(), UsesAnalyses(), UsesAnalyses()], analysis_manager=am)
    pm(model)
    # First read computes both; the removal invalidates NodeCount but keeps OpTypes (as declared);
    # the third pass recomputes NodeCount only; the fourth hits the cache.
    assert am.computed[NodeCount] == 2
    assert am.computed[OpTypes] == 1
    assert user.seen == (3, ["Identity", "Neg", "Relu"])
    assert pm.passes[2].seen[0] == 2
    assert [r.modified for r in pm.records] == [False, True, False, False]
    assert pm.records[1].stats == {"removed": 1}


def test_unmodified_pass_keeps_all_analyses():
    model = model_from_text(MODEL.replace("a = Identity(x)\n    b = Relu(a)", "b = Relu(x)"))
    am = AnalysisManager()
    PassManager([UsesAnalyses(), RemoveFirstIdentity(), UsesAnalyses()], analysis_manager=am)(model)
    assert am.computed[NodeCount] == 1


def test_foreign_onnx_ir_pass_runs_and_invalidates():
    import onnx_ir.passes.common as common

    model = model_from_text(MODEL)
    am = AnalysisManager()
    pm = PassManager([UsesAnalyses(), common.IdentityEliminationPass(), UsesAnalyses()], analysis_manager=am)
    pm(model)
    assert am.computed[NodeCount] == 2
    assert pm.records[1].name == "IdentityEliminationPass" and pm.records[1].modified


def test_our_pass_runs_inside_plain_onnx_ir_sequential():
    model = model_from_text(MODEL)
    result = ir.passes.Sequential(RemoveFirstIdentity(), UsesAnalyses())(model)
    assert result.modified and result.model is model
    assert [n.op_type for n in model.graph] == ["Relu", "Neg"]


def test_failing_pass_is_named_with_previous_passes():
    class Boom(Pass):
        name = "test-boom"

        def run(self, model, am):
            raise RuntimeError("kaboom")

    model = model_from_text(MODEL)
    with pytest.raises(PassFailure, match=r"pass 'test-boom' failed \(after test-remove-identity\): RuntimeError: kaboom") as info:
        PassManager([RemoveFirstIdentity(), Boom()])(model)
    assert info.value.pass_name == "test-boom"
    assert info.value.previous == ["test-remove-identity"]


def test_options_are_frozen_dataclasses_and_printed():
    class WithOptions(Pass):
        name = "test-with-options"

        @dataclasses.dataclass(frozen=True)
        class Options:
            ratio: float = 0.5
            names: tuple[str, ...] = ()
            exact: bool = False

        def run(self, model, am):
            return PassResult(model, False)

    p = WithOptions(ratio=0.25, names=("a", "b"), exact=True)
    assert p.to_text() == "test-with-options{ratio=0.25 names=a,b exact=true}"
    assert WithOptions().to_text() == "test-with-options"
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.options.ratio = 1.0  # type: ignore[misc]


def test_pass_names_must_be_kebab_case():
    with pytest.raises(ValueError, match="kebab-case"):

        class Bad(Pass):  # noqa: F841
            name = "Bad_Name"

            def run(self, model, am):
                return PassResult(model, False)


def test_pass_context_scoping():
    assert PassContext.current().target == "cpu"
    ctx = PassContext(target="x", data=[{"a": 1}, {"a": 2}, {"a": 3}])
    with ctx:
        assert PassContext.current() is ctx
        assert ctx.feeds(limit=2) == [{"a": 1}, {"a": 2}]
        with PassContext(target="inner"):
            assert PassContext.current().target == "inner"
        assert PassContext.current() is ctx
    assert PassContext.current() is not ctx
