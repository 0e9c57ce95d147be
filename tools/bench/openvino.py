#!/usr/bin/env python3
"""OpenVINO benchmark: the `openvino` target's output against the `cpu` target's, on ONNX Runtime's
OpenVINO execution provider for real, from its own virtual environment.

    python tools/fetch_models.py --out bench_out/models          # real models, once
    OPENBLAS_NUM_THREADS=1 python tools/bench/openvino.py --out docs/BENCHMARKS.md --json bench_out/openvino.json

`onnxruntime-openvino` replaces the plain `onnxruntime` package, so it gets a virtual environment of
its own (`bench_out/ov-venv`: `python -m venv`, then `pip install onnxruntime-openvino==VERSION
numpy`; reused when it already has the provider). Nothing of onnxpress is installed there.

In the main environment, for every model (examples/tiny_resnet.onnx and the real models of
bench_out/models) onnxpress produces, with `optimize(..., target=T, verify="none")`:

  fp32   the target's default pipeline around -O2 (`cpu`: -O2; `openvino`: convert-opset prelude,
         -O2, remove-float-qdq,check-target-ops tail)
  int8   the same with the target's `--quantize int8` fragment, calibrated on real inputs

for T in cpu and openvino. Inside the venv (tools/bench/openvino_worker.py, onnxruntime + numpy only)
every model runs on OpenVINOExecutionProvider (device CPU, 1 thread) and on CPUExecutionProvider (1
intra-op thread): the load (compile) time, the outputs on evaluation inputs (fidelity against the
original fp32 model on the CPU EP, computed here), and latency with every session of a model
interleaved round-robin (median). The placement check is onnxpress's own
(`check_placement(..., python=<venv python>)`): which provider ran which kernel.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
from collections import Counter  # noqa: E402
import glob  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from tools.bench import common  # noqa: E402
from tools.bench.common import md_table  # noqa: E402

WORKER = Path(__file__).resolve().with_name("openvino_worker.py")
OV_OPTIONS = {"device_type": "CPU", "num_of_threads": "1"}
TARGETS = ("cpu", "openvino")
PRECISIONS = ("fp32", "int8", "int4")  # int4: MiniLM only (weight-only, MatMul)
EPS = ("cpu", "openvino")
EP_NAME = {"cpu": "CPU EP", "openvino": "OpenVINO EP"}
STATIC = "fp32 openvino --input-shape"
TITLE = "OpenVINO EP: the `openvino` target vs the `cpu` target"
MIN_SECONDS = 3.0  # latency rounds: at least this long of the baseline's runs (up to 20x --rounds)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ============================================================================================
# the virtual environment


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def venv_facts(python: Path) -> dict[str, Any] | None:
    """onnxruntime version and providers in the venv, or None when it cannot import onnxruntime."""
    code = ("import json, onnxruntime as o; print(json.dumps({'onnxruntime': o.__version__, "
            "'providers': o.get_available_providers(), 'capi': o.capi.__path__[0]}))")
    try:
        proc = subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    libs = sorted(glob.glob(os.path.join(facts.pop("capi"), "libopenvino.so.*.*.*")))
    facts["openvino"] = libs[-1].rsplit("libopenvino.so.", 1)[1] if libs else "unknown"
    return facts


def ensure_venv(venv: Path, version: str) -> dict[str, Any]:
    """Create (or reuse) the venv with onnxruntime-openvino==version and numpy."""
    python = venv_python(venv)
    facts = venv_facts(python) if python.exists() else None
    if facts and facts["onnxruntime"] == version and "OpenVINOExecutionProvider" in facts["providers"]:
        return {**facts, "created": False, "setup_s": 0.0}
    t = time.perf_counter()
    if not python.exists():
        log(f"creating {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    log(f"pip install onnxruntime-openvino=={version} numpy into {venv}")
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", f"onnxruntime-openvino=={version}", "numpy"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise SystemExit(f"error: pip could not install onnxruntime-openvino=={version} into {venv}: {tail}")
    facts = venv_facts(python)
    if not facts or "OpenVINOExecutionProvider" not in facts["providers"]:
        raise SystemExit(f"error: {venv}: onnxruntime there has no OpenVINOExecutionProvider ({facts})")
    return {**facts, "created": True, "setup_s": time.perf_counter() - t}


# ============================================================================================
# models and data (the quantization benchmark's real inputs, plus the shipped example)


class ExampleSpec:
    """examples/tiny_resnet.onnx: calibration on examples/data.npz, evaluation on seeded random inputs."""

    key, label, task, task_label = "tiny_resnet", "tiny_resnet (example)", "top1", "top-1 agreement"

    def __init__(self) -> None:
        from tools.bench import pruning

        self.src = common.ROOT / "examples" / "tiny_resnet.onnx"
        data = np.load(common.ROOT / "examples" / "data.npz")["input"]
        self.calib = [{"input": x} for x in data]
        rng = np.random.default_rng(7)
        self.evals = [{"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(32)]
        self.latency_feed = self.evals[0]
        self.fidelity = pruning.fidelity_logits
        self.data_note = ("random weights; calibration: the 8 inputs of examples/data.npz; evaluation: 32 seeded "
                          "standard-normal inputs 1×3×32×32")


def build_specs(models_dir: Path, only: set[str] | None, n_calib: int) -> list[Any]:
    from tools.bench import quantize

    specs: list[Any] = [ExampleSpec()] if only is None or "tiny_resnet" in only else []
    return specs + quantize.build_specs(models_dir, only, n_calib)


def graph_digest(path: Path) -> str:
    """sha256 of the model with its metadata (the recipe, which names the target) cleared."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()[:16]


def produce(spec: Any, target: str, precision: str, dst: Path,
            input_shapes: dict[str, list[int]] | None = None) -> dict[str, Any]:
    """The target's output with onnxpress (in this process)."""
    import onnxpress
    from onnxpress.api import resolve_pipeline
    from onnxpress.backends.base import get_backend

    fragments = [get_backend(target).quantize(precision)] if precision != "fp32" else []
    text = resolve_pipeline(target=target, fragments=fragments)
    t = time.perf_counter()
    result = onnxpress.optimize(str(spec.src), text, target=target, data=spec.calib if fragments else None,
                                verify="none", placement="off", input_shapes=input_shapes)
    seconds = time.perf_counter() - t
    result.save(dst)
    legal = {p["name"]: p.get("stats", {}) for p in result.report.passes
             if p["name"] in ("convert-opset", "fix-shapes", "remove-float-qdq", "check-target-ops")}
    return {"path": str(dst), "pipeline": text, "optimize_s": seconds, "legalization": legal,
            "diagnostics": list(result.report.diagnostics), "digest": graph_digest(dst),
            "nodes": sum(common.op_counts(dst).values()), "opset": _opset(dst)}


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def static_shapes(spec: Any) -> dict[str, list[int]] | None:
    """The latency feed's shapes when every evaluation feed has them too (a fixed-shape model can
    then be evaluated like the others), else None."""
    shapes = {k: list(v.shape) for k, v in spec.latency_feed.items()}
    same = all({k: list(v.shape) for k, v in f.items()} == shapes for f in spec.evals)
    return shapes if same else None


def placement(path: str, feed: dict[str, np.ndarray], python: Path) -> dict[str, Any]:
    """onnxpress's placement check on the OpenVINO EP, run by the venv's interpreter."""
    from onnxpress.backends.base import get_backend
    from onnxpress.ir.io import load

    model = load(path)
    res = get_backend("openvino").check_placement(model, [feed], python=str(python))
    if not res.get("checked"):
        return {"checked": False, "reason": res.get("reason")}
    ops = {k["name"]: k["op_type"] for k in res["nodes"]}
    return {"checked": True, "by_provider": res["by_provider"], "partitions": len(res["partitions"]),
            "absorbed": len(res["absorbed"]), "model_nodes": len(list(model.graph)),
            "fallback": res["fallback"], "fallback_ops": dict(sorted(Counter(ops[n] for n in res["fallback"]).items())),
            "granularity": res["granularity"]}


# ============================================================================================
# one model


def fidelity(spec: Any, ref: list[np.ndarray], other: list[np.ndarray]) -> dict[str, float]:
    from tools.bench import quantize

    out = dict(spec.fidelity(ref, other, spec.evals))
    out["max_abs"] = common.max_abs_error([[r] for r in ref], [[o] for o in other])
    out["sqnr_db"] = quantize.sqnr_db(ref, other)
    out.setdefault("cosine", quantize.output_cosine(ref, other))
    return out


def load_outputs(path: str) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[k] for k in sorted(data.files)]


def bench_model(spec: Any, work: Path, python: Path, rounds: int, warmup: int) -> dict[str, Any]:
    from tools.bench import quantize

    mdir = work / spec.key
    mdir.mkdir(parents=True, exist_ok=True)
    src_note = None if isinstance(spec, ExampleSpec) else quantize.fix_negative_dims(spec, mdir)
    res: dict[str, Any] = {"label": spec.label, "data_note": spec.data_note, "task": spec.task,
                           "task_label": spec.task_label, "src_note": src_note, "n_eval": len(spec.evals),
                           "n_calib": len(spec.calib), "src_opset": _opset(spec.src), "variants": {}}
    variants: dict[str, dict[str, Any]] = {}
    for precision in PRECISIONS:
        if precision == "int4" and not getattr(spec, "int4", False):
            continue
        for target in TARGETS:
            name = f"{precision} {target}"
            log(f"  {spec.key}: onnxpress --target {target}" + (f" --quantize {precision}" if precision != "fp32" else ""))
            try:
                variants[name] = produce(spec, target, precision, mdir / f"{precision}_{target}.onnx")
            except Exception as e:  # noqa: BLE001 - record, go on with the others
                traceback.print_exc()
                variants[name] = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
    shapes = static_shapes(spec)
    if shapes:
        name = STATIC
        log(f"  {spec.key}: onnxpress --target openvino --input-shape {shapes}")
        try:
            variants[name] = produce(spec, "openvino", "fp32", mdir / "fp32_openvino_static.onnx", shapes)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            variants[name] = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
    res["variants"] = variants
    res["static_shapes"] = shapes
    # placement on the OpenVINO EP (onnxpress's check, run by the venv's interpreter)
    for name, v in variants.items():
        if "path" in v:
            log(f"  {spec.key}: placement of {name}")
            v["placement"] = placement(v["path"], spec.latency_feed, python)
    # latency and outputs inside the venv
    sessions = [{"key": "original fp32 @ CPU EP", "model": str(spec.src), "ep": "cpu"},
                {"key": "original fp32 @ OpenVINO EP", "model": str(spec.src), "ep": "openvino"}]
    for name, v in variants.items():
        if "path" in v:
            sessions += [{"key": f"{name} @ {EP_NAME[ep]}", "model": v["path"], "ep": ep} for ep in EPS]
    quantize.save_feeds([spec.latency_feed], mdir / "latency.npz")
    quantize.save_feeds(spec.evals, mdir / "evals.npz")
    outdir = mdir / "outputs"
    outdir.mkdir(exist_ok=True)
    request = {"sessions": sessions, "latency_feed": str(mdir / "latency.npz"), "eval_feeds": str(mdir / "evals.npz"),
               "rounds": rounds, "min_seconds": MIN_SECONDS, "warmup": warmup, "threads": 1, "ov_options": OV_OPTIONS, "out": str(outdir)}
    (mdir / "request.json").write_text(json.dumps(request, indent=1))
    log(f"  {spec.key}: {len(sessions)} sessions x {rounds} rounds in the venv")
    t = time.perf_counter()
    proc = subprocess.run([str(python), "-I", str(WORKER), str(mdir / "request.json")], capture_output=True, text=True)
    res["worker_s"] = time.perf_counter() - t
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip() or "no output").splitlines()[-1]
        raise RuntimeError(f"venv worker failed (exit {proc.returncode}): {tail}")
    measured = json.loads(lines[-1])["sessions"]
    ref = load_outputs(measured["original fp32 @ CPU EP"]["outputs"])
    base_ms = measured["original fp32 @ CPU EP"].get("median_ms")
    for key, m in measured.items():
        if "outputs" in m:
            m["fidelity"] = fidelity(spec, ref, load_outputs(m["outputs"]))
        if base_ms and "median_ms" in m:
            m["ratio"] = m["median_ms"] / base_ms
    res["sessions"] = measured
    res["rounds"] = json.loads(lines[-1])["rounds"]
    return res


# ============================================================================================
# the report


def _f(x: Any, fmt: str = "{:.3f}") -> str:
    return "–" if x is None else fmt.format(x)


def session_table(res: dict[str, Any]) -> str:
    task = res["task"]
    header = ["model @ EP", "load s", "ms (median)", "vs original @ CPU EP", res["task_label"], "output cosine",
              "SQNR dB", "max abs err"]
    rows = []
    for key, m in res["sessions"].items():
        if "error" in m:
            rows.append([key, f"failed: `{m['error'][:160]}`", "", "", "", "", "", ""])
            continue
        fid = m.get("fidelity", {})
        sq = fid.get("sqnr_db")
        rows.append([key, _f(m.get("load_s"), "{:.2f}"), _f(m.get("median_ms"), "{:.2f}"), _f(m.get("ratio"), "{:.2f}×"),
                     _f(fid.get(task), "{:.4f}"), _f(fid.get("cosine"), "{:.6f}"),
                     "∞" if sq == float("inf") else _f(sq, "{:.1f}"), _f(fid.get("max_abs"), "{:.2e}")])
    return md_table(header, rows)


def placement_table(res: dict[str, Any]) -> str:
    header = ["model", "nodes", "kernels on OpenVINO EP", "partitions", "kernels on CPU EP (fell back)",
              "fallback op types", "same graph as cpu target"]
    rows = []
    for name, v in res["variants"].items():
        if "error" in v:
            rows.append([name, f"onnxpress failed: `{v['error']}`", "", "", "", "", ""])
            continue
        p = v.get("placement", {})
        precision = name.split()[0]
        same = "yes" if v["digest"] == res["variants"].get(f"{precision} cpu", {}).get("digest") else "no"
        if not p.get("checked"):
            rows.append([name, v["nodes"], f"not checked: {p.get('reason')}", "", "", "", same])
            continue
        bp = p["by_provider"]
        fb = ", ".join(f"{op} ×{n}" for op, n in p["fallback_ops"].items()) or "none"
        rows.append([name, v["nodes"], bp.get("OpenVINOExecutionProvider", 0), p["partitions"],
                     bp.get("CPUExecutionProvider", 0), fb, same if name.endswith("openvino") else "–"])
    return md_table(header, rows)


def summary_table(results: dict[str, Any]) -> str:
    """Per model: OpenVINO EP ms / CPU EP ms on the same `openvino`-target model, and fallbacks."""
    header = ["model", "fp32", "fp32 --input-shape", "int8", "int4", "kernels fell back (all variants)",
              "openvino output = cpu output"]
    rows = []
    for res in results.values():
        s = res["sessions"]

        def ratio(variant: str) -> str:
            ov, cpu = s.get(f"{variant} @ OpenVINO EP", {}), s.get(f"{variant} @ CPU EP", {})
            if "median_ms" not in ov or "median_ms" not in cpu:
                return "–"
            return f"{ov['median_ms'] / cpu['median_ms']:.2f}× ({ov['median_ms']:.2f} / {cpu['median_ms']:.2f} ms)"

        vs = res["variants"]
        fell = sum(len(v.get("placement", {}).get("fallback", [])) for v in vs.values())
        same = [p for p in ("fp32", "int8", "int4") if f"{p} openvino" in vs and "digest" in vs[f"{p} openvino"]
                and vs[f"{p} openvino"]["digest"] == vs.get(f"{p} cpu", {}).get("digest")]
        rows.append([res["label"], ratio("fp32 openvino"), ratio(STATIC), ratio("int8 openvino"), ratio("int4 openvino"),
                     fell, ", ".join(same) or "none"])
    return md_table(header, rows)


def findings(results: dict[str, Any]) -> list[str]:
    """Sentences that follow from the numbers (computed, so that a rerun cannot leave them stale)."""
    out = []
    variants = [(res["label"], n, v) for res in results.values() for n, v in res["variants"].items() if "digest" in v]
    fell = [(label, n) for label, n, v in variants if v.get("placement", {}).get("fallback")]
    unchecked = [(label, n) for label, n, v in variants if not v.get("placement", {}).get("checked")]
    if not fell and not unchecked:
        out.append(f"- No kernel fell back to the CPU EP: every one of the {len(variants)} models ran as one OpenVINO "
                   "partition.")
    else:
        out.append("- Fell back or not checked: " + ", ".join(f"{a} {b}" for a, b in fell + unchecked) + ".")
    pairs = [(res, p) for res in results.values() for p in PRECISIONS if f"{p} openvino" in res["variants"]]
    same = [(res, p) for res, p in pairs if res["variants"][f"{p} openvino"].get("digest")
            == res["variants"].get(f"{p} cpu", {}).get("digest")]
    opsets = sorted({res["src_opset"] for res in results.values()})
    if len(same) == len(pairs):
        out.append(f"- The `openvino` target's output is the same graph as the `cpu` target's for every model and "
                   f"precision: its legalization had nothing to do here (input opsets {', '.join(map(str, opsets))} lie "
                   "inside its 7–22, no Q/DQ around float-only ops, no missing ops), so the two targets' rows differ "
                   "only by measurement noise, which they show.")
    else:
        out.append("- Differ from the `cpu` target's output: " + ", ".join(
            f"{res['label']} {p}" for res, p in pairs if (res, p) not in same) + ".")
    return out


def legalization_lines(res: dict[str, Any]) -> list[str]:
    out = []
    for name, v in res["variants"].items():
        if "legalization" not in v or "openvino" not in name:
            continue
        stats = "; ".join(f"`{k}` {', '.join(f'{a}={b}' for a, b in s.items()) or 'ran'}" for k, s in v["legalization"].items())
        out.append(f"- {name}: opset {res['src_opset']} → {v['opset']}; {stats}; onnxpress {v['optimize_s']:.1f} s"
                   + (f"; diagnostics: {'; '.join(v['diagnostics'])}" if v.get("diagnostics") else ""))
    return out


def render(results: dict[str, Any], env: dict[str, Any], args: Any, started: str, total_s: float) -> str:
    vers = common.versions(["onnx", "onnx-ir", "onnxruntime", "numpy"])
    load = (f"; 1-min load average {env['load_start']:.1f} at the start, {env['load_end']:.1f} at the end"
            if "load_start" in env and "load_end" in env else "")
    cmd = ("OPENBLAS_NUM_THREADS=1 python tools/bench/openvino.py --out docs/BENCHMARKS.md --json bench_out/openvino.json"
           + (f" --rounds {args.rounds}" if args.rounds != 20 else "") + (f" --only {args.only}" if args.only else "")
           + (f" --calib {args.calib}" if args.calib != 32 else ""))
    lines = [
        f"Measured {started} on {common.machine_line()} (shared with other jobs{load}), in one run "
        f"({total_s / 60:.1f} min) of:",
        "", "```", "python tools/fetch_models.py --out bench_out/models", cmd, "```", "",
        "Main environment: " + ", ".join(f"{k} {v}" for k, v in vers.items())
        + f"; onnxpress at {env.get('commit') or common.git_commit()}. "
        f"Virtual environment `{args.venv}` ({'created' if env['created'] else 'reused'} by the script: "
        f"`python -m venv`, `pip install onnxruntime-openvino=={args.ov_version} numpy`): onnxruntime-openvino "
        f"{env['onnxruntime']} (OpenVINO {env['openvino']} bundled), providers {', '.join(env['providers'])}.",
        "",
        "What was measured. For each model, onnxpress (main environment) writes the `cpu` and the `openvino` "
        "target's output: *fp32* = the target's default pipeline around `-O2`, *int8* = the same with the "
        "target's `--quantize int8` fragment (`quantize-qdq{activations=uint8 weights=int8 per-channel=true}` on both) "
        "calibrated on real inputs; *int4* (MiniLM only) = `--quantize int4` (`quantize-weights{bits=4 block-size=32}`: "
        "opset-21 blocked DequantizeLinear weights, float compute, on both targets); *fp32 openvino --input-shape* = the `openvino` fp32 output with "
        "`optimize(..., input_shapes=...)` fixing the inputs to the evaluation inputs' one shape (only where they "
        "all share one: not MiniLM, whose sentences differ in length). Inside the venv every model is loaded on the OpenVINO EP "
        f"(provider options `{json.dumps(OV_OPTIONS)}`, CPU-EP fallback) and on the CPU EP (1 intra-op thread, "
        "default graph optimizations): *load s* = session creation (OpenVINO compiles here); outputs on the "
        "evaluation inputs, compared with the original fp32 model on the CPU EP (same onnxruntime); latency on one "
        f"input with all sessions of a model run round-robin (start rotated each round), {args.warmup} warm-up runs "
        f"each, median of at least {args.rounds} rounds (fast models more, up to {20 * args.rounds}: enough for "
        f"~{MIN_SECONDS:.0f} s of the baseline's runs; per model below); ratio = ms / original fp32 @ CPU EP's ms. Output cosine = mean per-input "
        "cosine of the first output, SQNR = 10·log10(Σref² / Σ(ref − x)²).",
        "",
        "Placement: onnxpress's own check (`onnxpress.backends.placement.check_placement(model, openvino backend, "
        "feeds, python=<venv python>)`, one profiled run). Granularity: ORT's profiler reports one kernel per "
        "OpenVINO partition (`OpenVINOExecutionProvider_OpenVINO-EP-subgraph_N_0`), not the nodes inside it; nodes "
        "the EP did not take run as CPU-EP kernels under their own names, so fallbacks are exact per node and the "
        "rest of the graph is known to be inside the partitions (or fused by ORT) only as a whole. *same graph as "
        "cpu target* compares the two targets' outputs with the recipe metadata cleared.",
        "",
    ]
    lines += ["### Summary", "", "OpenVINO EP latency / CPU EP latency of the same `openvino`-target model (below 1 = "
              "the OpenVINO EP is faster); fallbacks counted over every variant's placement check; last column: the "
              "precisions whose `openvino` output is the same graph as the `cpu` output (recipe metadata aside).", "",
              summary_table(results), "", *findings(results), ""]
    for key, res in results.items():
        fixed = res.get("static_shapes")
        shape_note = (" Fixed shapes: " + ", ".join(f"`{k}:{'x'.join(map(str, v))}`" for k, v in fixed.items()) + "."
                      if fixed else "")
        lines += [f"### {res['label']}", "", f"Data: {res['data_note']}.{shape_note} Latency: median of "
                  f"{res['rounds']} rounds.", "", session_table(res), "",
                  "Placement on the OpenVINO EP:", "", placement_table(res), "",
                  "The `openvino` target's legalization:", "", *legalization_lines(res), ""]
        notes = [res["src_note"]] if res.get("src_note") else []
        for n, v in res["variants"].items():
            for d in v.get("diagnostics", []):
                notes.append(f"{n}: {d}")
        if notes:
            lines += ["Notes: " + "; ".join(notes), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="bench_out/models")
    ap.add_argument("--work", default="bench_out/openvino")
    ap.add_argument("--venv", default="bench_out/ov-venv")
    ap.add_argument("--ov-version", default="1.24.1", help="onnxruntime-openvino version for the venv")
    ap.add_argument("--out", default=None, help="markdown file whose `openvino` section is (re)written")
    ap.add_argument("--json", default=None)
    ap.add_argument("--rounds", type=int, default=20, help="latency rounds (median)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--calib", type=int, default=32, help="calibration feeds for rec / cls / MiniLM")
    ap.add_argument("--only", default=None, help="comma-separated model keys (tiny_resnet, ppocrv4_det, ...)")
    ap.add_argument("--from-json", default=None, help="only re-render the results of an earlier --json run")
    args = ap.parse_args(argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        body = render(saved["results"], saved["env"], args, saved["started"], saved["seconds"])
        print(body)
        if args.out:
            common.write_md_section(args.out, "openvino", TITLE, body)
        return 0
    logging.basicConfig(level=logging.WARNING)
    started, t0 = common.today(), time.perf_counter()
    env = ensure_venv(Path(args.venv), args.ov_version)
    env["commit"], env["load_start"] = common.git_commit(), os.getloadavg()[0]
    log(f"venv: onnxruntime {env['onnxruntime']}, OpenVINO {env['openvino']}, {env['providers']}")
    python = venv_python(Path(args.venv)).absolute()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    specs = build_specs(Path(args.models), set(args.only.split(",")) if args.only else None, args.calib)
    results: dict[str, Any] = {}
    for spec in specs:
        if not Path(spec.src).is_file():
            log(f"{spec.src} missing (run tools/fetch_models.py) - skipped")
            continue
        log(f"{spec.key}")
        try:
            results[spec.key] = bench_model(spec, work, python, args.rounds, args.warmup)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            continue
        if args.json:
            Path(args.json).write_text(json.dumps({"started": started, "env": env, "results": results}, indent=1,
                                                  default=str))
    total = time.perf_counter() - t0
    env["load_end"] = os.getloadavg()[0]
    if args.json:
        Path(args.json).write_text(json.dumps({"started": started, "seconds": total, "env": env, "results": results},
                                              indent=1, default=str))
    body = render(results, env, args, started, total)
    print(body)
    if args.out:
        common.write_md_section(args.out, "openvino", TITLE, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
