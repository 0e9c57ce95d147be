"""Spot-check one pruning pipeline on one benchmark model, with the pruning benchmark's own data.

    HF_HUB_OFFLINE=1 OPENBLAS_NUM_THREADS=1 python tools/bench/pruning_spot.py ppocrv4_rec \\
        "prune-channels{ratio=0.3 reconstruct=true max-samples=64}"

Prints the fidelity of the pipeline's output against the model's `O2` baseline on the benchmark's
evaluation inputs (ORT graph optimizations off, as in tools/bench/pruning.py) and the time of the
`optimize` call. Model keys: ppocrv4_det, ppocrv4_rec, minilm_l6_v2, resnet18, mobilenet_v2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import onnxpress  # noqa: E402
from tools.bench import pruning as bench  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("pipelines", nargs="+", help="pipeline text run after O2")
    ap.add_argument("--models", default="bench_out/models")
    ap.add_argument("--work", default="bench_out/pruning_spot")
    args = ap.parse_args(argv)
    work = Path(args.work)
    (work / "models").mkdir(parents=True, exist_ok=True)
    specs = [s for s in bench.build_specs(Path(args.models), work, {args.model}) if s.key == args.model]
    if not specs:
        sys.exit(f"unknown model '{args.model}'")
    spec = specs[0]

    def outputs(path: Path) -> list:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return [session.run(None, feed)[0] for feed in spec.evals]

    base = work / f"{spec.key}_O2.onnx"
    onnxpress.optimize(str(spec.src), "O2", verify="none", input_shapes=spec.shapes).save(base)
    reference = outputs(base)
    for pipeline in args.pipelines:
        t = time.perf_counter()
        result = onnxpress.optimize(str(base), pipeline, data=spec.calib, verify="none", input_shapes=spec.shapes)
        seconds = time.perf_counter() - t
        out = work / f"{spec.key}_variant.onnx"
        result.save(out)
        fidelity = spec.fidelity(reference, outputs(out), spec.evals)
        print(f"{spec.key} {pipeline}: " + " ".join(f"{k}={v:.4f}" for k, v in fidelity.items()) + f"  {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
