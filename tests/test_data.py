"""Input feeds: every source format of `load_data` and every error it reports."""

from __future__ import annotations

import logging
import sys
import types

import numpy as np
import pytest
from onnx import numpy_helper

from onnxpress.data import FeedSource, load_data, model_inputs
from onnxpress.errors import InputError
from tests.util import model_from_text

IMAGE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,4,4] x, int64[1,5] ids) => (float[1,3,4,4] y) {
    y = Relu(x)
}
"""

SYMBOLIC = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3] x, bool[N] mask) => (float[N,3] y) {
    y = Relu(x)
}
"""


@pytest.fixture
def image_model():
    return model_from_text(IMAGE)


@pytest.fixture
def symbolic_model():
    return model_from_text(SYMBOLIC)


def _samples(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1, 3, 4, 4)).astype(np.float32)
    ids = rng.integers(0, 10, (n, 1, 5)).astype(np.int64)
    return x, ids


def test_model_inputs_skips_initializers_and_reads_dims(symbolic_model):
    specs = model_inputs(symbolic_model)
    assert [(s.name, s.dims) for s in specs] == [("x", ("N", 3)), ("mask", ("N",))]
    assert specs[1].dtype == np.bool_


# -- .npz ------------------------------------------------------------------------------------------
def test_npz_stacked_with_sample_axis(tmp_path, image_model):
    x, ids = _samples(3)
    np.savez(tmp_path / "d.npz", x=x, ids=ids)
    source = load_data(str(tmp_path / "d.npz"), image_model)
    assert isinstance(source, FeedSource) and len(source) == 3
    feeds = list(source.feeds())
    assert len(feeds) == 3 and list(feeds[0]) == ["x", "ids"]
    np.testing.assert_array_equal(feeds[2]["x"], x[2])
    np.testing.assert_array_equal(feeds[1]["ids"], ids[1])
    assert len(list(source.feeds())) == 3  # re-iterable
    assert "d.npz" in source.describe() and "3 sample" in source.describe()


def test_npz_split_along_batch_axis(tmp_path, image_model):
    x, ids = _samples(4)
    np.savez(tmp_path / "d.npz", x=x[:, 0], ids=ids[:, 0])  # [4,3,4,4] for input [1,3,4,4]
    feeds = load_data(tmp_path / "d.npz", image_model).take(None)
    assert len(feeds) == 4 and feeds[3]["x"].shape == (1, 3, 4, 4)
    np.testing.assert_array_equal(feeds[3]["x"][0], x[3, 0])


def test_npz_inputs_disagree_on_sample_count(tmp_path, image_model):
    x, _ = _samples(3)
    _, ids = _samples(2)
    np.savez(tmp_path / "d.npz", x=x, ids=ids)
    with pytest.raises(InputError, match="disagree on the number of samples"):
        load_data(str(tmp_path / "d.npz"), image_model)


def test_npz_unknown_and_missing_inputs(tmp_path, image_model):
    x, ids = _samples(2)
    np.savez(tmp_path / "extra.npz", x=x, ids=ids, z=x)
    with pytest.raises(InputError, match=r"unknown input 'z'; model inputs: x, ids"):
        load_data(str(tmp_path / "extra.npz"), image_model)
    np.savez(tmp_path / "missing.npz", x=x)
    with pytest.raises(InputError, match="no array for input 'ids'"):
        load_data(str(tmp_path / "missing.npz"), image_model)


def test_npz_wrong_rank_and_wrong_dim(tmp_path, image_model):
    x, ids = _samples(2)
    np.savez(tmp_path / "rank.npz", x=x[:, 0, 0], ids=ids)
    with pytest.raises(InputError, match=r"input 'x' expects rank 4 \(1x3x4x4\)"):
        load_data(str(tmp_path / "rank.npz"), image_model)
    np.savez(tmp_path / "dim.npz", x=np.zeros((2, 1, 3, 5, 4), np.float32), ids=ids)
    with pytest.raises(InputError, match=r"input 'x' dim 2 is 4 in the model, .* has 5"):
        load_data(str(tmp_path / "dim.npz"), image_model)


def test_float64_is_cast_with_a_warning_int_float_refused(tmp_path, image_model, caplog):
    x, ids = _samples(2)
    np.savez(tmp_path / "f64.npz", x=x.astype(np.float64), ids=ids)
    with caplog.at_level(logging.WARNING, logger="onnxpress.data"):
        feeds = load_data(str(tmp_path / "f64.npz"), image_model).take(None)
    assert feeds[0]["x"].dtype == np.float32
    assert any("casting float64" in r.getMessage() for r in caplog.records)
    np.savez(tmp_path / "intx.npz", x=x.astype(np.int32), ids=ids)
    with pytest.raises(InputError, match=r"input 'x' is float32 in the model, .* has int32"):
        load_data(str(tmp_path / "intx.npz"), image_model)
    np.savez(tmp_path / "floatids.npz", x=x, ids=ids.astype(np.float32))
    with pytest.raises(InputError, match=r"input 'ids' is int64"):
        load_data(str(tmp_path / "floatids.npz"), image_model)


def test_missing_and_unreadable_files(tmp_path, image_model):
    with pytest.raises(InputError, match="does not exist"):
        load_data(str(tmp_path / "nope.npz"), image_model)
    (tmp_path / "bad.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(InputError, match="not a valid .npz"):
        load_data(str(tmp_path / "bad.npz"), image_model)
    (tmp_path / "data.csv").write_text("1,2,3")
    with pytest.raises(InputError, match="expected an .npz"):
        load_data(str(tmp_path / "data.csv"), image_model)


# -- folders ---------------------------------------------------------------------------------------
def test_folder_of_stacked_npy_is_memory_mapped(tmp_path, image_model):
    x, ids = _samples(3)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "ids.npy", ids)
    source = load_data(str(tmp_path), image_model)
    assert len(source) == 3
    feeds = source.take(None)
    np.testing.assert_array_equal(feeds[1]["x"], x[1])
    assert not isinstance(feeds[1]["x"], np.memmap)  # a copy, not a view of the open file


def test_folder_of_sample_subfolders_pb_and_npy(tmp_path, image_model):
    x, ids = _samples(3)
    for i in range(3):
        folder = tmp_path / f"test_data_set_{i}"
        folder.mkdir()
        # ONNX backend-test layout: TensorProto named after the input, plus an ignored output
        (folder / "input_0.pb").write_bytes(numpy_helper.from_array(x[i], "x").SerializeToString())
        if i == 1:  # unnamed tensor: maps by its index in the file name
            (folder / "input_1.pb").write_bytes(numpy_helper.from_array(ids[i]).SerializeToString())
        else:
            np.save(folder / "ids.npy", ids[i])
        (folder / "output_0.pb").write_bytes(numpy_helper.from_array(x[i], "y").SerializeToString())
    (tmp_path / "model.onnx").write_bytes(b"")  # a model beside the data sets is ignored
    source = load_data(str(tmp_path), image_model)
    assert len(source) == 3
    feeds = source.take(None)
    for i in range(3):
        np.testing.assert_array_equal(feeds[i]["x"], x[i])
        np.testing.assert_array_equal(feeds[i]["ids"], ids[i])


def test_folder_that_is_one_sample(tmp_path, image_model):
    x, ids = _samples(1)
    (tmp_path / "input_0.pb").write_bytes(numpy_helper.from_array(x[0]).SerializeToString())
    (tmp_path / "input_1.pb").write_bytes(numpy_helper.from_array(ids[0]).SerializeToString())
    feeds = load_data(str(tmp_path), image_model).take(None)
    assert len(feeds) == 1 and feeds[0]["x"].shape == (1, 3, 4, 4)


def test_folder_errors(tmp_path, image_model):
    with pytest.raises(InputError, match="no .npy or .pb tensor files"):
        load_data(str(tmp_path), image_model)
    sample = tmp_path / "s0"
    sample.mkdir()
    (sample / "input_0.pb").write_bytes(b"\xff\xff garbage")
    with pytest.raises(InputError, match="cannot read tensor file"):
        load_data(str(tmp_path), image_model)
    (sample / "input_0.pb").unlink()
    np.save(sample / "weird.npy", np.zeros(3))
    with pytest.raises(InputError, match="matches no model input"):
        load_data(str(tmp_path), image_model)


def test_folder_reads_one_sample_at_a_time(tmp_path, image_model, monkeypatch):
    import onnxpress.data as data

    x, ids = _samples(3)
    for i in range(3):
        folder = tmp_path / f"s{i}"
        folder.mkdir()
        np.save(folder / "x.npy", x[i])
        np.save(folder / "ids.npy", ids[i])
    source = load_data(str(tmp_path), image_model)
    reads = []
    from onnxpress import _data_files

    real = _data_files.read_tensor_file
    monkeypatch.setattr(_data_files, "read_tensor_file", lambda path, specs: reads.append(path) or real(path, specs))
    iterator = source.feeds()
    next(iterator)
    assert len(reads) == 2  # one sample's files, not all of them
    iterator.close()


# -- callables -------------------------------------------------------------------------------------
def test_module_function_spec_and_callable_object(image_model, monkeypatch):
    x, ids = _samples(2)
    calls = []

    def make_feeds():
        calls.append(1)
        for i in range(2):
            yield {"x": x[i], "ids": ids[i]}

    module = types.ModuleType("my_feeds")
    module.make_feeds = make_feeds
    monkeypatch.setitem(sys.modules, "my_feeds", module)
    source = load_data("my_feeds:make_feeds", image_model)
    assert len(source.take(None)) == 2 and len(source.take(None)) == 2  # re-iterable
    with pytest.raises(TypeError):
        len(source)  # a generator's length is unknown
    assert source  # but the source is still truthy

    one = load_data(lambda: {"x": x[0], "ids": ids[0]}, image_model)
    assert len(one.take(None)) == 1
    listed = load_data([{"x": x[0], "ids": ids[0]}, {"x": x[1], "ids": ids[1]}], image_model)
    assert len(listed) == 2


def test_callable_errors(image_model, monkeypatch):
    with pytest.raises(InputError, match="cannot import data module 'no_such_module_xyz'"):
        load_data("no_such_module_xyz:feeds", image_model)
    module = types.ModuleType("my_feeds2")
    monkeypatch.setitem(sys.modules, "my_feeds2", module)
    with pytest.raises(InputError, match="has no callable 'feeds'"):
        load_data("my_feeds2:feeds", image_model)
    with pytest.raises(InputError, match="returned None"):
        load_data(lambda: None, image_model)
    with pytest.raises(InputError, match="sample 0 has no data for input 'ids'"):
        load_data(lambda: [{"x": np.zeros((1, 3, 4, 4), np.float32)}], image_model)

    def broken():
        raise RuntimeError("disk on fire")

    with pytest.raises(InputError, match="raised RuntimeError: disk on fire"):
        load_data(broken, image_model)

    def breaks_midway():
        yield {"x": np.zeros((1, 3, 4, 4), np.float32), "ids": np.zeros((1, 5), np.int64)}
        raise KeyError("sample 2")

    source = load_data(breaks_midway, image_model)
    with pytest.raises(InputError, match="raised KeyError: 'sample 2'"):
        source.take(None)
    with pytest.raises(InputError, match="holds no samples"):
        load_data(lambda: [], image_model)


def test_later_bad_sample_is_caught_while_reading(image_model):
    x, ids = _samples(2)
    source = load_data(lambda: [{"x": x[0], "ids": ids[0]}, {"x": x[1][..., :2], "ids": ids[1]}], image_model)
    with pytest.raises(InputError, match="input 'x' dim 3 is 4"):
        source.take(None)


# -- random ----------------------------------------------------------------------------------------
def test_random_feeds_are_seeded_and_typed(image_model):
    source = load_data(None, image_model, num_random=3, seed=7)
    a, b = source.take(None), load_data(None, image_model, num_random=3, seed=7).take(None)
    assert len(source) == 3 and len(a) == 3
    np.testing.assert_array_equal(a[2]["x"], b[2]["x"])
    assert a[0]["x"].dtype == np.float32 and a[0]["x"].shape == (1, 3, 4, 4)
    assert a[0]["ids"].dtype == np.int64 and a[0]["ids"].min() >= 0 and a[0]["ids"].max() < 4
    other = load_data(None, image_model, seed=8).take(1)
    assert not np.array_equal(other[0]["x"], a[0]["x"])


def test_random_feeds_default_the_batch_dim_and_need_other_symbolic_dims(symbolic_model):
    feeds = load_data(None, symbolic_model).take(None)
    assert feeds[0]["x"].shape == (1, 3) and feeds[0]["mask"].shape == (1,)
    sequence = model_from_text("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,S] x) => (float[N,S] y) { y = Relu(x) }
    """)
    with pytest.raises(InputError, match=r"input 'x' has symbolic dim 'S' \(NxS\); give its size with --input-shape x:1x1"):
        load_data(None, sequence)
    feeds = load_data(None, sequence, input_shapes={"x": [2, 5]}).take(None)
    assert feeds[0]["x"].shape == (2, 5)
    feeds = load_data(None, symbolic_model, input_shapes={"x": [2, 3], "mask": [2]}).take(None)
    assert feeds[0]["x"].shape == (2, 3) and feeds[0]["mask"].dtype == np.bool_


def test_input_shape_overrides_are_checked(symbolic_model):
    with pytest.raises(InputError, match="--input-shape names unknown input 'y'; model inputs: x, mask"):
        load_data(None, symbolic_model, input_shapes={"y": [1]})
    with pytest.raises(InputError, match="input 'x' dim 1 is 3 in the model, --input-shape has 4"):
        load_data(None, symbolic_model, input_shapes={"x": [2, 4], "mask": [2]})


def test_symbolic_model_accepts_any_batch_from_npz(tmp_path, symbolic_model):
    np.savez(tmp_path / "d.npz", x=np.ones((6, 3), np.float32), mask=np.ones(6, bool))
    feeds = load_data(str(tmp_path / "d.npz"), symbolic_model).take(None)
    assert len(feeds) == 6 and feeds[0]["x"].shape == (1, 3)


def test_unsupported_spec_type(image_model):
    with pytest.raises(InputError, match="cannot use a int as data"):
        load_data(3, image_model)  # type: ignore[arg-type]



def test_npz_scalar_input_gives_0d_feeds(tmp_path):
    model = model_from_text(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float s, float[3] x) => (float[3] y) { y = Mul(x, s) }"""
    )
    path = tmp_path / "d.npz"
    np.savez(path, s=np.array([1.0, 2.0, 3.0], np.float32), x=np.ones((3, 3), np.float32))
    feeds = list(load_data(str(path), model).feeds())
    assert len(feeds) == 3
    assert feeds[1]["s"].shape == () and float(feeds[1]["s"]) == 2.0
    assert feeds[1]["x"].shape == (3,)


def test_negative_model_dims_are_symbolic():
    """Exporters write -1 for 'any size': feeds of any size and --input-shape are accepted there."""
    import onnx_ir as ir
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 3])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = ir.serde.deserialize_model(proto)
    feeds = list(load_data([{"x": np.ones((5, 3), np.float32)}], model).feeds())
    assert feeds[0]["x"].shape == (5, 3)
    feeds = list(load_data(None, model, input_shapes={"x": [2, 3]}, num_random=1).feeds())
    assert feeds[0]["x"].shape == (2, 3)
