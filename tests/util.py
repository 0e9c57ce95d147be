"""Helpers shared by the tests: build models from ONNX text, run them on ORT, compare outputs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir

from onnxpress.backends.ort import OrtRunner

_NP = {
    ir.DataType.FLOAT: np.float32,
    ir.DataType.DOUBLE: np.float64,
    ir.DataType.FLOAT16: np.float16,
    ir.DataType.INT64: np.int64,
    ir.DataType.INT32: np.int32,
    ir.DataType.INT8: np.int8,
    ir.DataType.UINT8: np.uint8,
    ir.DataType.BOOL: np.bool_,
}


def model_from_text(text: str) -> ir.Model:
    """An onnx_ir model from ONNX textual syntax (checked by onnx.checker first)."""
    proto = onnx.parser.parse_model(text)
    onnx.checker.check_model(proto)
    return ir.serde.deserialize_model(proto)


def random_feeds(model: ir.Model, n: int = 2, seed: int = 0, dims: dict[str, int] | None = None) -> list[dict]:
    """Seeded random feeds for every graph input; symbolic dims become `dims.get(name, 2)`."""
    rng = np.random.default_rng(seed)
    initializer_names = set(model.graph.initializers)
    feeds = []
    for _ in range(n):
        feed = {}
        for value in model.graph.inputs:
            if value.name in initializer_names:
                continue
            shape = [d if isinstance(d, int) else (dims or {}).get(str(d), 2) for d in (value.shape or [])]
            dtype = _NP[value.dtype]
            if np.issubdtype(dtype, np.floating):
                feed[value.name] = rng.standard_normal(shape).astype(dtype)
            elif dtype == np.bool_:
                feed[value.name] = rng.integers(0, 2, shape).astype(np.bool_)
            else:
                feed[value.name] = rng.integers(0, 4, shape).astype(dtype)
        feeds.append(feed)
    return feeds


def run(model: ir.Model, feeds: Sequence[dict]) -> list[dict[str, np.ndarray]]:
    return OrtRunner(optimization_level="disable").run(model, feeds)


def assert_same_outputs(
    before: ir.Model, after: ir.Model, feeds: Sequence[dict], rtol: float = 1e-4, atol: float = 1e-5
) -> None:
    """Run both models on ORT (graph optimisations off) and compare every output by name."""
    ref = run(before, feeds)
    got = run(after, feeds)
    for r, g in zip(ref, got):
        assert set(r) == set(g), f"outputs differ: {sorted(r)} vs {sorted(g)}"
        for name in r:
            assert r[name].shape == g[name].shape, f"{name}: shape {r[name].shape} vs {g[name].shape}"
            np.testing.assert_allclose(g[name], r[name], rtol=rtol, atol=atol, err_msg=name)
