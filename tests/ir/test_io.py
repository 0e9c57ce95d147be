"""load/save: sources, lazy weights, atomic writes, external data, and every refused input."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import external_data_helper, helper, numpy_helper

from onnxpress.errors import InputError
from onnxpress.ir import io
from tests.util import assert_same_outputs, model_from_text, random_feeds

TEXT = """
<ir_version: 9, opset_import: ["": 18]>
g (float[N, 4] x) => (float[N, 3] y)
  <float[4, 3] w = {1,2,3,4,5,6,7,8,9,10,11,12}, float[3] b = {0.5, -1, 2}> {
  t = MatMul(x, w)
  y = Add(t, b)
}
"""


@pytest.fixture
def model() -> ir.Model:
    return model_from_text(TEXT)


def _files(folder) -> list[str]:
    return sorted(os.listdir(folder))


def _in_memory(model: ir.Model) -> ir.Model:
    """A copy whose external weights are read into memory (the ORT runner sends models as bytes)."""
    return ir.external_data.load_to_model(model.clone())


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------
def test_load_from_every_source(model, tmp_path):
    path = tmp_path / "m.onnx"
    io.save(model, path)
    proto = onnx.load(path)
    feeds = random_feeds(model)
    for source in (str(path), path, path.read_bytes(), proto):
        loaded = io.load(source)
        assert isinstance(loaded, ir.Model)
        assert_same_outputs(model, loaded, feeds)
    assert io.load(model) is model


def test_external_weights_stay_lazy(model, tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    io.save(model, path, external_data=True, threshold_bytes=0)

    def no_reads(self, *args, **kwargs):
        raise AssertionError("a weight was read during load")

    with monkeypatch.context() as patch:
        patch.setattr(ir.ExternalTensor, "_load", no_reads)
        patch.setattr(ir.ExternalTensor, "tofile", no_reads)
        loaded = io.load(path)
        assert io.weight_bytes(loaded) == 4 * (12 + 3)
    tensors = [v.const_value for v in loaded.graph.initializers.values()]
    assert all(isinstance(t, ir.ExternalTensor) for t in tensors)
    assert all(t.raw is None for t in tensors)  # not even memory-mapped yet
    np.testing.assert_array_equal(tensors[1].numpy(), np.array([0.5, -1, 2], np.float32))


def test_bytes_with_external_data_need_base_dir(model, tmp_path):
    path = tmp_path / "m.onnx"
    io.save(model, path, external_data=True, threshold_bytes=0)
    data = path.read_bytes()
    with pytest.raises(InputError, match="base_dir"):
        io.load(data)
    loaded = io.load(data, base_dir=str(tmp_path))
    assert_same_outputs(model, _in_memory(loaded), random_feeds(model))


# ----------------------------------------------------------------------------------------------
# Save
# ----------------------------------------------------------------------------------------------
def test_save_round_trip_on_ort(model, tmp_path):
    path = tmp_path / "m.onnx"
    io.save(model, path)
    assert _files(tmp_path) == ["m.onnx"]
    assert_same_outputs(model, io.load(path), random_feeds(model))
    assert io.file_size(path) == os.path.getsize(path)


def test_save_writes_no_value_info_for_initializers_or_io(model, tmp_path):
    from onnxpress.ir.shapes import infer_shapes

    infer_shapes(model)  # types on every value, as after any pass
    path = tmp_path / "m.onnx"
    io.save(model, path)
    proto = onnx.load(path)
    names = [v.name for v in proto.graph.value_info]
    assert "t" in names  # intermediate shapes are kept
    assert not {"w", "b", "x", "y"} & set(names)
    assert_same_outputs(model, io.load(path), random_feeds(model))


def test_save_with_external_data_when_asked(model, tmp_path):
    path = tmp_path / "m.onnx"
    io.save(model, path, external_data=True, threshold_bytes=0)
    assert _files(tmp_path) == ["m.onnx", "m.onnx.data"]
    assert os.path.getsize(tmp_path / "m.onnx.data") == 4 * (12 + 3)
    proto = onnx.load(path, load_external_data=False)
    assert all(external_data_helper.uses_external_data(t) for t in proto.graph.initializer)
    assert {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"} == {
        "m.onnx.data"
    }
    loaded = io.load(path)
    assert_same_outputs(model, _in_memory(loaded), random_feeds(model))
    assert io.file_size(path) == os.path.getsize(path) + 60
    # The threshold keeps small tensors inside the proto.
    io.save(model, tmp_path / "t.onnx", external_data=True, threshold_bytes=20)
    proto = onnx.load(tmp_path / "t.onnx", load_external_data=False)
    assert [external_data_helper.uses_external_data(t) for t in proto.graph.initializer] == [True, False]


def test_resave_lazy_model_elsewhere(model, tmp_path):
    """Tensors memory-mapped from one file are written into another (embedded and external)."""
    src = tmp_path / "src"
    src.mkdir()
    io.save(model, src / "m.onnx", external_data=True, threshold_bytes=0)
    loaded = io.load(src / "m.onnx")
    io.save(loaded, tmp_path / "embedded.onnx", external_data=False)
    io.save(loaded, tmp_path / "external.onnx", external_data=True, threshold_bytes=0)
    # the model object is unchanged: still mapped from the source
    assert all(isinstance(v.const_value, ir.ExternalTensor) for v in loaded.graph.initializers.values())
    assert os.path.dirname(loaded.graph.initializers["w"].const_value.path) == str(src)
    (src / "m.onnx").unlink()
    (src / "m.onnx.data").unlink()
    feeds = random_feeds(model)
    assert_same_outputs(model, io.load(tmp_path / "embedded.onnx"), feeds)
    assert_same_outputs(model, _in_memory(io.load(tmp_path / "external.onnx")), feeds)


def test_save_refuses_to_overwrite_its_inputs(model, tmp_path):
    path = tmp_path / "m.onnx"
    io.save(model, path, external_data=True, threshold_bytes=0)
    loaded = io.load(path)
    with pytest.raises(InputError, match="loaded from"):
        io.save(loaded, path)
    # another model name whose data file would be the mapped one
    os.symlink(path, tmp_path / "alias.onnx")
    with pytest.raises(InputError, match="loaded from"):
        io.save(loaded, tmp_path / "alias.onnx")
    os.link(tmp_path / "m.onnx.data", tmp_path / "other.onnx.data")
    with pytest.raises(InputError, match="weights are read from"):
        io.save(loaded, tmp_path / "other.onnx", external_data=True)


def test_failed_save_keeps_old_output_and_leaves_no_temporaries(model, tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    io.save(model, path, external_data=True, threshold_bytes=0)
    before = (path.read_bytes(), (tmp_path / "m.onnx.data").read_bytes())
    other = model_from_text(TEXT.replace("0.5, -1, 2", "7, 8, 9"))

    real_replace = os.replace
    calls = []

    def fail_on_model_replace(src, dst):
        calls.append(dst)
        if str(dst).endswith("m.onnx"):
            raise OSError("disk full (simulated)")
        real_replace(src, dst)

    # failure while serialising the proto: before anything is renamed
    with monkeypatch.context() as patch:
        patch.setattr(ir.serde, "serialize_model", lambda m: (_ for _ in ()).throw(RuntimeError("boom")))
        with pytest.raises(RuntimeError, match="boom"):
            io.save(other, path, external_data=True, threshold_bytes=0)
    assert _files(tmp_path) == ["m.onnx", "m.onnx.data"]
    assert (path.read_bytes(), (tmp_path / "m.onnx.data").read_bytes()) == before

    # failure while writing external data
    def fail_writing(path, tensors):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("no space left (simulated)")

    with monkeypatch.context() as patch:
        patch.setattr(io, "_write_data_file", fail_writing)
        with pytest.raises(InputError, match="no space left"):
            io.save(other, path, external_data=True, threshold_bytes=0)
    assert _files(tmp_path) == ["m.onnx", "m.onnx.data"]
    assert (path.read_bytes(), (tmp_path / "m.onnx.data").read_bytes()) == before

    # failure at the last rename, after the data file was renamed: the old pair is put back
    with monkeypatch.context() as patch:
        patch.setattr(io.os, "replace", fail_on_model_replace)
        with pytest.raises(InputError, match="disk full"):
            io.save(other, path, external_data=True, threshold_bytes=0)
        with pytest.raises(InputError, match="disk full"):
            io.save(other, tmp_path / "m.onnx", external_data=False)
    assert [c for c in calls if not os.path.basename(c).startswith(".")] == [
        str(tmp_path / "m.onnx.data"),
        str(path),  # fails...
        str(tmp_path / "m.onnx.data"),  # ...so the previous data file is put back
        str(path),
    ]
    assert _files(tmp_path) == ["m.onnx", "m.onnx.data"]
    assert (path.read_bytes(), (tmp_path / "m.onnx.data").read_bytes()) == before
    # the original model object was restored after the failed saves
    assert all(type(v.const_value) is not ir.ExternalTensor for v in other.graph.initializers.values())
    io.save(other, tmp_path / "ok.onnx")
    assert_same_outputs(other, io.load(tmp_path / "ok.onnx"), random_feeds(other))


def test_save_errors(model, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        io.save(model, tmp_path / "missing" / "m.onnx")
    with pytest.raises(InputError, match="is a directory"):
        io.save(model, tmp_path)


def test_too_big_for_one_proto_needs_external_data(model, tmp_path, monkeypatch):
    monkeypatch.setattr(io, "PROTO_LIMIT_BYTES", 16)
    with pytest.raises(InputError, match="2 GiB protobuf limit"):
        io.save(model, tmp_path / "m.onnx", external_data=False)
    io.save(model, tmp_path / "m.onnx", threshold_bytes=0)  # chooses external data by itself
    assert _files(tmp_path) == ["m.onnx", "m.onnx.data"]


# ----------------------------------------------------------------------------------------------
# Refused inputs
# ----------------------------------------------------------------------------------------------
def test_unreadable_files(model, tmp_path):
    with pytest.raises(InputError, match=r"nope\.onnx: model file not found"):
        io.load(tmp_path / "nope.onnx")
    with pytest.raises(InputError, match="is a directory"):
        io.load(tmp_path)
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.onnx: the model file is empty"):
        io.load(tmp_path / "empty.onnx")
    data = ir.serde.serialize_model(model).SerializeToString()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.onnx: not a valid ONNX model"):
        io.load(tmp_path / "cut.onnx")
    (tmp_path / "text.onnx").write_bytes(b"this is not a model, just some text\n")
    with pytest.raises(InputError, match=r"text\.onnx: not"):
        io.load(tmp_path / "text.onnx")
    with pytest.raises(InputError, match="not a valid ONNX model"):
        io.load(b"\xff\xff\xff\xff")
    with pytest.raises(InputError, match="no graph"):
        io.load(onnx.ModelProto(ir_version=9))
    with pytest.raises(InputError, match="empty"):
        io.load(b"")
    with pytest.raises(InputError, match="cannot load a model from a int"):
        io.load(3)


def _externalize(tensor: onnx.TensorProto, location: str, offset: int = 0, length: int | None = None) -> None:
    nbytes = numpy_helper.to_array(tensor).nbytes
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    for key, value in (("location", location), ("offset", offset), ("length", length or nbytes)):
        tensor.external_data.add(key=key, value=str(value))
    tensor.data_location = onnx.TensorProto.EXTERNAL


def _write_data(folder, name: str, nbytes: int = 64) -> None:
    (folder / name).write_bytes(np.arange(nbytes // 4, dtype=np.float32).tobytes())


def _main_graph_model(folder, location: str, **kw) -> str:
    proto = ir.serde.serialize_model(model_from_text(TEXT))
    _externalize(proto.graph.initializer[0], location, **kw)
    path = folder / "m.onnx"
    onnx.save(proto, path)
    return str(path)


def _subgraph_model(folder, location: str) -> str:
    """The external tensor sits in an If branch's initializers."""
    inner = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["z"])],
        "then",
        [],
        [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [2])],
        initializer=[numpy_helper.from_array(np.ones(2, np.float32), "c")],
    )
    _externalize(inner.initializer[0], location)
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=inner, else_branch=inner)],
        "g",
        [helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    path = folder / "sub.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return str(path)


def _function_model(folder, location: str) -> str:
    """The external tensor is a Constant's value inside a model-local function body."""
    const = numpy_helper.from_array(np.ones(2, np.float32), "k")
    _externalize(const, location)
    function = helper.make_function(
        "local",
        "AddK",
        ["a"],
        ["b"],
        [helper.make_node("Constant", [], ["k"], value=const), helper.make_node("Add", ["a", "k"], ["b"])],
        [helper.make_opsetid("", 18)],
    )
    graph = helper.make_graph(
        [helper.make_node("AddK", ["x"], ["y"], domain="local")],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("local", 1)], functions=[function]
    )
    path = folder / "fn.onnx"
    onnx.save(model, path)
    return str(path)


@pytest.mark.parametrize("build", [_main_graph_model, _subgraph_model, _function_model])
def test_bad_external_data_is_refused_before_reading(build, tmp_path, monkeypatch):
    def no_reads(self, *args, **kwargs):
        raise AssertionError("a weight was read")

    monkeypatch.setattr(ir.ExternalTensor, "_load", no_reads)
    outside = tmp_path / "outside"
    outside.mkdir()
    _write_data(outside, "secret.bin")
    folder = tmp_path / "model"
    folder.mkdir()

    with pytest.raises(InputError, match="not found"):
        io.load(build(folder, "missing.bin"))
    with pytest.raises(InputError, match="absolute path"):
        io.load(build(folder, str(outside / "secret.bin")))
    with pytest.raises(InputError, match="outside the model's folder"):
        io.load(build(folder, "../outside/secret.bin"))
    os.symlink(outside / "secret.bin", folder / "link.bin")
    with pytest.raises(InputError, match="link to a file outside"):
        io.load(build(folder, "link.bin"))
    _write_data(folder, "short.bin", nbytes=4)
    with pytest.raises(InputError, match="too short"):
        io.load(build(folder, "short.bin"))
    # ...and the same layout with a good data file loads
    _write_data(folder, "good.bin")
    io.load(build(folder, "good.bin"))


def test_offset_beyond_end_and_wrong_length(tmp_path):
    _write_data(tmp_path, "d.bin", nbytes=64)
    with pytest.raises(InputError, match=r"m\.onnx: external data of tensor 'w'.*too short"):
        io.load(_main_graph_model(tmp_path, "d.bin", offset=32))
    with pytest.raises(InputError, match="has length 8"):
        io.load(_main_graph_model(tmp_path, "d.bin", length=8))
    loaded = io.load(_main_graph_model(tmp_path, "d.bin", offset=16))
    np.testing.assert_array_equal(
        loaded.graph.initializers["w"].const_value.numpy().ravel(), np.arange(4, 16, dtype=np.float32)
    )
