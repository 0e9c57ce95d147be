#!/usr/bin/env python3
"""Foundation benchmark: load + -O2 + save with onnxpress.

    python tools/fetch_models.py --out bench_out/models          # real models, once
    python tools/bench/foundation.py --models bench_out/models --out docs/BENCHMARKS.md \\
        --out bench_out/foundation.json

Three parts, every measurement in a fresh subprocess (its own peak RSS, its own imports):

  synthetic  models of 1k..50k nodes (Conv/BN/Relu residual blocks, MatMul/Add/Gelu blocks, and
             foldable constants / no-op shape / duplicate / Identity nodes); time per node should
             stay flat as the model grows.
  big        a model with ~1 GB of external weights: load + -O2 + save against a plain copy of the
             same files (interleaved A/B, median of --repeat), and peak RSS against weight bytes.
  real       PP-OCRv4 det / rec / cls and all-MiniLM-L6-v2: nodes before -> after and time for
             onnxpress -O2, onnxslim and onnxoptimizer, and the largest output difference on
             ONNX Runtime (CPU, ORT's own graph optimizations off) over seeded random inputs.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.bench import common  # noqa: E402
from tools.bench.common import md_table, median  # noqa: E402

SCRIPT = Path(__file__).resolve()
PIPELINE = "O2"
OPSET = 17

# Real models: file name, label, and feeds (name -> (kind, shape)); names are checked against the
# model. Float inputs: seeded standard normal; "tokens": ids in [0, vocab); "ones" / "zeros".
REAL_MODELS = {
    "ppocrv4_det": ("ppocrv4_det.onnx", "PP-OCRv4 det", {"x": ("float", (1, 3, 640, 640))}),
    "ppocrv4_rec": ("ppocrv4_rec.onnx", "PP-OCRv4 rec", {"x": ("float", (1, 3, 48, 320))}),
    "ppocr_cls": ("ppocr_cls.onnx", "PP-OCR cls", {"x": ("float", (1, 3, 48, 192))}),
    "minilm_l6_v2": (
        "minilm_l6_v2.onnx",
        "all-MiniLM-L6-v2",
        {
            "input_ids": ("tokens", (1, 16)),
            "attention_mask": ("ones", (1, 16)),
            "token_type_ids": ("zeros", (1, 16)),
        },
    ),
}
MINILM_VOCAB = 30522
TOOLS = ("onnxpress", "onnxslim", "onnxoptimizer")


# ============================================================================================
# workers (run in a fresh subprocess: `foundation.py --worker JSON`)


def _worker(payload: dict[str, Any]) -> None:
    kind = payload["kind"]
    src, dst = payload["src"], payload["dst"]
    t0 = time.perf_counter()
    if kind == "onnxpress":
        from onnxpress.passes import PassManager

        load, save, io_from = common.onnxpress_io()
        import_s = time.perf_counter() - t0
        baseline = common.current_rss_bytes()
        t = time.perf_counter()
        model = load(src)
        load_s = time.perf_counter() - t
        peaks = {"load": common.peak_rss_bytes()}
        nodes_before = sum(1 for _ in model.graph.all_nodes())
        t = time.perf_counter()
        pm = PassManager.from_pipeline(PIPELINE)
        pm(model)
        opt_s = time.perf_counter() - t
        peaks["opt"] = common.peak_rss_bytes()
        nodes_after = sum(1 for _ in model.graph.all_nodes())
        t = time.perf_counter()
        save(model, dst, external_data=payload.get("external_data"))
        save_s = time.perf_counter() - t
        per_pass: dict[str, float] = collections.defaultdict(float)
        for rec in pm.records:
            per_pass[rec.name] += rec.seconds
        peaks["save"] = common.peak_rss_bytes()
        extra = {"io": io_from, "per_pass_s": dict(per_pass), "peak_rss_after_bytes": peaks}
    elif kind in ("onnxslim", "onnxoptimizer"):
        import onnx

        if kind == "onnxslim":
            import onnxslim

            optimize = onnxslim.slim
        else:
            import onnxoptimizer

            optimize = onnxoptimizer.optimize
        import_s = time.perf_counter() - t0
        baseline = common.current_rss_bytes()
        t = time.perf_counter()
        model = onnx.load(src)
        load_s = time.perf_counter() - t
        nodes_before = len(model.graph.node)
        t = time.perf_counter()
        model = optimize(model)
        opt_s = time.perf_counter() - t
        nodes_after = len(model.graph.node)
        t = time.perf_counter()
        onnx.save(model, dst)
        save_s = time.perf_counter() - t
        extra = {}
    else:
        raise SystemExit(f"unknown worker kind {kind!r}")
    common.emit_result(
        {
            "kind": kind,
            "import_s": import_s,
            "load_s": load_s,
            "opt_s": opt_s,
            "save_s": save_s,
            "total_s": load_s + opt_s + save_s,
            "nodes_before": nodes_before,
            "nodes_after": nodes_after,
            "baseline_rss_bytes": baseline,
            **extra,
        }
    )


# ============================================================================================
# model generators


def make_synthetic(n_nodes: int, path: Path, seed: int = 0) -> int:
    """A chain of mixed blocks on a [1, 8, 8, 8] activation; returns the node count (>= n_nodes).

    conv block (8): Conv, BatchNormalization, Relu, Conv, BatchNormalization, Add (residual), Relu,
                    Identity
    mlp block (8):  MatMul, Add (bias), Div, Erf, Add, Mul, Mul (erf-GELU as exporters emit it),
                    Identity; its scalar constants are per-block copies (dedup has work)
    fold block (10): Constant, Constant, Mul (constant subexpression), Add, Shape, Reshape (no-op),
                    Relu, Relu (duplicate: CSE), Add, Identity
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    C = H = W = 8
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    counter = [0]

    def fresh(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def init(prefix: str, array) -> str:
        name = fresh(prefix)
        inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def node(op: str, inputs: list[str], **attrs) -> str:
        out = fresh(op.lower())
        nodes.append(helper.make_node(op, inputs, [out], name=fresh("n_" + op), **attrs))
        return out

    def conv_bn_relu(x: str, relu: bool = True) -> str:
        w = init("w", rng.standard_normal((C, C, 3, 3)) * 0.1)
        b = init("b", rng.standard_normal(C) * 0.01)
        y = node("Conv", [x, w, b], pads=[1, 1, 1, 1], kernel_shape=[3, 3])
        bn = [init(p, v) for p, v in (("scale", 1 + 0.1 * rng.standard_normal(C)),
                                       ("shift", 0.1 * rng.standard_normal(C)),
                                       ("mean", 0.1 * rng.standard_normal(C)),
                                       ("var", 1 + rng.random(C)))]
        y = node("BatchNormalization", [y, *bn], epsilon=1e-5)
        return node("Relu", [y]) if relu else y

    def conv_block(x: str) -> str:
        y = conv_bn_relu(x)
        y = conv_bn_relu(y, relu=False)
        y = node("Relu", [node("Add", [y, x])])
        return node("Identity", [y])

    def mlp_block(x: str) -> str:
        w = init("wm", rng.standard_normal((W, W)) * 0.3)
        b = init("bm", rng.standard_normal(W) * 0.01)
        h = node("Add", [node("MatMul", [x, w]), b])
        g = node("Div", [h, init("sqrt2", np.float32(np.sqrt(2.0)))])
        g = node("Add", [node("Erf", [g]), init("one", np.float32(1.0))])
        g = node("Mul", [node("Mul", [h, g]), init("half", np.float32(0.5))])
        return node("Identity", [g])

    def fold_block(x: str) -> str:
        k1 = node("Constant", [], value=numpy_helper.from_array(
            (rng.standard_normal((C, 1, 1)) * 0.01).astype(np.float32)))
        k2 = node("Constant", [], value=numpy_helper.from_array(np.full((C, 1, 1), 0.5, np.float32)))
        y = node("Add", [x, node("Mul", [k1, k2])])
        y = node("Reshape", [y, node("Shape", [y])])
        y = node("Add", [node("Relu", [y]), node("Relu", [y])])
        return node("Identity", [y])

    blocks = (conv_block, mlp_block, fold_block)
    x = "input"
    i = 0
    while len(nodes) < n_nodes:
        x = blocks[i % 3](x)
        i += 1
    graph = helper.make_graph(
        nodes,
        f"synthetic_{n_nodes}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, C, H, W])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, C, H, W])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="onnxpress-bench")
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return len(nodes)


def make_big(gigabytes: float, path: Path, dim: int = 2048, seed: int = 0) -> tuple[int, int]:
    """An MLP (MatMul, Add, Relu, Identity per layer) with ~`gigabytes` of float32 weights kept as
    external data, written layer by layer (never all in memory). Returns (nodes, weight bytes)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    layer_bytes = dim * dim * 4 + dim * 4
    layers = max(1, round(gigabytes * 1e9 / layer_bytes))
    path.parent.mkdir(parents=True, exist_ok=True)
    data_name = path.name + ".data"
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    offset = 0

    def external(name: str, shape: tuple[int, ...], array, f) -> None:
        nonlocal offset
        raw = np.ascontiguousarray(array, dtype=np.float32).tobytes()
        f.write(raw)
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
            t.external_data.add(key=k, value=v)
        inits.append(t)
        offset += len(raw)

    x = "input"
    with open(path.parent / data_name, "wb") as f:
        for i in range(layers):
            external(f"w{i}", (dim, dim), rng.random((dim, dim), dtype=np.float32) * (2 / dim) - 1 / dim, f)
            external(f"b{i}", (dim,), rng.standard_normal(dim) * 0.01, f)
            nodes += [
                helper.make_node("MatMul", [x, f"w{i}"], [f"mm{i}"], name=f"mm{i}"),
                helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"add{i}"], name=f"add{i}"),
                helper.make_node("Relu", [f"add{i}"], [f"relu{i}"], name=f"relu{i}"),
                helper.make_node("Identity", [f"relu{i}"], [f"h{i}"], name=f"id{i}"),
            ]
            x = f"h{i}"
    graph = helper.make_graph(
        nodes, "big_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, dim])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="onnxpress-bench")
    model.ir_version = 8
    onnx.save(model, str(path))
    return len(nodes), offset


# ============================================================================================
# the three parts


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bench_synthetic(sizes: list[int], work: Path) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        src = work / "synth" / f"synth_{n}.onnx"
        dst = work / "synth" / "out" / f"synth_{n}.onnx"
        dst.parent.mkdir(parents=True, exist_ok=True)
        nodes = make_synthetic(n, src)
        r = common.run_worker(SCRIPT, {"kind": "onnxpress", "src": str(src), "dst": str(dst)})
        r["us_per_node"] = r["total_s"] / nodes * 1e6
        r["size"] = n
        rows.append(r)
        log(f"  synthetic {nodes:>6} nodes -> {r['nodes_after']:>6}: {r['total_s']:.2f} s "
            f"({r['us_per_node']:.0f} us/node)")
    return rows


def bench_big(gigabytes: float, work: Path, repeat: int) -> dict[str, Any]:
    src = work / "big" / "model.onnx"
    nodes, weight_bytes = make_big(gigabytes, src)
    files = common.model_files(src)
    out_dir = work / "big" / "out"
    copy_dir = work / "big" / "copy"
    runs, copies, synced = [], [], []

    def fresh(folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        os.sync()  # flush what earlier steps left dirty, so no step pays for another's writes

    def run_onnxpress() -> None:
        fresh(out_dir)
        runs.append(common.run_worker(SCRIPT, {"kind": "onnxpress", "src": str(src),
                                               "dst": str(out_dir / "model.onnx"), "external_data": True}))

    def run_copy() -> None:
        fresh(copy_dir)
        t = time.perf_counter()
        for f in files:
            shutil.copyfile(f, copy_dir / f.name)
        copies.append(time.perf_counter() - t)

    def run_durable_copy() -> None:
        # A durable copy: what onnxpress's atomic save also does (fsync before the rename).
        fresh(copy_dir)
        t = time.perf_counter()
        for f in files:
            shutil.copyfile(f, copy_dir / f.name)
            fd = os.open(copy_dir / f.name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        synced.append(time.perf_counter() - t)

    steps = [run_onnxpress, run_copy, run_durable_copy]
    for i in range(repeat):  # interleaved A/B/C, the order rotated every round
        for step in steps[i % 3:] + steps[: i % 3]:
            step()
        r = runs[-1]
        log(f"  big run {i + 1}/{repeat}: onnxpress {r['total_s']:.2f} s "
            f"(peak RSS {r['peak_rss_bytes'] / 1e9:.2f} GB), copy {copies[-1]:.2f} s, "
            f"copy+fsync {synced[-1]:.2f} s")
    out_files = common.model_files(out_dir / "model.onnx")
    peak = max(r["peak_rss_bytes"] for r in runs)
    base = median(r["baseline_rss_bytes"] for r in runs)
    return {
        "nodes": nodes,
        "nodes_after": runs[-1]["nodes_after"],
        "weight_bytes": weight_bytes,
        "file_bytes": common.dir_bytes(files),
        "out_bytes": common.dir_bytes(out_files),
        "out_files": [f.name for f in out_files],
        "onnxpress_total_s": [r["total_s"] for r in runs],
        "onnxpress_phases_s": {k: median(r[k] for r in runs) for k in ("load_s", "opt_s", "save_s")},
        "onnxpress_wall_s": [r["wall_s"] for r in runs],
        "copy_s": copies,
        "copy_fsync_s": synced,
        "ratio_vs_copy": median(r["total_s"] for r in runs) / median(copies),
        "ratio_vs_copy_fsync": median(r["total_s"] for r in runs) / median(synced),
        "peak_rss_bytes": peak,
        "baseline_rss_bytes": base,
        "peak_rss_ratio": peak / weight_bytes,
        "peak_rss_above_baseline_ratio": (peak - base) / weight_bytes,
        "peak_rss_after_bytes": {k: max(r["peak_rss_after_bytes"][k] for r in runs)
                                 for k in ("load", "opt", "save")},
        "io": runs[-1].get("io"),
        "per_pass_s": runs[-1].get("per_pass_s", {}),
    }


def make_feeds(key: str, session, seeds=(0, 1, 2)) -> list[dict[str, Any]]:
    import numpy as np

    spec = REAL_MODELS[key][2]
    names = [i.name for i in session.get_inputs()]
    if sorted(names) != sorted(spec):
        raise RuntimeError(f"{key}: model inputs {names} differ from the benchmark's {sorted(spec)}")
    feeds = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        feed = {}
        for name, (kind, shape) in spec.items():
            if kind == "float":
                feed[name] = rng.standard_normal(shape).astype(np.float32)
            elif kind == "tokens":
                feed[name] = rng.integers(0, MINILM_VOCAB, shape, dtype=np.int64)
            elif kind == "ones":
                feed[name] = np.ones(shape, np.int64)
            else:
                feed[name] = np.zeros(shape, np.int64)
        feeds.append(feed)
    return feeds


def bench_real(models_dir: Path, work: Path) -> list[dict[str, Any]]:
    rows = []
    for key, (file_name, label, _) in REAL_MODELS.items():
        src = models_dir / file_name
        if not src.is_file():
            log(f"  {label}: {src} missing (run tools/fetch_models.py) - skipped")
            continue
        ref_sess = common.ort_session(src)
        feeds = make_feeds(key, ref_sess)
        reference = [ref_sess.run(None, f) for f in feeds]
        del ref_sess
        row: dict[str, Any] = {"key": key, "label": label, "nodes": len(_graph_nodes(src)),
                               "ops": dict(common.op_counts(src)), "tools": {}}
        for tool in TOOLS:
            dst = work / "real" / tool / file_name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.exists():
                dst.unlink()
            res: dict[str, Any]
            try:
                r = common.run_worker(SCRIPT, {"kind": tool, "src": str(src), "dst": str(dst)})
                ops = common.op_counts(dst)
                res = {"nodes": sum(ops.values()), "ops": dict(ops), "total_s": r["total_s"],
                       "opt_s": r["opt_s"], "wall_s": r["wall_s"]}
                try:
                    res["max_abs_err"] = common.max_abs_error(reference, common.run_feeds(dst, feeds))
                except Exception as e:  # noqa: BLE001 - a broken output model is a result
                    res["max_abs_err"] = None
                    res["ort_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            except common.WorkerError as e:
                res = {"error": str(e)}
            row["tools"][tool] = res
            if "error" in res:
                log(f"  {label}: {tool} failed: {res['error']}")
            else:
                log(f"  {label}: {tool} {row['nodes']} -> {res['nodes']} nodes, {res['total_s']:.2f} s, "
                    f"max abs err {res.get('max_abs_err')}")
        rows.append(row)
    return rows


def _graph_nodes(path: Path) -> list:
    import onnx

    return list(onnx.load(str(path), load_external_data=False).graph.node)


# ============================================================================================
# report


def _fmt_err(res: dict[str, Any]) -> str:
    if "error" in res:
        return "failed"
    err = res.get("max_abs_err")
    if err is None:
        return "ORT error"
    return "0 (identical)" if err == 0 else f"{err:.1e}"


def op_diff(ours: dict[str, int], theirs: dict[str, int]) -> list[tuple[str, int, int]]:
    """Op types where `ours` has more nodes than `theirs`: (op, ours, theirs), biggest gap first."""
    ops = set(ours) | set(theirs)
    diff = [(op, ours.get(op, 0), theirs.get(op, 0)) for op in ops if ours.get(op, 0) > theirs.get(op, 0)]
    return sorted(diff, key=lambda d: (d[2] - d[1], d[0]))


def _nodes_cell(ops: dict[str, int]) -> str:
    total = sum(ops.values())
    return f"{total} ({total - ops.get('Constant', 0)})"


def render(results: dict[str, Any], command: str) -> str:
    v = results["versions"]
    parts = [
        f"Measured {results['date']} on {results['machine']} (shared with other jobs), in one run of:",
        "",
        "```",
        "python tools/fetch_models.py --out bench_out/models",
        command,
        "```",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + f". onnxpress at {results['commit']}; I/O through {results['io']}.",
        f"Pipeline `-O2` = `{results['pipeline_text']}`.",
        "Every measurement is a fresh subprocess; times are load + optimize + save inside it "
        "(interpreter start and imports excluded), peak RSS is that process's `ru_maxrss`.",
    ]
    if results.get("synthetic"):
        rows = results["synthetic"]
        upn = [r["us_per_node"] for r in rows]
        parts += [
            "",
            "### Scaling with model size (synthetic)",
            "",
            "Chains of Conv/BatchNormalization/Relu residual blocks, MatMul/Add/erf-GELU blocks and "
            "blocks of foldable constants, no-op Reshape(x, Shape(x)), duplicate nodes and Identity "
            "(`make_synthetic` in tools/bench/foundation.py); [1, 8, 8, 8] activations, small weights.",
            "",
            md_table(
                ["nodes", "after -O2", "load s", "-O2 s", "save s", "total s", "µs/node", "peak RSS MB"],
                [
                    (r["nodes_before"], r["nodes_after"], f"{r['load_s']:.2f}", f"{r['opt_s']:.2f}",
                     f"{r['save_s']:.2f}", f"{r['total_s']:.2f}", f"{r['us_per_node']:.0f}",
                     f"{r['peak_rss_bytes'] / 1e6:.0f}")
                    for r in rows
                ],
            ),
            "",
            f"µs/node, largest / smallest: **{max(upn) / min(upn):.2f}×** "
            f"({min(upn):.0f} .. {max(upn):.0f} µs/node).",
        ]
        slowest = rows[-1].get("per_pass_s") or {}
        if slowest:
            top = sorted(slowest.items(), key=lambda kv: -kv[1])[:5]
            parts += ["", f"Where -O2 spends its time on the {rows[-1]['nodes_before']}-node model: "
                      + ", ".join(f"{k} {s:.2f} s" for k, s in top) + "."]
    b = results.get("big")
    if b:
        gb = b["weight_bytes"] / 1e9
        parts += [
            "",
            f"### Large weights ({gb:.2f} GB external data)",
            "",
            f"An MLP of {b['nodes']} nodes (MatMul 2048×2048, Add, Relu, Identity per layer), weights in "
            f"one external-data file. onnxpress loads, runs -O2 ({b['nodes']} → {b['nodes_after']} nodes), "
            f"saves with external data; the baseline is `shutil.copyfile` of the same "
            f"{b['file_bytes'] / 1e9:.2f} GB of files; interleaved A/B/C with the order rotated every round, {len(b['copy_s'])} rounds, median.",
            "",
            md_table(
                ["", "median s", "runs s"],
                [
                    ("onnxpress load + -O2 + save", f"{median(b['onnxpress_total_s']):.2f}",
                     " / ".join(f"{x:.2f}" for x in b["onnxpress_total_s"])),
                    ("  (load / -O2 / save)", " / ".join(f"{b['onnxpress_phases_s'][k]:.2f}"
                                                         for k in ("load_s", "opt_s", "save_s")), ""),
                    ("onnxpress, whole subprocess", f"{median(b['onnxpress_wall_s']):.2f}",
                     " / ".join(f"{x:.2f}" for x in b["onnxpress_wall_s"])),
                    ("shutil.copyfile", f"{median(b['copy_s']):.2f}", " / ".join(f"{x:.2f}" for x in b["copy_s"])),
                    ("shutil.copyfile + fsync", f"{median(b['copy_fsync_s']):.2f}",
                     " / ".join(f"{x:.2f}" for x in b["copy_fsync_s"])),
                ],
            ),
            "",
            f"Time vs copy: **{b['ratio_vs_copy']:.2f}×**; vs a durable copy (copy + fsync, as the atomic "
            f"save does): **{b['ratio_vs_copy_fsync']:.2f}×** (target ≤ 2×). Peak RSS: **{b['peak_rss_bytes'] / 1e9:.2f} GB = "
            f"{b['peak_rss_ratio']:.2f}× the weight bytes** (target ≤ 1.2×); the process holds "
            f"{b['baseline_rss_bytes'] / 1e6:.0f} MB after imports, so the model itself adds "
            f"{b['peak_rss_above_baseline_ratio']:.2f}×; peak RSS after load / -O2 / save: "
            + " / ".join(f"{b['peak_rss_after_bytes'][k] / 1e9:.2f}" for k in ("load", "opt", "save"))
            + f" GB. Output: {b['out_bytes'] / 1e9:.2f} GB in "
            f"{', '.join(b['out_files'])}.",
        ]
        if b.get("per_pass_s"):
            top = sorted(b["per_pass_s"].items(), key=lambda kv: -kv[1])[:4]
            parts += ["", "Where -O2 spends its time here (last run): "
                      + ", ".join(f"{k} {s:.2f} s" for k, s in top) + "."]
    real = results.get("real")
    if real:
        header = ["model", "nodes"]
        for t in TOOLS:
            header += [f"{t} nodes", f"{t} s", f"{t} max abs err"]
        table_rows = []
        for row in real:
            cells = [row["label"], _nodes_cell(row["ops"])]
            for t in TOOLS:
                res = row["tools"][t]
                if "error" in res:
                    cells += ["failed", "", ""]
                else:
                    cells += [_nodes_cell(res["ops"]), f"{res['total_s']:.2f}", _fmt_err(res)]
            table_rows.append(cells)
        parts += [
            "",
            "### Real models: onnxpress -O2 vs onnxslim vs onnxoptimizer",
            "",
            "Nodes: all nodes of the saved model's main graph, and in brackets the same without "
            "`Constant` nodes (onnxslim stores every constant as an initializer, so it has none). "
            "Time is load + optimize + save in a fresh process (onnxslim / onnxoptimizer through "
            "`onnx.load` / `onnx.save` with default settings: `onnxslim.slim(model)`, "
            "`onnxoptimizer.optimize(model)`). Max abs err: largest absolute output difference against "
            "the original model on ONNX Runtime CPU (ORT graph optimizations off), 3 seeded random "
            "inputs: det 1×3×640×640, rec 1×3×48×320, cls 1×3×48×192 (standard normal), MiniLM "
            "batch 1 × 16 token ids drawn from the vocabulary, attention mask ones, token types zeros.",
            "",
            md_table(header, table_rows),
            "",
            "Target: -O2 leaves no more nodes than onnxslim on every real model.",
            "",
        ]
        for row in real:
            ours, slim = row["tools"]["onnxpress"], row["tools"]["onnxslim"]
            if "error" in ours or "error" in slim:
                parts.append(f"- {row['label']}: not compared (a tool failed).")
                continue
            n_ours, n_slim = ours["nodes"], slim["nodes"]
            c_ours = n_ours - ours["ops"].get("Constant", 0)
            c_slim = n_slim - slim["ops"].get("Constant", 0)
            verdict = "**met**" if n_ours <= n_slim else "**missed**"
            line = (f"- {row['label']}: {verdict} counting all nodes ({n_ours} vs {n_slim}); "
                    f"{'met' if c_ours <= c_slim else 'missed'} without Constant nodes ({c_ours} vs {c_slim}).")
            diff = op_diff(ours["ops"], slim["ops"])
            if diff:
                line += (" Op types -O2 leaves more of (onnxpress / onnxslim): "
                         + ", ".join(f"{op} {a}/{b}" for op, a, b in diff) + ".")
            fewer = op_diff(slim["ops"], ours["ops"])
            if fewer:
                line += (" Op types onnxslim leaves more of (onnxslim / onnxpress): "
                         + ", ".join(f"{op} {a}/{b}" for op, a, b in fewer) + ".")
            parts.append(line)
    return "\n".join(parts) + "\n"


# ============================================================================================


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--models", default="bench_out/models", help="folder from tools/fetch_models.py")
    ap.add_argument("--sizes", default="1000,5000,10000,20000,50000", help="synthetic node counts")
    ap.add_argument("--big-gb", type=float, default=1.0, help="weights of the large model (0: skip)")
    ap.add_argument("--repeat", type=int, default=6, help="A/B rounds for the large model")
    ap.add_argument("--parts", default="synthetic,big,real", help="which parts to run")
    ap.add_argument("--work", default="bench_out/foundation", help="scratch folder for models")
    ap.add_argument("--out", action="append", default=[],
                    help="write results: a .md file (section 'Foundation: load + -O2 + save') or a .json; "
                         "repeatable; default: print Markdown")
    args = ap.parse_args(argv)
    if args.worker:
        _worker(json.loads(args.worker))
        return 0

    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from onnxpress.passes import PassManager

    results: dict[str, Any] = {
        "date": common.today(),
        "machine": common.machine_line(),
        "versions": common.versions(["onnx", "onnx-ir", "onnxscript", "onnxruntime",
                                     "onnxslim", "onnxoptimizer", "numpy"]),
        "io": common.onnxpress_io()[2],
        "commit": common.git_commit(),
        "pipeline_text": PassManager.from_pipeline(PIPELINE).to_text(),
    }
    try:
        if "synthetic" in parts:
            log("synthetic:")
            results["synthetic"] = bench_synthetic([int(s) for s in args.sizes.split(",") if s], work)
        if "big" in parts and args.big_gb > 0:
            log("big:")
            results["big"] = bench_big(args.big_gb, work, args.repeat)
            shutil.rmtree(work / "big", ignore_errors=True)  # 3+ GB of scratch
        if "real" in parts:
            log("real:")
            results["real"] = bench_real(Path(args.models), work)
    except common.WorkerError as e:
        print(f"foundation: error: {e}", file=sys.stderr)
        return 1

    command = "python tools/bench/foundation.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]))
    text = render(results, command.strip())
    for out in args.out:
        if out.endswith(".json"):
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(results, indent=1))
        else:
            common.write_md_section(out, "foundation", "Foundation: load + -O2 + save", text)
        log(f"wrote {out}")
    if not args.out:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
