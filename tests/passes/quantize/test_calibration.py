"""Calibration analysis: ranges against numpy, streaming memory, batching, sentinels, the range cache."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from onnxpress.backends.ort import OrtRunner
from onnxpress.passes.manager import PassContext
from onnxpress.passes.quantize.calibration import TensorRange, calibrate, entropy_threshold
from tests.util import model_from_text

N = 20000  # elements per sample


def chain_model():
    return model_from_text(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        agraph (float[1, {N}] x) => (float[1, {N}] w, float[1, {N}] zero, float[1, {N}] three, float[1, {N}] sign) {{
            k = Constant <value = float {{3.0}}> ()
            y = Mul(x, k)
            z = Relu(y)
            w = Add(z, x)
            nil = Constant <value = float {{0.0}}> ()
            zero = Mul(x, nil)
            three = Add(zero, k)
            sign = Sign(x)
        }}
    """)


def normal_feeds(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, N)).astype(np.float32)} for _ in range(n)]


def reference(feeds):
    """The same values computed in numpy, concatenated over the feeds."""
    x = np.concatenate([f["x"].ravel() for f in feeds])
    y = x * np.float32(3.0)
    z = np.maximum(y, 0)
    return {"x": x, "y": y, "z": z, "w": z + x}


class CountingRunner:
    def __init__(self):
        self.inner = OrtRunner()
        self.calls = 0
        self.outputs: list[list[str]] = []

    def run(self, model, feeds):
        self.calls += 1
        self.outputs.append([v.name for v in model.graph.outputs])
        return self.inner.run(model, feeds)


# ----------------------------------------------------------------------------------------------
# Methods against numpy
# ----------------------------------------------------------------------------------------------
def test_minmax_is_exact():
    feeds = normal_feeds()
    with PassContext(runner=OrtRunner(), data=feeds) as ctx:
        ranges = calibrate(chain_model(), ctx, ["x", "y", "z", "w"], method="minmax")
    for name, values in reference(feeds).items():
        r = ranges[name]
        assert (r.min, r.max) == (float(values.min()), float(values.max())), name
        assert r.method == "minmax" and r.histogram is None and r.flags == ()
        assert r.num_samples == 8 and r.num_values == 8 * N


@pytest.mark.parametrize("p", [99.0, 99.9, 99.99])
def test_percentile_within_a_bin_of_numpy(p):
    feeds = normal_feeds()
    with PassContext(runner=OrtRunner(), data=feeds) as ctx:
        ranges = calibrate(chain_model(), ctx, ["x", "y", "w"], method="percentile", percentile=p)
    for name, values in reference(feeds).items():
        if name not in ranges:
            continue
        r = ranges[name]
        width = (values.max() - values.min()) / 2048
        lo, hi = np.percentile(values, [100 - p, p])
        assert abs(r.min - lo) <= width and abs(r.max - hi) <= width, (name, r.min, lo, r.max, hi, width)
        assert r.percentile == p and len(r.histogram) == 2048 and len(r.bin_edges) == 2049
        assert r.histogram.sum() == values.size


def test_default_percentile_lies_between_numpy_and_max():
    feeds = normal_feeds()
    with PassContext(runner=OrtRunner(), data=feeds) as ctx:
        r = calibrate(chain_model(), ctx, ["y"])["y"]
    y = reference(feeds)["y"]
    width = (y.max() - y.min()) / 2048
    assert r.method == "percentile" and r.percentile == 99.999
    assert np.percentile(y, 99.99) - width <= r.max <= y.max()
    assert y.min() <= r.min <= np.percentile(y, 0.01) + width


def test_entropy_threshold_is_inside_the_data_range():
    feeds = normal_feeds()
    with PassContext(runner=OrtRunner(), data=feeds) as ctx:
        ranges = calibrate(chain_model(), ctx, ["x", "z"], method="entropy")
    ref = reference(feeds)
    for name in ("x", "z"):
        r, values = ranges[name], ref[name]
        assert values.min() <= r.min <= r.max <= values.max()
        assert r.max > np.percentile(np.abs(values), 99)  # a Gaussian is clipped far out in its tail
        assert r.bin_edges[0] == 0.0 and r.bin_edges[-1] == np.abs(values).max()
    assert ranges["z"].min == 0.0  # post-ReLU stays one-sided


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_degenerate_tensors_do_not_crash(method):
    feeds = normal_feeds(3)
    with PassContext(runner=OrtRunner(), data=feeds) as ctx:
        ranges = calibrate(chain_model(), ctx, ["zero", "three", "sign"], method=method, num_bins=4096)
    assert (ranges["zero"].min, ranges["zero"].max) == (0.0, 0.0) and "constant" in ranges["zero"].flags
    assert (ranges["three"].min, ranges["three"].max) == (3.0, 3.0) and "constant" in ranges["three"].flags
    sign = ranges["sign"]  # three distinct values in 4096 bins; percentile interpolates inside a bin
    assert sign.min == pytest.approx(-1.0, abs=2 / 4096) and sign.max == pytest.approx(1.0, abs=2 / 4096)


def _entropy_reference(counts, edges, levels=128):
    """The KL search written as the obvious loop over candidate clips."""
    counts = counts.astype(np.float64)
    best, best_kl = len(counts), np.inf
    for i in range(levels, len(counts) + 1):
        p = counts[:i].copy()
        p[-1] += counts[i:].sum()
        q = np.zeros(i)
        bounds = (np.arange(levels + 1) * i) // levels
        for a, b in zip(bounds[:-1], bounds[1:]):
            nz = p[a:b] > 0
            if nz.any():
                q[a:b][nz] = counts[a:b].sum() / nz.sum()
        if q.sum() == 0:
            continue
        p, q = p / p.sum(), q / q.sum()
        mask = p > 0
        kl = float(np.sum(p[mask] * (np.log(p[mask]) - np.log(np.where(q[mask] > 0, q[mask], 1e-12)))))
        if kl < best_kl - 1e-12:
            best, best_kl = i, kl
    return edges[best]


@pytest.mark.parametrize("case", ["gauss", "bimodal", "sparse", "spike"])
def test_entropy_search_matches_the_plain_loop(case):
    rng = np.random.default_rng(1)
    if case == "gauss":
        values = np.abs(rng.standard_normal(50000))
    elif case == "bimodal":
        values = np.abs(np.concatenate([rng.standard_normal(49500), 50 + rng.standard_normal(500)]))
    elif case == "sparse":
        values = rng.choice([0.0, 1.0, 7.0], 5000)
    else:
        values = np.concatenate([np.zeros(1000), [3.0]])
    counts, edges = np.histogram(values, bins=512, range=(0, values.max()))
    got = entropy_threshold(counts, edges)
    assert got == pytest.approx(_entropy_reference(counts, edges))
    assert 0 < got <= values.max()
    if case == "bimodal":  # the far cluster either stays whole or is clipped beyond the bulk
        assert got > 3.0


# ----------------------------------------------------------------------------------------------
# Batching, sentinels, subgraphs, constants
# ----------------------------------------------------------------------------------------------
def test_batched_names_give_the_same_ranges():
    feeds = normal_feeds(4)
    names = ["x", "y", "z", "w", "sign"]
    runner = CountingRunner()
    with PassContext(runner=runner, data=feeds) as ctx:
        whole = calibrate(chain_model(), ctx, names, batch_values=64)
        single_runs = runner.calls
        split = calibrate(chain_model(), ctx, names, batch_values=2)
    assert runner.calls > single_runs * 2  # three batches
    assert max(len(o) for o in runner.outputs[single_runs:]) <= 2
    for name in names:
        a, b = whole[name], split[name]
        assert (a.min, a.max) == (b.min, b.max)
        np.testing.assert_array_equal(a.histogram, b.histogram)


def _mask_model():
    import onnx_ir as ir

    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, 4096]))
    m = ir.Value(name="m", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, 4096]))
    add = ir.node("Add", [x, m], outputs=[ir.Value(name="masked")])
    big = ir.node("Mul", [x, ir.Value(name="k5000", const_value=ir.tensor(np.float32(5000.0)))],
                  outputs=[ir.Value(name="scaled")])
    mixed = ir.node("Concat", [big.outputs[0], x], attributes={"axis": 1}, outputs=[ir.Value(name="mixed")])
    k = big.inputs[1]
    graph = ir.Graph([x, m], [add.outputs[0], mixed.outputs[0]], nodes=[add, big, mixed],
                     initializers=[k], opset_imports={"": 17})
    return ir.Model(graph, ir_version=8)


@pytest.mark.parametrize("sentinel,share", [(-3.4e38, 0.0005), (-1e9, 0.3), (-np.inf, 0.1)])
@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_sentinels_are_flagged_and_excluded(sentinel, share, method):
    rng = np.random.default_rng(0)
    feeds, kept, count = [], [], 0
    for _ in range(4):
        x = rng.standard_normal((1, 4096)).astype(np.float32)
        where = rng.random((1, 4096)) < share
        where[0, 0] = True
        feeds.append({"x": x, "m": np.where(where, sentinel, 0).astype(np.float32)})
        kept.append(x[~where])
        count += int(where.sum())
    kept = np.concatenate(kept)
    with PassContext(runner=OrtRunner(), data=feeds) as ctx:
        ranges = calibrate(_mask_model(), ctx, ["x", "masked", "mixed"], method=method)
    r = ranges["masked"]
    assert "sentinel" in r.flags and r.sentinels == count
    assert kept.min() <= r.min <= r.max <= kept.max()
    if method == "minmax":
        assert (r.min, r.max) == (float(kept.min()), float(kept.max()))
    assert r.num_values == kept.size
    # ordinary and mixed-range tensors (5000·x next to x) are not sentinels
    assert "sentinel" not in ranges["x"].flags and "sentinel" not in ranges["mixed"].flags


def test_subgraph_values_are_reported_uncalibrated_and_constants_are_reduced(caplog):
    model = model_from_text("""
        <ir_version: 8, opset_import: ["" : 17]>
        agraph (float[4] x, bool c) => (float[4] out) {
            w = Constant <value = float[4] {1.0, -2.0, 3.0, 0.5}> ()
            xw = Mul(x, w)
            out = If (c) <then_branch = g1 () => (float[4] t) { t = Relu(xw) },
                          else_branch = g2 () => (float[4] e) { e = Neg(xw) }>
        }
    """)
    feeds = [{"x": np.arange(4, dtype=np.float32) - 1, "c": np.array(True)}]
    with PassContext(runner=OrtRunner(), data=feeds) as ctx, caplog.at_level(logging.WARNING):
        ranges = calibrate(model, ctx, ["xw", "t", "e", "out"], method="minmax")
        with pytest.raises(KeyError):
            calibrate(model, ctx, ["nope"])
    assert set(ranges) == {"xw", "out"}
    assert "cannot be exposed" in caplog.text and "t, e" in caplog.text
    assert (ranges["xw"].min, ranges["xw"].max) == (-1.0, 3.0)
    # an initializer's range comes from the constant itself, with no run
    runner = CountingRunner()
    with PassContext(runner=runner, data=[{"x": np.ones((1, 4096), np.float32)}] * 2) as ctx:
        k = calibrate(_mask_model(), ctx, ["k5000"])["k5000"]
    assert runner.calls == 0 and (k.min, k.max) == (5000.0, 5000.0)


def test_no_runner_or_no_data_warns_and_returns_nothing(caplog):
    with PassContext(runner=None, data=normal_feeds(1)) as ctx, caplog.at_level(logging.WARNING):
        assert calibrate(chain_model(), ctx, ["y"]) == {}
    assert "no runner" in caplog.text
    with pytest.raises(ValueError):
        calibrate(chain_model(), PassContext(), ["y"], method="kl")


def test_progress_reaches_its_total():
    calls = []
    with PassContext(runner=OrtRunner(), data=normal_feeds(3)) as ctx:
        calibrate(chain_model(), ctx, ["x", "y", "z"], batch_values=2,
                  progress=lambda done, total, what: calls.append((done, total, what)))
    assert [c[0] for c in calls] == list(range(1, 13))  # 2 batches × 3 feeds × 2 passes
    assert calls[-1][0] == calls[-1][1] == 12 and "batch 2/2" in calls[-1][2]
    for method, names, runs in [("percentile", ["zero"], 3), ("minmax", ["y"], 3), ("minmax", ["masked"], 6)]:
        calls.clear()
        feeds = normal_feeds(3) if names != ["masked"] else [
            {"x": np.ones((1, 4096), np.float32), "m": (-1e9 * (np.arange(4096) % 2)).astype(np.float32)[None]}
        ] * 3
        model = chain_model() if names != ["masked"] else _mask_model()
        with PassContext(runner=OrtRunner(), data=feeds) as ctx:
            calibrate(model, ctx, names, method=method, progress=lambda *c: calls.append(c))
        assert calls[-1][0] == calls[-1][1] == runs, (method, names, calls)


# ----------------------------------------------------------------------------------------------
# The range cache
# ----------------------------------------------------------------------------------------------
def test_cache_reuses_ranges_and_misses_on_other_data_or_method(tmp_path):
    model, feeds = chain_model(), normal_feeds(3)
    runner = CountingRunner()
    with PassContext(runner=runner, data=feeds) as ctx:
        first = calibrate(model, ctx, ["y", "z"], cache_dir=tmp_path)
        assert runner.calls > 0
        runner.calls = 0
        again = calibrate(chain_model(), ctx, ["y", "z"], cache_dir=tmp_path)
        assert runner.calls == 0
        for name in ("y", "z"):
            assert (again[name].min, again[name].max) == (first[name].min, first[name].max)
            np.testing.assert_array_equal(again[name].histogram, first[name].histogram)
            np.testing.assert_array_equal(again[name].bin_edges, first[name].bin_edges)
        # only the missing name runs
        runner.outputs.clear()
        more = calibrate(model, ctx, ["y", "w"], cache_dir=tmp_path)
        assert runner.calls > 0 and {n for o in runner.outputs for n in o} == {"w"}
        assert set(more) == {"y", "w"}
        runner.calls = 0
        calibrate(model, ctx, ["y"], method="minmax", cache_dir=tmp_path)
        assert runner.calls > 0
        runner.calls = 0
        calibrate(model, ctx, ["y"], percentile=99.9, cache_dir=tmp_path)
        assert runner.calls > 0
    runner.calls = 0
    with PassContext(runner=runner, data=normal_feeds(3, seed=5)) as ctx:
        calibrate(model, ctx, ["y"], cache_dir=tmp_path)
    assert runner.calls > 0
    files = sorted(os.listdir(tmp_path))
    assert all(f.startswith("ranges-") and f.endswith(".json") for f in files) and len(files) == 4
    stored = [json.load(open(tmp_path / f)) for f in files]
    assert any(set(s["ranges"]) == {"y", "z", "w"} for s in stored)


def test_cache_misses_when_the_model_changes(tmp_path):
    feeds = normal_feeds(2)
    runner = CountingRunner()
    with PassContext(runner=runner, data=feeds) as ctx:
        calibrate(chain_model(), ctx, ["y"], cache_dir=tmp_path)
        other = chain_model()
        node = next(n for n in other.graph if n.op_type == "Constant")
        import onnx_ir as ir

        node.attributes["value"] = ir.AttrTensor("value", ir.tensor(np.float32(4.0)))
        runner.calls = 0
        r = calibrate(other, ctx, ["y"], cache_dir=tmp_path, method="percentile")
    assert runner.calls > 0 and r["y"].max > 3.0 * 3.0


def test_tensor_range_json_round_trip():
    r = TensorRange("a", -1.5, 2.0, "entropy", None, 4, np.arange(4, dtype=np.int64),
                    np.linspace(0, 2, 5), ("sentinel",), 100, 3)
    back = TensorRange.from_json("a", json.loads(json.dumps(r.to_json())))
    assert (back.min, back.max, back.flags, back.sentinels, back.num_values) == (-1.5, 2.0, ("sentinel",), 3, 100)
    np.testing.assert_array_equal(back.histogram, r.histogram)
    np.testing.assert_array_equal(back.bin_edges, r.bin_edges)


# ----------------------------------------------------------------------------------------------
# Streaming memory
# ----------------------------------------------------------------------------------------------
_RSS_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    import onnx_ir as ir
    from onnxpress.backends.ort import OrtRunner
    from onnxpress.passes.manager import PassContext
    from onnxpress.passes.quantize.calibration import calibrate

    values, samples, elements = 40, int(sys.argv[2]), 1 << 20  # 40 activations of 4 MiB per sample
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, elements]))
    nodes, prev, inits = [], x, []
    for i in range(values):
        c = ir.Value(name=f"c{i}", const_value=ir.tensor(np.float32(0.01 * (i + 1))))
        inits.append(c)
        node = ir.node("Add", [prev, c], outputs=[ir.Value(name=f"v{i}")])
        nodes.append(node)
        prev = node.outputs[0]
    graph = ir.Graph([x], [prev], nodes=nodes, initializers=inits, opset_imports={"": 17})
    model = ir.Model(graph, ir_version=8)
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((1, elements)).astype(np.float32)} for _ in range(samples)]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with PassContext(runner=OrtRunner(), data=feeds) as ctx:
        ranges = calibrate(model, ctx, [f"v{i}" for i in range(values)], method=sys.argv[1])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert len(ranges) == values
    print(json.dumps({"peak": peak, "before": base, "all": values * samples * elements * 4}))
""")


@pytest.mark.slow
def test_peak_memory_stays_bounded():
    """40 activations of 4 MiB over 8 samples: 1.25 GiB if kept; calibration holds a few batches."""
    env = dict(os.environ, OMP_NUM_THREADS="2")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    proc = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, "percentile", "8"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"peak RSS {stats['peak'] / 2**20:.0f} MiB (before calibrating {stats['before'] / 2**20:.0f} MiB), "
          f"all activations {stats['all'] / 2**20:.0f} MiB")
    assert stats["peak"] < 600 * 2**20
    assert stats["peak"] - stats["before"] < stats["all"] / 4


# -- least-error clipping and re-derived ranges (calibration=mse / auto) -------------------------
def _histogram(data: np.ndarray, bins: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    counts, edges = np.histogram(data, bins=bins, range=(float(data.min()), float(data.max())))
    return counts.astype(np.float64), edges


def _rounding_error(counts: np.ndarray, edges: np.ndarray, low: float, high: float) -> float:
    centres = (edges[:-1] + edges[1:]) / 2
    lo, hi = min(low, 0.0), max(high, 0.0)
    step = (hi - lo) / 255
    zero = np.rint(-lo / step)
    q = np.clip(np.rint(centres / step) + zero, 0, 255)
    return float((counts * (centres - (q - zero) * step) ** 2).sum())


def test_mse_range_clips_heavy_tails_but_not_a_dense_range():
    from onnxpress.passes.quantize.ranges import histogram_quantile, mse_range

    rng = np.random.default_rng(0)
    uniform = rng.uniform(-1.0, 3.0, 200_000)
    low, high = mse_range(*_histogram(uniform))
    assert low == pytest.approx(-1.0, abs=0.01) and high == pytest.approx(3.0, abs=0.01)
    # Laplace tails: a few far values would make every step coarse; clipping them costs less
    counts, edges = _histogram(rng.laplace(size=400_000))
    low, high = mse_range(counts, edges)
    assert edges[0] < low and high < edges[-1]
    chosen = _rounding_error(counts, edges, low, high)
    assert chosen < _rounding_error(counts, edges, edges[0], edges[-1])
    for tail in (1e-5, 1e-3):
        other = (histogram_quantile(counts, edges, tail), histogram_quantile(counts, edges, 1 - tail))
        assert chosen <= _rounding_error(counts, edges, *other) + 1e-9


def test_reclip_re_derives_percentiles_from_the_stored_histogram():
    from onnxpress.passes.quantize.ranges import reclip

    data = np.random.default_rng(1).standard_normal(400_000)
    counts, edges = _histogram(data)
    stored = TensorRange("t", float(data.min()), float(data.max()), "percentile", 100.0, 1, counts, edges)
    tight = reclip(stored, "percentile", 99.0)
    width = edges[1] - edges[0]
    assert tight.min == pytest.approx(np.percentile(data, 1.0), abs=2 * width)
    assert tight.max == pytest.approx(np.percentile(data, 99.0), abs=2 * width)
    assert tight.method == "percentile" and tight.percentile == 99.0 and tight.histogram is counts
    assert reclip(stored, "mse").method == "mse"
    no_histogram = TensorRange("m", -1.0, 1.0, "minmax", None, 1)
    assert reclip(no_histogram, "percentile", 99.0) is no_histogram
