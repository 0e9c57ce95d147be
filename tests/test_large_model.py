"""A model over 2 GB goes through load -> -O2 -> save without holding its weights in memory.

The model (nine 8192x8192 float32 MatMul weights, 2.25 GiB) is built from `onnx_ir.LazyTensor`s,
so even writing it never holds more than one weight. The pipeline then runs in a fresh Python
process that reports its peak memory: both the peak RSS (everything resident, memory-mapped weight
pages included) and the peak of anonymous memory (what the process allocated) must stay well
under the model size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx_ir as ir
import pytest

from onnxpress.ir import io

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")

DIM = 8192
LAYERS = 9
WEIGHT_BYTES = LAYERS * DIM * DIM * 4

SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, threading, time

    def rss_anon_kib():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
        return 0

    peak = {"anon": rss_anon_kib()}
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak["anon"] = max(peak["anon"], rss_anon_kib())
            time.sleep(0.005)

    threading.Thread(target=sample, daemon=True).start()

    from onnxpress.ir import io
    from onnxpress.passes import PassManager

    model = io.load(sys.argv[1])
    PassManager.from_pipeline("O2")(model)
    io.save(model, sys.argv[2])
    done.set()
    peak["anon"] = max(peak["anon"], rss_anon_kib())
    print(json.dumps({
        "peak_anon_bytes": peak["anon"] * 1024,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "nodes": len(model.graph),
    }))
    """
)


def _weight(index: int) -> ir.LazyTensor:
    def make() -> ir.Tensor:
        return ir.Tensor(np.full((DIM, DIM), (index + 1) / DIM, dtype=np.float32))

    return ir.LazyTensor(make, dtype=ir.DataType.FLOAT, shape=ir.Shape([DIM, DIM]), name=f"w{index}")


def _build_model() -> ir.Model:
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, DIM]))
    graph = ir.Graph([x], [], nodes=[], opset_imports={"": 18}, name="big")
    current = x
    for i in range(LAYERS):
        weight = ir.Value(name=f"w{i}", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([DIM, DIM]))
        weight.const_value = _weight(i)
        graph.register_initializer(weight)
        node = ir.node("MatMul", [current, weight], name=f"matmul{i}")
        node.outputs[0].name = f"h{i}"
        graph.append(node)
        current = node.outputs[0]
    current.name = "y"
    graph.outputs.append(current)
    return ir.Model(graph, ir_version=9)


def test_large_model_stays_out_of_memory(tmp_path):
    src = tmp_path / "big.onnx"
    out = tmp_path / "out" / "big.onnx"
    out.parent.mkdir()
    try:
        model = _build_model()
        assert io.weight_bytes(model) == WEIGHT_BYTES > 2**31
        io.save(model, src)  # over 2 GB: external data chosen automatically
        assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data", "out"]
        assert os.path.getsize(tmp_path / "big.onnx.data") == WEIGHT_BYTES
        del model

        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", "")}
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(src), str(out)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        stats = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"peak anonymous memory {stats['peak_anon_bytes'] / 2**20:.0f} MiB, "
              f"peak RSS {stats['peak_rss_bytes'] / 2**20:.0f} MiB, weights {WEIGHT_BYTES / 2**20:.0f} MiB")
        assert stats["peak_anon_bytes"] < 0.4 * WEIGHT_BYTES
        assert stats["peak_rss_bytes"] < 0.4 * WEIGHT_BYTES
        assert stats["nodes"] == LAYERS

        assert sorted(os.listdir(out.parent)) == ["big.onnx", "big.onnx.data"]
        assert io.file_size(out) == os.path.getsize(out) + WEIGHT_BYTES
        saved = io.load(out)
        assert io.weight_bytes(saved) == WEIGHT_BYTES
        last = saved.graph.initializers[f"w{LAYERS - 1}"].const_value
        assert isinstance(last, ir.ExternalTensor)
        assert last.numpy()[DIM - 1, DIM - 5 :].tolist() == [LAYERS / DIM] * 5
        last.release()
    finally:
        for path in (src, tmp_path / "big.onnx.data", out, out.parent / "big.onnx.data"):
            if os.path.exists(path):
                os.remove(path)
