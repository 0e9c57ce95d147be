"""Spot-check quantization pipelines on one benchmark model, with the quantization benchmark's data.

    OPENBLAS_NUM_THREADS=1 HF_HUB_OFFLINE=1 python tools/bench/quantize_spot.py ppocrv4_rec \\
        "O2,quantize-qdq" "O2,quantize-qdq{fallback=none}" --latency 15

Prints, per pipeline, the task fidelity and output SQNR against the original model on the
benchmark's evaluation inputs (ORT CPU, default graph optimizations, as in tools/bench/quantize.py),
the time of the `optimize` call and, with `--latency N`, the 1-thread latency ratio to the fp32
original (every variant interleaved with it, median of N rounds). Model keys: ppocrv4_det,
ppocrv4_rec, ppocr_cls, minilm_l6_v2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import onnxpress  # noqa: E402
from tools.bench import pruning  # noqa: E402
from tools.bench import quantize as bench  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("pipelines", nargs="+", help="pipeline text")
    ap.add_argument("--models", default="bench_out/models")
    ap.add_argument("--work", default="bench_out/quantize_spot")
    ap.add_argument("--calib", type=int, default=64, help="calibration inputs (as the benchmark)")
    ap.add_argument("--latency", type=int, default=0, metavar="N", help="latency rounds (0: no timing)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    specs = bench.build_specs(Path(args.models), {args.model}, args.calib)
    if not specs:
        sys.exit(f"unknown model '{args.model}'")
    spec = specs[0]
    reference = bench.run_deployed(spec.src, spec.evals)
    paths = {"fp32": spec.src}
    for i, pipeline in enumerate(args.pipelines):
        t = time.perf_counter()
        result = onnxpress.optimize(str(spec.src), pipeline, data=spec.calib, verify="none")
        seconds = time.perf_counter() - t
        out = work / f"{spec.key}_{i}.onnx"
        result.save(out)
        paths[pipeline] = out
        got = bench.run_deployed(out, spec.evals)
        fidelity = spec.fidelity(reference, got, spec.evals)
        print(f"{spec.key} {pipeline}: " + " ".join(f"{k}={v:.4f}" for k, v in fidelity.items())
              + f" sqnr={bench.sqnr_db(reference, got):.1f}dB size={out.stat().st_size / spec.src.stat().st_size:.3f}"
              f"  {seconds:.1f} s", flush=True)
        for record in result.report.passes:
            for key in ("calibration_choice", "fallback", "part_timing"):
                found = (record.get("stats") or {}).get(key)
                if found:
                    print(f"  {key}: {found}", flush=True)
    if args.latency:
        times = pruning.measure_latency(paths, spec.latency_feed, args.latency)
        base = times["fp32"]["median_ms"]
        for name, t in times.items():
            print(f"latency {name}: {t['median_ms']:.2f} ms ({t['median_ms'] / base:.3f}x fp32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
