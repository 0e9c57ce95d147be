#!/usr/bin/env python3
"""Quantization benchmark: onnxpress `quantize-qdq` / `quantize-dynamic` / `quantize-weights` side by
side with ONNX Runtime's own quantizers, on real models.

    python tools/fetch_models.py --out bench_out/models          # real models, once
    OPENBLAS_NUM_THREADS=1 python tools/bench/quantize.py --models bench_out/models \\
        --out docs/BENCHMARKS.md --json bench_out/quantize.json

Models: PP-OCRv4 det (1x3x640x640) / rec (1x3x48x320), PP-OCR cls (1x3x48x192), all-MiniLM-L6-v2.
Variants of every model (each produced in its own fresh subprocess, so that its wall time and peak
RSS belong to that one quantization run):

  ours int8                `O2,quantize-qdq` (CPU defaults: uint8 asymmetric activations, int8
                           symmetric per-channel weights, int32 bias, calibration=auto, fallback=auto)
  ours pct / ours minmax   the same with `calibration=percentile|minmax`
  ours dynamic             `O2,quantize-dynamic`
  ORT static minmax / pct  `quant_pre_process` then `quantize_static` (QDQ, per_channel=True, QUInt8
                           activations, QInt8 weights, MinMax / Percentile) with a
                           CalibrationDataReader over the same calibration feeds; when it fails on
                           the original opset-11/12 model the failure is recorded and it is retried on
                           the model upgraded to opset 13 with onnx's version converter
  ORT dynamic              `quant_pre_process` then `quantize_dynamic` (QInt8, per_channel=True)
  MiniLM only (4-bit)      ours `quantize-weights{bits=4 block-size=32}` (RTN; as MatMulNBits and as
                           opset-21 blocked DequantizeLinear) and `method=gptq`; ORT
                           `MatMulNBitsQuantizer` (4 bits, block 32, symmetric, RTN)

Measured: size ratio (files on disk vs the fp32 model), ORT CPU latency ratio vs fp32 (ORT default
graph optimizations, 1 intra-op thread and ORT's default thread count, every variant of a model
interleaved round-robin with fp32 - `pruning.measure_latency` - median), fidelity against the fp32
model on evaluation inputs disjoint from the calibration inputs, run the way they are deployed (ORT
default graph optimizations, so the fused integer kernels are what is measured): output cosine and
SQNR, plus the task metric (decoded-text agreement for rec, label agreement for cls, IoU of the
binarised probability map for det, mean-pooled embedding cosine for MiniLM); quantization wall time
and peak RSS of the worker; which integer kernels ORT's graph optimizer actually made of the model.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from tools.bench import common  # noqa: E402
from tools.bench.common import md_table  # noqa: E402

SCRIPT = Path(__file__).resolve()
MINILM_LATENCY_TOKENS = 128
TASK_TARGET = 0.98


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ============================================================================================
# data (built once in the parent; calibration feeds go to the workers as .npz)


def _cls_lines(n: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    """Text lines as cls inputs 1x3x48x192, every other one rotated 180° (label 1), as rapidocr
    rotates the crop before `resize_norm_img`: the zero padding stays on the right."""
    from tools.bench import ocr_data

    lines, _ = ocr_data.text_lines(n, seed=seed, width=192)
    out, labels = [], []
    for i, x in enumerate(lines):
        x = x.copy()
        if i % 2:
            cols = np.nonzero(np.any(x[0] != 0, axis=(0, 1)))[0]
            w = int(cols[-1]) + 1 if cols.size else x.shape[-1]
            x[..., :w] = x[..., ::-1, :w][..., ::-1]  # flip H and the content's W
        out.append(x)
        labels.append(i % 2)
    return out, labels


class Spec:
    def __init__(self, key: str, label: str, src: Path, calib: list, evals: list, latency_feed: dict,
                 fidelity: Callable, task: str, task_label: str, data_note: str, int4: bool = False,
                 extra: tuple[tuple[str, str], ...] = ()):
        self.__dict__.update(locals())
        del self.__dict__["self"]


def fidelity_cls(truth: list[int]):
    def fidelity(ref, other, feeds) -> dict[str, float]:
        a, b = np.concatenate(ref), np.concatenate(other)
        return {"label_agreement": float(np.mean(a.argmax(1) == b.argmax(1))),
                "accuracy": float(np.mean(b.argmax(1) == np.asarray(truth))),
                "accuracy_ref": float(np.mean(a.argmax(1) == np.asarray(truth)))}
    return fidelity


def build_specs(models_dir: Path, only: set[str] | None, n_calib: int) -> list[Spec]:
    from tools.bench import ocr_data, pruning, text_data

    specs: list[Spec] = []

    def want(key: str) -> bool:
        return only is None or key in only

    if want("ppocrv4_det"):
        specs.append(Spec(
            "ppocrv4_det", "PP-OCRv4 det", models_dir / "ppocrv4_det.onnx",
            calib=[{"x": x} for x in ocr_data.pages(4, seed=1001)],
            evals=[{"x": x} for x in ocr_data.pages(8, seed=7)],
            latency_feed={"x": ocr_data.pages(1, seed=99)[0]},
            fidelity=pruning.fidelity_det, task="box_f1@0.5", task_label="text-box F1 (IoU ≥ 0.5)",
            extra=(("iou@0.3", "IoU of >0.3 pixels"),),
            data_note="8 rendered document pages 640×640 (text blocks in 6 DejaVu faces, 14–36 px); "
                      "calibration: 4 other pages"))
    if want("ppocrv4_rec"):
        lines, truth = ocr_data.text_lines(128, seed=7)
        cal, _ = ocr_data.text_lines(n_calib, seed=1001)
        chars = ocr_data.load_characters(models_dir / "ppocrv4_rec.onnx")
        specs.append(Spec(
            "ppocrv4_rec", "PP-OCRv4 rec", models_dir / "ppocrv4_rec.onnx",
            calib=[{"x": x} for x in cal], evals=[{"x": x} for x in lines], latency_feed={"x": lines[0]},
            fidelity=pruning.make_fidelity_rec(chars, truth), task="text_agreement_trim",
            task_label="decoded-text agreement (trimmed)", extra=(("text_agreement", "exact-string agreement"),),
            data_note=f"128 rendered text lines 48×320 (2–5 English words / numbers, 6 DejaVu faces); "
                      f"calibration: {n_calib} other lines; CTC greedy decoding with the model's `character` alphabet"))
    if want("ppocr_cls"):
        lines, labels = _cls_lines(128, seed=17)
        cal, _ = _cls_lines(n_calib, seed=1017)
        specs.append(Spec(
            "ppocr_cls", "PP-OCR cls", models_dir / "ppocr_cls.onnx",
            calib=[{"x": x} for x in cal], evals=[{"x": x} for x in lines], latency_feed={"x": lines[0]},
            fidelity=fidelity_cls(labels), task="label_agreement", task_label="label agreement",
            data_note=f"128 rendered text lines 48×192, every other one rotated 180° (label 0° / 180°); "
                      f"calibration: {n_calib} other lines, half rotated"))
    if want("minilm_l6_v2"):
        lat_ids = text_data.tokenizer(MINILM_LATENCY_TOKENS).encode(" ".join(text_data.EVAL_SENTENCES)).ids
        lat_ids = np.asarray([lat_ids[:MINILM_LATENCY_TOKENS]], np.int64)
        specs.append(Spec(
            "minilm_l6_v2", "all-MiniLM-L6-v2", models_dir / "minilm_l6_v2.onnx",
            calib=text_data.feeds(text_data.calibration_texts(n_calib)),
            evals=text_data.feeds(text_data.EVAL_SENTENCES),
            latency_feed={"input_ids": lat_ids, "attention_mask": np.ones_like(lat_ids),
                          "token_type_ids": np.zeros_like(lat_ids)},
            fidelity=pruning.fidelity_minilm, task="cosine", task_label="mean emb. cosine", int4=True,
            data_note=f"64 hand-written English sentences (one feed each, no padding), mean-pooled "
                      f"last_hidden_state; calibration: {n_calib} template-built office/product paragraphs; "
                      f"latency on 1×{MINILM_LATENCY_TOKENS} tokens"))
    return specs


def save_feeds(feeds: list[dict[str, np.ndarray]], path: Path) -> None:
    arrays = {f"{i:05d}/{k}": v for i, f in enumerate(feeds) for k, v in f.items()}
    np.savez(path, **arrays)


def load_feeds(path: str | Path) -> list[dict[str, np.ndarray]]:
    data = np.load(path)
    out: dict[str, dict[str, np.ndarray]] = collections.defaultdict(dict)
    for key in data.files:
        i, name = key.split("/", 1)
        out[i][name] = data[key]
    return [out[i] for i in sorted(out)]


# ============================================================================================
# variants (name -> worker payload)


def variants_for(spec: Spec) -> dict[str, dict[str, Any]]:
    v: dict[str, dict[str, Any]] = {
        "onnxpress O2 (fp32)": {"kind": "ours", "pipeline": "O2"},
        "ours int8": {"kind": "ours", "pipeline": "O2,quantize-qdq"},
        "ours int8 --threads 1": {"kind": "ours", "pipeline": "O2,quantize-qdq", "config": {"timing_threads": 1}},
        "ours int8 no part timing": {"kind": "ours", "pipeline": "O2,quantize-qdq{part-timing=false}"},
        "ours int8 no fallback": {"kind": "ours", "pipeline": "O2,quantize-qdq{fallback=none}"},
        "ours int8 pct": {"kind": "ours", "pipeline": "O2,quantize-qdq{calibration=percentile}"},
        "ours int8 minmax": {"kind": "ours", "pipeline": "O2,quantize-qdq{calibration=minmax}"},
        "ORT static minmax": {"kind": "ort_static", "method": "MinMax"},
        "ORT static pct": {"kind": "ort_static", "method": "Percentile"},
        "ours dynamic": {"kind": "ours", "pipeline": "O2,quantize-dynamic"},
        "ORT dynamic": {"kind": "ort_dynamic"},
    }
    if spec.int4:
        v.update({
            "ours int4 RTN": {"kind": "ours", "pipeline": "O2,quantize-weights{bits=4 block-size=32 format=matmulnbits}"},
            "ours int4 RTN qdq": {"kind": "ours", "pipeline": "O2,quantize-weights{bits=4 block-size=32}"},
            "ours int4 GPTQ": {"kind": "ours",
                               "pipeline": "O2,quantize-weights{bits=4 block-size=32 format=matmulnbits method=gptq}"},
            "ORT int4 RTN": {"kind": "ort_nbits"},
        })
    return v


# ============================================================================================
# workers (fresh subprocess each)


def _worker_ours(p: dict[str, Any]) -> dict[str, Any]:
    import onnxpress

    feeds = load_feeds(p["calib"])
    t = time.perf_counter()
    result = onnxpress.optimize(p["src"], p["pipeline"], data=feeds, verify="none", config=p.get("config"))
    wall = time.perf_counter() - t
    result.save(p["dst"])
    passes = [{"name": x["name"], "seconds": x["seconds"], "stats": x.get("stats", {})}
              for x in result.report.passes if x["name"].startswith(("quantize", "convert"))]
    return {"path": p["dst"], "quant_s": wall, "passes": passes, "diagnostics": list(result.report.diagnostics)}


class _Reader:
    def __init__(self, feeds):
        self.feeds, self.i = feeds, 0

    def get_next(self):
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def rewind(self):
        self.i = 0


def _upgrade(src: str, dst: Path, opset: int = 13) -> str:
    import onnx
    from onnx import version_converter

    model = onnx.load(src)
    onnx.save(version_converter.convert_version(model, opset), str(dst))
    return str(dst)


def _worker_ort(p: dict[str, Any]) -> dict[str, Any]:
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quant_pre_process,
                                          quantize_dynamic, quantize_static)

    logging.getLogger().setLevel(logging.ERROR)
    dst = Path(p["dst"])
    feeds = load_feeds(p["calib"]) if p["kind"] == "ort_static" else None
    res: dict[str, Any] = {"path": str(dst)}
    t0 = time.perf_counter()

    def attempt(src: str) -> None:
        pre = dst.with_name(dst.stem + "_pre.onnx")
        try:
            quant_pre_process(src, str(pre))
        except Exception as e:  # noqa: BLE001 - ORT's symbolic shape inference fails on some models
            res.setdefault("pre_process_error", f"{type(e).__name__}: {e}".splitlines()[0][:200])
            quant_pre_process(src, str(pre), skip_symbolic_shape=True)
        if p["kind"] == "ort_static":
            quantize_static(str(pre), str(dst), _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=getattr(CalibrationMethod, p["method"]))
        else:
            quantize_dynamic(str(pre), str(dst), per_channel=True, weight_type=QuantType.QInt8)
        pre.unlink(missing_ok=True)
        deployed_session(dst)  # a model ORT cannot load is a failure too (retried on opset 13 below)

    try:
        attempt(p["src"])
    except Exception as e:  # noqa: BLE001 - ORT's failure is a result
        res["error_original"] = f"{type(e).__name__}: {e}".splitlines()[0][:240]
        import onnx

        if max(o.version for o in onnx.load(p["src"], load_external_data=False).opset_import
               if o.domain in ("", "ai.onnx")) >= 13:
            raise
        t0 = time.perf_counter()  # time the retry only
        attempt(_upgrade(p["src"], dst.with_name(dst.stem + "_op13.onnx")))
        res["upgraded_to"] = 13
    res["quant_s"] = time.perf_counter() - t0
    return res


def _worker_ort_nbits(p: dict[str, Any]) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    t = time.perf_counter()
    q = MatMulNBitsQuantizer(onnx.load(p["src"]), bits=4, block_size=32, is_symmetric=True,
                             algo_config=DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, bits=4))
    q.process()
    q.model.save_model_to_file(p["dst"], use_external_data_format=False)
    return {"path": p["dst"], "quant_s": time.perf_counter() - t}


def peak_rss_this_process() -> int:
    """Peak RSS of this process's own address space (VmHWM).

    Not `ru_maxrss`: on Linux that survives fork + exec (the kernel carries the forked copy's high-
    water mark, i.e. the parent's RSS at fork time, into the exec'd worker), so a worker started by a
    parent holding 1.3 GB would report at least 1.3 GB whatever it did itself.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return common.peak_rss_bytes()


def worker_main(payload: dict[str, Any]) -> None:
    fn = {"ours": _worker_ours, "ort_static": _worker_ort, "ort_dynamic": _worker_ort,
          "ort_nbits": _worker_ort_nbits}[payload["kind"]]
    if payload["kind"] != "ours":
        # ORT's quantization tools write temporary models and external data into the current
        # directory: run them inside the output's folder, with every path made absolute first
        payload = {k: (str(Path(v).resolve()) if isinstance(v, str) and k in ("src", "dst", "calib") else v)
                   for k, v in payload.items()}
        os.chdir(Path(payload["dst"]).parent)
    result = fn(payload)
    result["peak_rss_bytes"] = peak_rss_this_process()
    common.emit_result(result)


# ============================================================================================
# measurements in the parent


def deployed_session(path: str | Path, threads: int = 1, optimized_to: str | None = None):
    """ORT CPU as deployed: default (all) graph optimizations."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if optimized_to:
        so.optimized_model_filepath = optimized_to
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_deployed(path: Path, feeds) -> list[np.ndarray]:
    sess = deployed_session(path)
    return [sess.run(None, f)[0] for f in feeds]


def sqnr_db(ref: list[np.ndarray], other: list[np.ndarray]) -> float:
    s = sum(float(np.sum(np.asarray(r, np.float64) ** 2)) for r in ref)
    n = sum(float(np.sum((np.asarray(r, np.float64) - np.asarray(o, np.float64)) ** 2)) for r, o in zip(ref, other))
    return float("inf") if n == 0 else 10 * np.log10(s / n)


def output_cosine(ref, other) -> float:
    """Mean over inputs of the cosine between the two raw outputs (shapes may differ across inputs)."""
    from tools.bench import text_data

    return float(np.mean([text_data.cosine_rows(r.reshape(1, -1), o.reshape(1, -1))[0] for r, o in zip(ref, other)]))


QUANT_KERNELS = ("QLinearConv", "QLinearMatMul", "QGemm", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
                 "MatMulNBits", "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul", "QLinearConcat",
                 "QLinearSigmoid", "QLinearLeakyRelu", "QLinearGlobalAveragePool", "QLinearAveragePool",
                 "QLinearSoftmax", "QAttention", "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear")


def fused_ops(path: Path, feed: dict[str, np.ndarray], work: Path) -> dict[str, int]:
    """Op counts of the graph ORT's CPU EP actually runs (default optimizations)."""
    out = work / (path.stem + "_ort_optimized.onnx")
    deployed_session(path, optimized_to=str(out))
    counts = common.op_counts(out)
    out.unlink(missing_ok=True)
    return {k.split(".")[-1]: v for k, v in counts.items()}


def measure_latency_threads(paths: dict[str, Path], feed, rounds: int, threads: int) -> dict[str, dict[str, float]]:
    """`pruning.measure_latency` with another thread count (0 = ORT's default)."""
    from tools.bench import pruning

    if threads == 1:
        return pruning.measure_latency(paths, feed, rounds)
    orig = pruning.latency_session
    pruning.latency_session = lambda p: deployed_session(p, threads=threads)
    try:
        return pruning.measure_latency(paths, feed, rounds)
    finally:
        pruning.latency_session = orig


def fix_negative_dims(spec: Spec, mdir: Path) -> str | None:
    """paddle2onnx writes dim_value -1 for a free batch dim (PP-OCR cls). If onnxpress refuses feeds
    against such a model, run every variant (ours and ORT's) on a copy with that dim symbolic."""
    import onnx

    model = onnx.load(str(spec.src))
    neg = [(i.name, k) for i in model.graph.input for k, d in enumerate(i.type.tensor_type.shape.dim)
           if d.HasField("dim_value") and d.dim_value < 0]
    if not neg:
        return None
    try:
        from onnxpress.data import load_data
        from onnxpress.ir.io import load

        load_data(spec.calib[:1], load(str(spec.src)))
        return None  # accepted as is
    except Exception as e:  # noqa: BLE001
        err = f"{type(e).__name__}: {e}".splitlines()[0][:240]
    for i in model.graph.input:
        for k, d in enumerate(i.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value < 0:
                d.dim_param = f"{i.name}_dim{k}"
    dst = mdir / (spec.src.stem + "_symbolic_dims.onnx")
    onnx.save(model, str(dst))
    spec.src = dst
    return (f"the original declares input {', '.join(f'{n!r} dim {k}' for n, k in neg)} as dim_value -1; "
            f"onnxpress refuses feeds against it (`{err}`), so every variant and the fp32 reference here use a copy "
            "with that dim made symbolic (weights and nodes unchanged)")


def bench_model(spec: Spec, work: Path, repeat: int, default_threads: bool, skip: set[str]) -> dict[str, Any]:
    mdir = work / spec.key
    mdir.mkdir(parents=True, exist_ok=True)
    src_note = fix_negative_dims(spec, mdir)
    calib_path = mdir / "calib.npz"
    save_feeds(spec.calib, calib_path)
    res: dict[str, Any] = {"label": spec.label, "data_note": spec.data_note, "task": spec.task, "extra": list(spec.extra),
                           "task_label": spec.task_label, "n_calib": len(spec.calib), "n_eval": len(spec.evals),
                           "src_note": src_note}
    base_bytes = common.dir_bytes(common.model_files(spec.src))
    res["base"] = {"path": str(spec.src), "bytes": base_bytes}
    variants: dict[str, dict[str, Any]] = {}
    for name, payload in variants_for(spec).items():
        if any(s in name for s in skip):
            continue
        dst = mdir / (name.replace(" ", "_").replace("(", "").replace(")", "") + ".onnx")
        dst.unlink(missing_ok=True)
        log(f"[{spec.key}] {name} ...")
        try:
            v = common.run_worker(SCRIPT, {**payload, "src": str(spec.src), "dst": str(dst), "calib": str(calib_path)},
                                  timeout=1500)
        except Exception as e:  # noqa: BLE001 - a failing quantizer is a result
            v = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
        v["payload"] = payload
        if "path" in v:
            v["bytes"] = common.dir_bytes(common.model_files(v["path"]))
            v["size_ratio"] = v["bytes"] / base_bytes
        variants[name] = v
        log(f"  -> {({k: x for k, x in v.items() if k not in ('passes', 'payload', 'diagnostics')})}")

    ok = {n: v for n, v in variants.items() if "path" in v}
    # fidelity, as deployed
    ref = run_deployed(spec.src, spec.evals)
    for name, v in ok.items():
        try:
            out = run_deployed(Path(v["path"]), spec.evals)
            fid = spec.fidelity(ref, out, spec.evals)
            fid["out_cosine"] = output_cosine(ref, out)
            fid["sqnr_db"] = sqnr_db(ref, out)
            v["fidelity"] = fid
        except Exception as e:  # noqa: BLE001
            v["fidelity_error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        try:
            v["fused_ops"] = fused_ops(Path(v["path"]), spec.latency_feed, mdir)
        except Exception as e:  # noqa: BLE001
            v["fused_ops_error"] = f"{type(e).__name__}: {e}"[:300]
        log(f"  {name}: {v.get('fidelity', v.get('fidelity_error'))}")
    res["base"]["fused_ops"] = fused_ops(spec.src, spec.latency_feed, mdir)
    ref_fid = spec.fidelity(ref, ref, spec.evals)
    res["base"]["fidelity"] = ref_fid

    # latency: everything that runs, interleaved with fp32
    timed = {"fp32": spec.src, **{n: Path(v["path"]) for n, v in ok.items() if "fidelity" in v}}
    sess = deployed_session(spec.src)
    for _ in range(2):
        sess.run(None, spec.latency_feed)
    t = time.perf_counter()
    for _ in range(5):
        sess.run(None, spec.latency_feed)
    base_ms = (time.perf_counter() - t) / 5 * 1e3
    del sess
    # fast models get more rounds: at least ~1 s of fp32 runs per variant
    rounds = int(min(max(repeat, np.ceil(1000.0 / max(base_ms, 1e-3))), 20 * repeat))
    res["rounds"] = rounds
    for threads in ([1, 0] if default_threads else [1]):
        log(f"[{spec.key}] latency, {threads or 'default'} thread(s), {rounds} rounds ...")
        try:
            lat = measure_latency_threads(timed, spec.latency_feed, rounds, threads)
        except Exception as e:  # noqa: BLE001
            res[f"latency_error_{threads}"] = f"{type(e).__name__}: {e}"[:300]
            continue
        res["base"][f"lat{threads}"] = lat["fp32"]
        for n in timed:
            if n != "fp32":
                variants[n][f"lat{threads}"] = lat[n]
                variants[n][f"lat_ratio{threads}"] = lat[n]["median_ms"] / lat["fp32"]["median_ms"]
    res["variants"] = variants
    return res


# ============================================================================================
# report


def _f(x, fmt="{:.3f}") -> str:
    return "–" if x is None else fmt.format(x)


KERNEL_SHORT = {"QLinearConv": "QConv", "QLinearMatMul": "QMatMul", "MatMulIntegerToFloat": "MMI2F",
                "DynamicQuantizeMatMul": "DQMatMul", "QLinearAdd": "QAdd", "QLinearMul": "QMul",
                "QLinearConcat": "QConcat", "QLinearSigmoid": "QSigmoid", "QLinearGlobalAveragePool": "QGAP",
                "QLinearAveragePool": "QAvgPool", "QLinearLeakyRelu": "QLeakyRelu", "QLinearSoftmax": "QSoftmax",
                "DynamicQuantizeLinear": "DQL", "QuantizeLinear": "Q", "DequantizeLinear": "DQ"}


def kernels_cell(fused: dict[str, int] | None) -> str:
    if not fused:
        return "–"
    parts = [f"{KERNEL_SHORT.get(k, k)} {fused[k]}" for k in QUANT_KERNELS if fused.get(k)]
    return ", ".join(parts) or "none (all float)"


def model_table(res: dict[str, Any], default_threads: bool) -> str:
    task = res["task"]
    header = ["variant", "size", "ORT ms 1 thr (ratio)"] + (["ORT ms default thr (ratio)"] if default_threads else []) + \
             [res["task_label"]] + [label for _k, label in res.get("extra", [])] + ["output cosine", "SQNR dB", "quantize s", "peak RSS MB", "what ORT runs (integer kernels; leftover Q / DQ)"]
    b = res["base"]
    rows = [["fp32 (original)", f"{b['bytes'] / 1e6:.2f} MB", _f(b.get("lat1", {}).get("median_ms"), "{:.1f}")] +
            ([_f(b.get("lat0", {}).get("median_ms"), "{:.1f}")] if default_threads else []) +
            [_f(b["fidelity"][task])] + [_f(b["fidelity"].get(k)) for k, _l in res.get("extra", [])] +
            ["1", "∞", "–", "–", kernels_cell(b.get("fused_ops"))]]
    for name, v in res["variants"].items():
        if "error" in v:
            rows.append([name, f"**failed**: {v['error']}"] + [""] * (len(header) - 2))
            continue
        fid = v.get("fidelity", {})

        def lat(t):
            x = v.get(f"lat{t}")
            return "–" if x is None else f"{x['median_ms']:.1f} ({v[f'lat_ratio{t}']:.2f}×)"

        label = name + (" ‡" if v.get("upgraded_to") else "")
        rows.append([label, f"{v['size_ratio']:.3f}", lat(1)] + ([lat(0)] if default_threads else []) +
                    [_f(fid.get(task), "{:.4f}" if task == "cosine" else "{:.3f}")] +
                    [_f(fid.get(k)) for k, _l in res.get("extra", [])] + [_f(fid.get("out_cosine"), "{:.4f}"),
                     _f(fid.get("sqnr_db"), "{:.1f}"), _f(v.get("quant_s"), "{:.1f}"),
                     _f(v.get("peak_rss_bytes", 0) / 2**20, "{:.0f}"), kernels_cell(v.get("fused_ops"))])
    return md_table(header, rows)


def _best_ort_static(vs: dict[str, Any], task: str) -> tuple[str, dict[str, Any]] | None:
    cands = [(n, v) for n, v in vs.items() if n.startswith("ORT static") and "fidelity" in v]
    if not cands:
        return None
    return max(cands, key=lambda nv: nv[1]["fidelity"][task])


def targets(results: dict[str, Any]) -> list[str]:
    out = []
    for key, res in results.items():
        vs, task = res["variants"], res["task"]
        ours = vs.get("ours int8", {})
        ort_all = [(n, v) for n, v in vs.items() if n.startswith("ORT static") and "fidelity" in v]
        if "fidelity" not in ours:
            why = ours.get("error") or ours.get("fidelity_error") or "no result"
            out.append(f"- {res['label']}: ours int8 (percentile) has no fidelity result ({why}) — **missed**.")
            continue
        of = ours["fidelity"]
        cells = []
        ok_abs = of[task] >= TASK_TARGET
        cells.append(f"task {res['task_label']} {of[task]:.3f} ≥ {TASK_TARGET}: **{'met' if ok_abs else 'missed'}**")
        if not ort_all:
            cells.append("no ORT quantize_static result to compare with")
        for n, v in ort_all:
            f = v["fidelity"]
            fast = ours.get("lat_ratio1", 9) <= v.get("lat_ratio1", 0) * 1.03
            small = ours["size_ratio"] <= v["size_ratio"] * 1.001
            faithful = of[task] >= f[task] - 1e-9 and of["sqnr_db"] >= f["sqnr_db"] - 0.05
            cells.append(
                f"vs {n}: speed {ours.get('lat_ratio1', float('nan')):.2f}× vs {v.get('lat_ratio1', float('nan')):.2f}× "
                f"({'met' if fast else 'missed'}), size {ours['size_ratio']:.3f} vs {v['size_ratio']:.3f} "
                f"({'met' if small else 'missed'}), fidelity {of[task]:.3f} / {of['sqnr_db']:.1f} dB vs "
                f"{f[task]:.3f} / {f['sqnr_db']:.1f} dB ({'met' if faithful else 'missed'})")
        out.append(f"- {res['label']}, ours int8 (the defaults): " + "; ".join(cells) + ".")
        without = vs.get("ours int8 no part timing", {})
        if "lat_ratio1" in without:
            for n in ("ours int8", "ours int8 --threads 1"):
                if "lat_ratio1" in vs.get(n, {}):
                    v = vs[n]
                    same = graph_digest(v.get("path")) == graph_digest(without.get("path")) is not None
                    out.append(f"- {res['label']}, {n} vs `part-timing=false`: latency {v['lat_ratio1']:.3f}× vs "
                               f"{without['lat_ratio1']:.3f}× (1 thread), {v.get('lat_ratio0', float('nan')):.3f}× vs "
                               f"{without.get('lat_ratio0', float('nan')):.3f}× (default threads); {task} "
                               f"{v['fidelity'][task]:.3f} vs {without['fidelity'][task]:.3f}; size {v['size_ratio']:.3f} "
                               f"vs {without['size_ratio']:.3f}"
                               + (" — the same graph (nothing kept float): the latency difference is timing noise"
                                  if same else "") + ".")
        if "ORT int4 RTN" in vs and "fidelity" in vs["ORT int4 RTN"]:
            r = vs["ORT int4 RTN"]["fidelity"]
            for n in ("ours int4 RTN", "ours int4 RTN qdq", "ours int4 GPTQ"):
                if "fidelity" in vs.get(n, {}):
                    f = vs[n]["fidelity"]
                    ok = f["cosine"] >= r["cosine"] - 1e-6
                    out.append(f"- {res['label']}, {n} vs ORT int4 RTN (block 32): emb. cosine {f['cosine']:.4f} vs "
                               f"{r['cosine']:.4f}, SQNR {f['sqnr_db']:.1f} vs {r['sqnr_db']:.1f} dB — "
                               f"**{'met' if ok else 'missed'}**.")
    return out


def graph_digest(path: str | None) -> str | None:
    """A hash of a saved model's graph without node names and metadata (what ORT runs), or None."""
    if not path or not Path(path).is_file():
        return None
    import hashlib

    import onnx

    model = onnx.load(path, load_external_data=False)
    for node in model.graph.node:
        node.name = ""
    return hashlib.sha256(model.graph.SerializeToString()).hexdigest()


def render(results: dict[str, Any], args, started: str, total_s: float) -> str:
    vers = common.versions(["onnx", "onnx-ir", "onnxscript", "onnxruntime", "numpy", "tokenizers", "pillow",
                            "rapidocr-onnxruntime"])
    cmd = ("OPENBLAS_NUM_THREADS=1 python tools/bench/quantize.py --models bench_out/models --out docs/BENCHMARKS.md "
           "--json bench_out/quantize.json" + (f" --repeat {args.repeat}" if args.repeat != 15 else "") +
           ("" if args.default_threads else " --no-default-threads") + (f" --only {args.only}" if args.only else ""))
    lines = [
        f"Measured {started} on {common.machine_line()} (shared with other jobs), in one run ({total_s / 60:.1f} min) of"
        + (" (this text rendered again from its JSON with `--from-json`)" if getattr(args, "from_json", None) else "")
        + ":",
        "", "```", "python tools/fetch_models.py --out bench_out/models", cmd, "```", "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()) + ". onnxpress at "
        + os.environ.get("QUANT_BENCH_COMMIT", common.git_commit()) + ".",
        "",
        "How to read. *ours int8* = `onnxpress.optimize(model, \"O2,quantize-qdq\", data=calibration feeds, "
        "verify=\"none\")` with every default: uint8 asymmetric activations, int8 symmetric per-channel weights, "
        "int32 bias, constant Add / Mul operands and Gather tables in uint8; `calibration=auto` (ranges from one "
        "histogram pass clipped three ways — percentile 99.999, percentile 99.99, least-error `mse` — and the one whose "
        "quantized model has the best output SQNR on the calibration feeds kept; the choice is named below each "
        "table); `fallback=auto` (the few tensors whose quantization noise costs the most output SQNR on the "
        "calibration feeds stay float, chosen by measured trials, up to a target of 20 dB, 16 tensors, 5 % of the "
        "quantized MACs and a timed slowdown of 10 % over the all-integer model (the timing of one trial is good to a few %); the pass's stats list them); "
        "`part-timing=true` (ORT's per-kernel profile of the float model and of the int8 clone, attributed to nodes; "
        "the kinds of parts whose int8 kernels are slower are tried float one by one and kept float where ORT then "
        "really runs them in float (where ORT fuses a part back into an integer kernel, it is tried once more "
        "\"widened\" by the nodes that keep its input tensors float), the whole model times ≥ 2 % faster, loses "
        "≤ 0.5 dB output SQNR and grows ≤ 5 % in weight bytes; timed at ORT's default thread count — the trials are "
        "listed below each table); "
        "`if-slower=warn` (the quantized model is timed against the float one on the runner, and a slower one is "
        "reported in the notes below); *ours int8 --threads 1* = the same, timed at one intra-op thread "
        "(`config={\"timing_threads\": 1}`, the CLI's `--threads 1`); *ours int8 no part timing* = the defaults with "
        "`part-timing=false`; *ours int8 no fallback* = the same with `fallback=none` (every op the rules "
        "allow quantized); *ours int8 pct / minmax* = the defaults with `calibration=percentile` (99.999) / "
        "`minmax`; *ours dynamic* = `O2,quantize-dynamic`; *ORT static* = "
        "`quant_pre_process` then `quantize_static(quant_format=QDQ, per_channel=True, activation_type=QUInt8, "
        "weight_type=QInt8, calibrate_method=MinMax|Percentile)` with a CalibrationDataReader over the same feeds; "
        "‡ = ORT's quantizer failed on the original model (see below) and the row is its retry on the model upgraded "
        "to opset 13 with `onnx.version_converter` (its time excludes the failed attempt); *ORT dynamic* = "
        "`quant_pre_process` then `quantize_dynamic(per_channel=True, weight_type=QInt8)`; MiniLM 4-bit: *ours int4 RTN* "
        "= `quantize-weights{bits=4 block-size=32 format=matmulnbits}` (MatMulNBits, float compute), *qdq* = the "
        "default `format=qdq` (opset-21 blocked DequantizeLinear; ORT fuses it into MatMulNBits with "
        "accuracy level 4, i.e. int8 activations), *GPTQ* = `method=gptq` with the calibration feeds; *ORT int4 RTN* "
        "= `MatMulNBitsQuantizer(bits=4, block_size=32, is_symmetric=True)` with `DefaultWeightOnlyQuantConfig`.",
        "",
        "size = bytes on disk / fp32 model's bytes. ORT ms: CPU EP, default graph optimizations, 1 intra-op thread "
        "(and ORT's default thread count), all variants of a model interleaved round-robin with fp32 (start rotated "
        f"each round), median of {args.repeat} rounds (more for fast models: at least ~1 s of fp32 runs, up to "
        f"{20 * args.repeat}; per model below); ratio = variant / fp32 (below 1 = faster). The default-thread "
        "column is the noisier one here: every variant's session keeps its own pool of spinning threads on the "
        "2 cores, and rows whose graphs are identical can differ by tens of % (the target lines say where); the "
        "target lines compare at 1 thread. Fidelity against the "
        "fp32 model on evaluation inputs disjoint from the calibration inputs, both run with ORT's default graph "
        "optimizations (the fused integer kernels are what is measured); output cosine = mean per-input cosine of "
        "the raw output, SQNR = 10·log10(Σref² / Σ(ref − q)²) over all outputs. quantize s: the quantizer call "
        "(ours: the whole `optimize`, load + O2 + calibration + quantization; ORT: pre-processing + quantization); "
        "peak RSS: VmHWM of the fresh subprocess that ran it (imports and the calibration feeds included; not "
        "`ru_maxrss`, which on Linux carries the parent's RSS at fork time into the exec'd child). "
        "Last column: op counts of the graph ORT's CPU EP runs (`optimized_model_filepath`): QConv = QLinearConv, "
        "QMatMul = QLinearMatMul, MMI2F = MatMulIntegerToFloat, DQMatMul = DynamicQuantizeMatMul, DQL = "
        "DynamicQuantizeLinear, Q / DQ = Quantize/DequantizeLinear left unfused (their float op runs in float).",
        "",
    ]
    for key, res in results.items():
        lines += [f"### {res['label']}", "", f"Data: {res['data_note']}. Latency: median of {res.get('rounds')} rounds.", "",
                  model_table(res, args.default_threads), ""]
        b = res["base"]["fidelity"]
        for record in res["variants"].get("ours int8", {}).get("passes", []):
            st = record.get("stats") or {}
            parts = []
            if st.get("calibration_choice", {}).get("chosen"):
                c = st["calibration_choice"]
                parts.append(f"calibration=auto chose {c['chosen']} (output SQNR on {c['samples']} calibration feeds: "
                             + ", ".join(f"{k} {v:.1f} dB" for k, v in c["sqnr_db"].items()) + ")")
            if st.get("fallback", {}).get("trials"):
                f = st["fallback"]
                parts.append(f"fallback kept {len(f['float_tensors'])} tensor(s) / {f['float_nodes']} node(s) float "
                             f"({', '.join(f['float_tensors']) or 'none'}), SQNR {f['sqnr_db_all_quantized']:.1f} → "
                             f"{f['sqnr_db']:.1f} dB, timed slowdown {f.get('slowdown', 1.0):.3f}"
                             + (f", left quantized as too slow: {', '.join(f['too_slow'])}" if f.get("too_slow") else ""))
            if st.get("part_timing", {}).get("trials") is not None:
                t = st["part_timing"]
                def trial(r: dict[str, Any]) -> str:
                    wider = f"widened by {r['widened']} node(s), " if r.get("widened") else ""
                    if "too_big" in r:
                        return f"({wider}too big: {r['too_big']:.2f}× bytes)"
                    if r.get("fused_back"):
                        return f"({wider}ORT fuses it back into int8: not timed)"
                    return f"({wider}{r['ratio']:.3f}×, {r['sqnr_db']:.1f} dB{', kept float' if r['kept_float'] else ''})"
                tried = ", ".join(f"{r['part']} ×{r['nodes']} {trial(r)}" for r in t["trials"])
                parts.append(f"part timing (threads: {t['threads']}; kernel µs float / int8 {t['profile_us']['float']:.0f} / "
                             f"{t['profile_us']['quantized']:.0f}) tried {tried or 'nothing (no kind of part slower in int8)'}")
            if st.get("speed", {}).get("ratio") is not None:
                parts.append(f"its own timing: quantized / float {st['speed']['ratio']:.2f}× "
                             f"(threads: {st['speed']['threads']})")
            if parts:
                lines += ["*ours int8*: " + "; ".join(parts) + ".", ""]
        if key == "ppocrv4_rec":
            lines += ["Decoded-text agreement (trimmed): the CTC-greedy strings of variant and fp32 compared after "
                      "stripping leading / trailing spaces; the exact-string column compares them as they are. The "
                      "fp32 model itself emits spaces in the blank margins of the rendered lines, and nearly all "
                      "exact-string disagreements of the int8 models are such edge spaces.", "",
                      f"Exact-match accuracy vs the rendered ground truth: fp32 {b['accuracy_ref']:.3f}; "
                      + ", ".join(f"{n} {v['fidelity']['accuracy']:.3f}" for n, v in res["variants"].items()
                                  if "fidelity" in v and "O2" not in n) + ".", ""]
        if key == "ppocr_cls":
            lines += [f"Orientation accuracy vs the truth: fp32 {b['accuracy_ref']:.3f}; "
                      + ", ".join(f"{n} {v['fidelity']['accuracy']:.3f}" for n, v in res["variants"].items()
                                  if "fidelity" in v and "O2" not in n) + ".", ""]
        if key == "ppocrv4_det":
            lines += ["Text-box F1: boxes found by rapidocr's own DB post-processing (`DBPostProcess`, thresh 0.3, "
                      "box_thresh 0.5, unclip 1.6) in each model's map, axis-aligned, matched one-to-one to the fp32 "
                      f"model's boxes at IoU ≥ 0.5 (greedy); F1 = 2·matched / (boxes fp32 + boxes variant); fp32 finds "
                      f"{b.get('boxes_ref', '?')} boxes on the evaluation pages. IoU of >0.3 pixels: |A∩B| / |A∪B| of "
                      "the probability-map pixels above rapidocr's binarisation threshold 0.3, over all pages (stricter "
                      "than the task: pixels on box borders flip without moving a box).", ""]
        notes = [res["src_note"]] if res.get("src_note") else []
        for n, v in res["variants"].items():
            if v.get("pre_process_error"):
                notes.append(f"{n}: `quant_pre_process` failed (`{v['pre_process_error']}`); retried with "
                             "`skip_symbolic_shape=True`")
            if v.get("error_original"):
                notes.append(f"{n} on the original model: `{v['error_original']}`")
            for d in v.get("diagnostics", []):
                notes.append(f"{n}: {d}")
        if notes:
            lines += ["Notes: " + "; ".join(notes), ""]
    lines += ["### Targets", "", *targets(results), ""]
    return "\n".join(lines)


# ============================================================================================


def write_section(out: str | None, body: str) -> None:
    if out:
        common.write_md_section(out, "quantize", "Quantization: quantize-qdq / quantize-dynamic / "
                                "quantize-weights vs ONNX Runtime's quantizers", body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--models", default="bench_out/models")
    ap.add_argument("--work", default="bench_out/quantize")
    ap.add_argument("--out", default=None, help="markdown file whose `quantize` section is (re)written")
    ap.add_argument("--json", default=None)
    ap.add_argument("--repeat", type=int, default=15, help="latency rounds (median)")
    ap.add_argument("--calib", type=int, default=64, help="calibration feeds for rec / cls / MiniLM")
    ap.add_argument("--only", default=None, help="comma-separated model keys")
    ap.add_argument("--skip", default="", help="comma-separated substrings of variant names to skip")
    ap.add_argument("--no-default-threads", dest="default_threads", action="store_false")
    ap.add_argument("--from-json", default=None, metavar="PATH",
                    help="render the section from a --json file of an earlier run (no measuring)")
    args = ap.parse_args(argv)
    if args.worker is not None:
        worker_main(json.loads(args.worker))
        return 0
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        body = render(saved["results"], args, saved["started"], saved.get("seconds", 0.0))
        print(body)
        write_section(args.out, body)
        return 0
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started, t0 = common.today(), time.perf_counter()
    specs = build_specs(Path(args.models), set(args.only.split(",")) if args.only else None, args.calib)
    skip = {s for s in args.skip.split(",") if s}
    results: dict[str, Any] = {}
    for spec in specs:
        if not spec.src.is_file():
            log(f"{spec.src} missing (run tools/fetch_models.py) - skipped")
            continue
        try:
            results[spec.key] = bench_model(spec, work, args.repeat, args.default_threads, skip)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            continue
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"started": started, "results": results}, indent=1, default=str))
    total = time.perf_counter() - t0
    if args.json:
        Path(args.json).write_text(json.dumps({"started": started, "seconds": total, "results": results}, indent=1,
                                              default=str))
    body = render(results, args, started, total)
    print(body)
    write_section(args.out, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
