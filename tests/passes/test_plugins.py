"""Plugins: a pass registered from the `onnxpress.passes` entry-point group, and --load-plugin."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from onnxpress.errors import InputError
from onnxpress.passes import registry

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PLUGIN = textwrap.dedent(
    '''
    import dataclasses
    from onnxpress import Pass, PassResult

    class NegToMulPass(Pass):
        """Rewrite Neg(x) as Mul(x, -1) (a plugin pass for the tests)."""

        name = "neg-to-mul"

        @dataclasses.dataclass(frozen=True)
        class Options:
            factor: float = -1.0

        def run(self, model, am):
            import numpy as np
            import onnx_ir as ir

            changed = 0
            for node in list(model.graph):
                if node.op_type == "Neg":
                    const = ir.Value(name=f"{node.name}_k", const_value=ir.tensor(np.array(self.options.factor, np.float32)))
                    const.shape, const.dtype = ir.Shape([]), ir.DataType.FLOAT
                    model.graph.register_initializer(const)
                    mul = ir.node("Mul", [node.inputs[0], const], name=f"{node.name}_mul")
                    model.graph.insert_before(node, mul)
                    ir.convenience.replace_all_uses_with(node.outputs[0], mul.outputs[0], replace_graph_outputs=True)
                    name = node.outputs[0].name
                    model.graph.remove(node, safe=True)
                    mul.outputs[0].name = name  # keep graph output names stable
                    changed += 1
            return PassResult(model, changed > 0, {"rewritten": changed})
    '''
)


def _make_distribution(root):
    pkg = root / "negplug"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(PLUGIN)
    dist = root / "negplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: negplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[onnxpress.passes]\nneg-to-mul = negplug:NegToMulPass\n")


def test_entry_point_plugin_is_found_and_runs(tmp_path):
    _make_distribution(tmp_path)
    script = textwrap.dedent(
        """
        import numpy as np, onnx, onnx_ir as ir
        from onnxpress.passes import PassManager, list_entries
        from onnxpress.backends.ort import OrtRunner
        assert "neg-to-mul" in [e.name for e in list_entries()]
        proto = onnx.parser.parse_model('''<ir_version: 8, opset_import: ["" : 17]>
        g (float[3] x) => (float[3] y) { y = Neg(x) }''')
        model = ir.serde.deserialize_model(proto)
        pm = PassManager.from_pipeline("neg-to-mul{factor=-1.0},dce")
        pm(model)
        assert [n.op_type for n in model.graph] == ["Mul"], [n.op_type for n in model.graph]
        assert pm.records[0].stats == {"rewritten": 1}
        x = np.array([1, -2, 3], np.float32)
        (out,) = OrtRunner().run(model, [{"x": x}])
        np.testing.assert_array_equal(out["y"], -x)
        print("PLUGIN-OK")
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), REPO]))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "PLUGIN-OK" in proc.stdout


def test_load_plugin_by_module_and_by_file(tmp_path, monkeypatch):
    (tmp_path / "negplug_mod.py").write_text(PLUGIN.replace("neg-to-mul", "neg-to-mul-mod"))
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.load_plugin("negplug_mod:NegToMulPass")
    assert registry.get_pass("neg-to-mul-mod").__name__ == "NegToMulPass"

    path = tmp_path / "file_plugin.py"
    path.write_text(PLUGIN.replace("neg-to-mul", "neg-to-mul-file").replace("class NegToMulPass(Pass)", "@register_pass\nclass NegToMulPass(Pass)").replace("from onnxpress import Pass, PassResult", "from onnxpress import Pass, PassResult, register_pass"))
    registry.load_plugin(str(path))
    assert registry.get_pass("neg-to-mul-file").name == "neg-to-mul-file"


def test_bad_plugins_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="cannot load plugin 'no_such_module_xyz'"):
        registry.load_plugin("no_such_module_xyz")
    with pytest.raises(InputError, match="no such file"):
        registry.load_plugin(str(tmp_path / "missing.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('broken plugin')\n")
    with pytest.raises(InputError, match="broken plugin"):
        registry.load_plugin(str(broken))
