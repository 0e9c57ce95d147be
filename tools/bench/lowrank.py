#!/usr/bin/env python3
"""Low-rank benchmark: lowrank-svd / -tucker / -cp / -tt on real models and resnet18-like convs.

    OPENBLAS_NUM_THREADS=1 HF_HUB_OFFLINE=1 python tools/bench/lowrank.py --models bench_out/models \\
        --out docs/BENCHMARKS.md --json bench_out/lowrank.json [--only minilm,ocr,convs,resnet18]

Every variant is `O2,<lowrank pass>` against the lossless `O2` baseline. Measured: params and MACs
(`onnxpress.ir.cost.model_cost`, MiniLM at 128 tokens), ORT CPU latency (1 intra-op thread,
variant and baseline interleaved, median), fidelity, and the wall time of the optimize call.

  minilm    all-MiniLM-L6-v2, FFN MatMuls only (`include=re:intermediate/dense|layer\\.\\d+/output/dense`)
            at 25 % / 50 % of the FFN parameters removed, and all linear layers at 25 %: plain SVD,
            data-aware (whitened), closed-loop + sensitivity allocation + refit, TT max-rank 16.
            Fidelity: mean cosine of mean-pooled sentence embeddings over text_data.EVAL_SENTENCES;
            calibration on text_data.calibration_texts (a different kind of text).
  ocr       PP-OCRv4 rec, its 13 MatMuls (SVTR neck, after O2 folds their weights): decoded-text
            agreement (CTC greedy, the model's own alphabet) on 128 rendered lines; calibration on
            64 other lines.
  convs     single 3×3 convs 256→256 at 14×14 and 56×56: dense vs Tucker-2 (96, 96) (≈4.5× fewer
            MACs) and (64, 64), CP R=128 — the "4× fewer MACs, ≥ 1.5× faster" target.
  resnet18  the torchvision architecture (tools/bench/pruning_models.py, seeded random weights):
            lowrank-tucker / lowrank-cp on its 3×3 convs; logits cosine is a sanity number only.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from tools.bench import common  # noqa: E402
from tools.bench.common import md_table  # noqa: E402
from tools.bench.pruning import fidelity_logits, fidelity_minilm, log, make_fidelity_rec, measure_latency, run_all  # noqa: E402

FFN = r"re:intermediate/dense|layer\.\d+/output/dense"
TOKENS = 128


def optimize(src, pipeline: str, data, dst: Path, shapes=None) -> dict[str, Any]:
    import onnxpress

    t = time.perf_counter()
    result = onnxpress.optimize(str(src), pipeline, data=data, verify="none", input_shapes=shapes)
    wall = time.perf_counter() - t
    result.save(dst)
    stats = next((p["stats"] for p in result.report.passes if p["name"].startswith("lowrank")), {})
    return {"path": str(dst), "pipeline": pipeline, "seconds": round(wall, 1),
            "stats": {k: v for k, v in stats.items() if k not in ("layers", "refits")}}


def cost(path: Path, shapes) -> dict[str, int]:
    import onnx_ir as ir

    from onnxpress.ir.cost import model_cost

    model = ir.load(str(path))
    if shapes:
        for v in model.graph.inputs:
            if v.name in shapes:
                v.shape = ir.Shape(shapes[v.name])
        from onnxpress.ir.shapes import infer_shapes

        infer_shapes(model)
    c = model_cost(model)
    return {"params": int(c.params), "macs": int(c.macs)}


def bench_variants(key, src, variants, calib, evals, lat_feed, fidelity, shapes, work, repeat, opt_shapes=None):
    work.mkdir(parents=True, exist_ok=True)
    base = work / f"{key}_base.onnx"
    optimize(src, "O2", None, base, opt_shapes)
    ref = run_all(base, evals)
    base_cost = cost(base, shapes)
    rows = []
    for label, pipeline in variants:
        dst = work / f"{key}_{len(rows)}.onnx"
        log(f"[{key}] {label}: {pipeline}")
        try:
            info = optimize(src, pipeline, calib, dst, opt_shapes)
        except Exception as e:  # noqa: BLE001 - a failed variant is a row, not the end of the run
            rows.append({"label": label, "pipeline": pipeline, "error": repr(e)})
            continue
        info["label"] = label
        info["cost"] = cost(dst, shapes)
        info["fidelity"] = fidelity(ref, run_all(dst, evals), evals)
        lat = measure_latency({"base": base, "v": dst}, lat_feed, repeat)
        info["latency_ratio"] = lat["v"]["median_ms"] / lat["base"]["median_ms"]
        info["ms"] = lat["v"]["median_ms"]
        info["base_ms"] = lat["base"]["median_ms"]
        rows.append(info)
        log(f"   -> {json.dumps({k: info[k] for k in ('fidelity', 'latency_ratio', 'seconds')})}")
    return {"base_cost": base_cost, "rows": rows}


def minilm(models: Path, work: Path, repeat: int, samples: int) -> dict[str, Any]:
    from tools.bench import text_data

    lat_ids = text_data.tokenizer(TOKENS).encode(" ".join(text_data.EVAL_SENTENCES)).ids[:TOKENS]
    lat_ids = np.asarray([lat_ids], np.int64)
    lat = {"input_ids": lat_ids, "attention_mask": np.ones_like(lat_ids), "token_type_ids": np.zeros_like(lat_ids)}
    shapes = {k: [1, TOKENS] for k in lat}
    m = f"max-samples={samples} align=8"
    variants = []
    for removed in (0.25, 0.5):
        keep = f"rank-ratio={1 - removed:g}"
        variants += [
            (f"FFN −{removed:.0%} plain SVD", f"O2,lowrank-svd{{include={FFN} {keep} align=8}}"),
            (f"FFN −{removed:.0%} data-aware", f"O2,lowrank-svd{{include={FFN} {keep} data-aware=true {m}}}"),
            (f"FFN −{removed:.0%} closed-loop + sensitivity + refit",
             f"O2,lowrank-svd{{include={FFN} {keep} closed-loop=true allocation=sensitivity refit=true {m}}}"),
        ]
    variants += [
        ("all linear −25% plain SVD", "O2,lowrank-svd{rank-ratio=0.75 align=8}"),
        ("all linear −25% data-aware", f"O2,lowrank-svd{{rank-ratio=0.75 data-aware=true {m}}}"),
        ("all linear −25% closed-loop + sensitivity",
         f"O2,lowrank-svd{{rank-ratio=0.75 closed-loop=true allocation=sensitivity {m}}}"),
        ("all linear TT/MPO max-rank 16", "O2,lowrank-tt{max-rank=16 min-gain=0.1}"),
    ]
    return bench_variants("minilm", models / "minilm_l6_v2.onnx", variants,
                          text_data.feeds(text_data.calibration_texts(128)), text_data.feeds(text_data.EVAL_SENTENCES),
                          lat, fidelity_minilm, shapes, work, repeat)


def ocr(models: Path, work: Path, repeat: int, samples: int) -> dict[str, Any]:
    from tools.bench import ocr_data

    lines, truth = ocr_data.text_lines(128, seed=7)
    cal, _ = ocr_data.text_lines(64, seed=1001)
    chars = ocr_data.load_characters(models / "ppocrv4_rec.onnx")
    shapes = {"x": [1, 3, 48, 320]}
    variants = []
    for keep in (0.5,):
        variants += [
            (f"MatMuls −{1 - keep:.0%} plain", f"O2,lowrank-svd{{rank-ratio={keep} align=8}}"),
            (f"MatMuls −{1 - keep:.0%} data-aware", f"O2,lowrank-svd{{rank-ratio={keep} data-aware=true "
                                                    f"max-samples={samples} align=8}}"),
            (f"MatMuls −{1 - keep:.0%} closed-loop + sensitivity + refit",
             f"O2,lowrank-svd{{rank-ratio={keep} closed-loop=true allocation=sensitivity refit=true "
             f"max-samples={samples} align=8}}"),
        ]
    variants.append(("convs Tucker-2 −50%", "O2,lowrank-tucker{rank-ratio=0.5 align=8}"))
    return bench_variants("ocr", models / "ppocrv4_rec.onnx", variants, [{"x": x} for x in cal],
                          [{"x": x} for x in lines], {"x": lines[0]}, make_fidelity_rec(chars, truth), shapes, work,
                          repeat, opt_shapes=shapes)


def convs(work: Path, repeat: int) -> dict[str, Any]:
    """Single 3×3 convs 256→256: dense vs Tucker-2 / CP chains, weights from the passes."""
    import onnx_ir as ir

    from onnxpress.passes.lowrank import LowRankCpPass, LowRankTuckerPass
    from tests.passes.pruning._models import Builder

    rows = []
    work.mkdir(parents=True, exist_ok=True)
    for hw in (14, 56):
        b = Builder(seed=0)
        x = b.input("x", [1, 256, hw, hw])
        y = b.conv(x, b.rand(256, 256, 3, 3) * 0.02, b.rand(256), name="conv", pads=[1, 1, 1, 1])
        dense = b.model([y])
        dense_path = work / f"conv{hw}_dense.onnx"
        ir.save(dense, str(dense_path))
        feed = {"x": np.random.default_rng(0).standard_normal((1, 256, hw, hw)).astype(np.float32)}
        for label, pass_ in (("Tucker-2 (96,96)", LowRankTuckerPass(ranks=(96, 96))),
                             ("Tucker-2 (64,64)", LowRankTuckerPass(ranks=(64, 64))),
                             ("CP R=128 (10 ALS sweeps)", LowRankCpPass(rank=128, max_iters=10))):
            model = dense.clone()
            t = time.perf_counter()
            result = pass_(model)
            secs = time.perf_counter() - t
            path = work / f"conv{hw}_{len(rows)}.onnx"
            ir.save(model, str(path))
            lat = measure_latency({"dense": dense_path, "v": path}, feed, repeat)
            st = result.stats
            rows.append({"hw": hw, "label": label, "macs_ratio": st["macs_before"] / max(st["macs_after"], 1),
                         "dense_ms": lat["dense"]["median_ms"], "ms": lat["v"]["median_ms"],
                         "speedup": lat["dense"]["median_ms"] / lat["v"]["median_ms"], "seconds": round(secs, 2),
                         "weight_error": st["layers"][0]["weight_error"] if st.get("layers") else None})
            log(f"[convs] {hw} {label}: {rows[-1]}")
    return {"rows": rows}


def resnet18(work: Path, repeat: int) -> dict[str, Any]:
    from tools.bench import pruning_models

    work.mkdir(parents=True, exist_ok=True)
    src = work / "resnet18.onnx"
    pruning_models.export(pruning_models.build("resnet18", seed=0), src, opset=17)
    rng_eval = np.random.default_rng(7)
    evals = [{"input": rng_eval.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(4)]
    variants = [("Tucker-2 −50% (3×3 convs)", "O2,lowrank-tucker{rank-ratio=0.5 align=8}"),
                ("Tucker-2 −75%", "O2,lowrank-tucker{rank-ratio=0.25 align=8}"),
                ("CP rank 64 (10 ALS sweeps)", "O2,lowrank-cp{rank=64 max-iters=10}")]
    shapes = {"input": [1, 3, 224, 224]}
    return bench_variants("resnet18", src, variants, None, evals, evals[0], fidelity_logits, shapes, work, repeat)


# ------------------------------------------------------------------------------------------------
def _fmt(x, f="{:.3f}"):
    return "–" if x is None else f.format(x)


def render(results: dict[str, Any], command: str) -> str:
    out = [f"Command: `{command}`  ", f"Machine: {common.machine_line()}; ORT 1 intra-op thread, A/B interleaved, "
           f"median. Date {common.today()}, commit {common.git_commit()}.\n"]
    for key, title, fid in (("minilm", "all-MiniLM-L6-v2 (latency at 1×128 tokens)", ("cosine", "cosine_min")),
                            ("ocr", "PP-OCRv4 rec (1×3×48×320)", ("text_agreement", "cosine")),
                            ("resnet18", "ResNet-18 architecture (random weights; cosine = sanity only)",
                             ("cosine", "top1"))):
        res = results.get(key)
        if not res:
            continue
        base = res["base_cost"]
        rows = []
        for r in res["rows"]:
            if "error" in r:
                rows.append([r["label"], "failed: " + r["error"][:80], "", "", "", "", "", ""])
                continue
            st = r["stats"]
            f = r["fidelity"]
            rows.append([r["label"], f"{st.get('decomposed', 0)}", _fmt(r["cost"]["params"] / base["params"]),
                         _fmt(r["cost"]["macs"] / base["macs"]), _fmt(r["latency_ratio"], "{:.2f}"),
                         _fmt(f.get(fid[0]), "{:.4f}"), _fmt(f.get(fid[1]), "{:.4f}"), f"{r['seconds']:.0f}"])
        out.append(f"### {title}\n")
        out.append(md_table(["variant", "layers", "params ×", "MACs ×", "latency ×", fid[0], fid[1], "time s"], rows))
        out.append("\nPipelines: " + "; ".join(f"`{r['pipeline']}`" for r in res["rows"]) + "\n")
    if results.get("convs"):
        out.append("### Single 3×3 conv 256→256 (dense vs decomposed)\n")
        out.append(md_table(["H×W", "variant", "MACs ÷", "dense ms", "ms", "speed-up", "decomp. s"],
                            [[f"{r['hw']}×{r['hw']}", r["label"], _fmt(r["macs_ratio"], "{:.2f}"),
                              _fmt(r["dense_ms"], "{:.2f}"), _fmt(r["ms"], "{:.2f}"), _fmt(r["speedup"], "{:.2f}"),
                              r["seconds"]] for r in results["convs"]["rows"]]))
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=Path("bench_out/models"))
    ap.add_argument("--work", type=Path, default=Path("bench_out/lowrank"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=Path("bench_out/lowrank.json"))
    ap.add_argument("--only", default="minilm,ocr,convs,resnet18")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--samples", type=int, default=64, help="calibration feeds for the data-aware variants")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    results: dict[str, Any] = json.loads(args.json.read_text()) if args.json.exists() else {}
    if "convs" in only:
        results["convs"] = convs(args.work, args.repeat)
    if "resnet18" in only:
        results["resnet18"] = resnet18(args.work, args.repeat)
    if "ocr" in only:
        results["ocr"] = ocr(args.models, args.work, args.repeat, args.samples)
    if "minilm" in only:
        results["minilm"] = minilm(args.models, args.work, args.repeat, args.samples)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, default=str))
    if args.out:
        command = ("OPENBLAS_NUM_THREADS=1 HF_HUB_OFFLINE=1 python tools/bench/lowrank.py --models bench_out/models "
                   "--out docs/BENCHMARKS.md --json bench_out/lowrank.json")
        common.write_md_section(args.out, "lowrank", "Low-rank decomposition (lowrank-svd / -tucker / -cp / -tt)",
                                render(results, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
