#!/usr/bin/env python3
"""Low-rank benchmark: lowrank-svd / -tucker / -cp / -tt on real models and ResNet-18-like convs.

    OPENBLAS_NUM_THREADS=1 HF_HUB_OFFLINE=1 python tools/bench/lowrank.py --models bench_out/models \\
        --out docs/BENCHMARKS.md --json bench_out/lowrank.json [--only convs,resnet18,ocr,minilm]
        [--variants TEXT] [--quiet-json PATH]

Every model variant is `O2,<lowrank pass>` against the lossless `O2` baseline of the same model.
Measured: params and MACs (`onnxpress.ir.cost.model_cost`; MiniLM at 1×128 tokens) of the whole
model and of the decomposed layers (the pass's stats), ORT CPU latency (1 intra-op thread, ORT's
default graph optimizations, variant and baseline interleaved round-robin, median of `--repeat`
rounds), fidelity against the baseline, and the decomposition time (the low-rank pass's own wall
time, from the optimize report). The load average of the machine is recorded per section.

  convs     single 3×3 convs 256→256 at 14×14 and 56×56: dense vs Tucker-2 (96, 96) (≈ 4.5× fewer
            MACs), (64, 64), CP R=128 — the speed of one decomposed conv.
  resnet18  the torchvision architecture (tools/bench/pruning_models.py, seeded random weights):
            Tucker-2 and CP on every k×k conv — the "conv stack with 4× fewer MACs" target is
            the rank-ratio=0.25 Tucker-2 row (whole-model latency). Random weights are close to full
            rank, so the logits cosine is a sanity number, not a quality claim.
  ocr       PP-OCRv4 rec, its 9 constant-weight MatMuls (SVTR neck + the 120×6625 CTC head, which
            holds 78 % of their parameters; the other 4 MatMuls are attention) at −25 % / −50 % /
            −65 % of their parameters: plain SVD; one-shot data-aware (whitened) SVD with damping 0
            (SVD-LLM) and with the default damping; closed-loop + refit at uniform ranks;
            data-aware and closed-loop + refit with measured (end-to-end) allocation; at −25 % also
            closed-loop + spectral sensitivity allocation + refit; the three k×k group=1 convs by
            Tucker-2 (ranks by the kernels' spectra, the default; proportional ranks; + refit);
            and the CLI shorthand `--lowrank 0.3 --data`. Fidelity: decoded-text agreement with the baseline (CTC greedy, the model's
            own alphabet) on 128 rendered lines, ignoring leading / trailing spaces (the baseline
            itself emits spaces in the blank margins; the exact agreement is a column too);
            calibration on 64 other lines.
  minilm    all-MiniLM-L6-v2, FFN MatMuls (`include=` FFN below) at −25 % / −50 %: the same SVD
            variants as ocr, calibrated on text_data.calibration_texts (template paragraphs, a
            different kind of text: domain shift) and again on text_data.CALIBRATION_SENTENCES
            (128 other hand-written sentences of the evaluation's kind: in-domain); TT/MPO on the
            FFN at max-rank 16 and 64. Fidelity: mean cosine of mean-pooled sentence embeddings
            over text_data.EVAL_SENTENCES (disjoint from both calibration sets).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from tools.bench import common  # noqa: E402
from tools.bench.common import md_table  # noqa: E402
from tools.bench.pruning import (  # noqa: E402
    cost_of,
    fidelity_logits,
    fidelity_minilm,
    log,
    make_fidelity_rec,
    measure_latency,
    run_all,
)

FFN = r"re:intermediate/dense|layer\.\d+/output/dense"
TOKENS = 128
SECTIONS = ("convs", "resnet18", "ocr", "minilm")
STACK_LABEL = "Tucker-2, 23 % of conv params (≈ 4× fewer MACs)"
VARIANT_FILTER = ""  # --variants
NOT_ONE_SHOT = ("closed-loop", "sensitivity", "measured")
IN_DOMAIN = "FFN, in-domain calibration,"  # label prefix of MiniLM rows calibrated on CALIBRATION_SENTENCES  # labels of allocation / sequential variants


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def optimize(src, pipeline: str, data, dst: Path, shapes=None) -> dict[str, Any]:
    import onnxpress

    t = time.perf_counter()
    result = onnxpress.optimize(str(src), pipeline, data=data, verify="none", input_shapes=shapes, placement="off")
    wall = time.perf_counter() - t
    result.save(dst)
    lowrank = [p for p in result.report.passes if p["name"].startswith("lowrank")]
    stats: dict[str, Any] = {}
    for record in lowrank:  # several low-rank passes (the CLI shorthand): counts add up
        for key, value in record["stats"].items():
            if key in ("layers", "refits"):
                continue
            summed = key in ("decomposed", "skipped") or key.startswith(("params_", "macs_"))
            stats[key] = stats.get(key, 0) + value if summed and isinstance(value, int) else value
    return {"path": str(dst), "pipeline": pipeline, "seconds": round(wall, 1),
            "pass_seconds": round(sum(float(p.get("seconds", 0.0)) for p in lowrank), 2), "stats": stats}


def scope_params(path: Path, include: str | None) -> int:
    """Weight elements of the constant-weight MatMul / Gemm nodes `include` (a `re:` pattern)
    matches: the budget a rank-ratio of the in-scope layers refers to."""
    from onnxpress.ir.io import load

    pattern = re.compile(include[3:]) if include else None
    total = 0
    for node in load(str(path)).graph:
        if node.op_type not in ("MatMul", "Gemm") or len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        w = node.inputs[1].const_value
        if w is not None and (pattern is None or pattern.search(node.name or "")):
            total += int(np.prod(w.shape))
    return total


def bench_variants(key, src, variants, calib, evals, lat_feed, fidelity, shapes, work, repeat,
                   opt_shapes=None, scope: str | None = "all") -> dict[str, Any]:
    """Each (label, pipeline) optimized, costed, run for fidelity, and timed against the base.

    With `--variants TEXT` only the variants whose label contains TEXT run; their rows replace
    (or join) those of the same labels in the section's earlier results."""
    if VARIANT_FILTER:
        variants = [v for v in variants if VARIANT_FILTER in v[0]]
    work.mkdir(parents=True, exist_ok=True)
    load_before = load_average()
    base = work / f"{key}_base.onnx"
    optimize(src, "O2", None, base, opt_shapes)
    ref = run_all(base, evals)
    base_cost = cost_of(base, shapes)
    scope_total = scope_params(base, None if scope == "all" else scope) if scope else None
    rows = []
    for label, pipeline, *own_calib in variants:  # a third element: this variant's calibration feeds
        dst = work / f"{key}_{len(rows)}.onnx"
        log(f"[{key}] {label}: {pipeline}")
        try:
            info = optimize(src, pipeline, own_calib[0] if own_calib else calib, dst, opt_shapes)
        except Exception as e:  # noqa: BLE001 - a failed variant is a row, not the end of the run
            rows.append({"label": label, "pipeline": pipeline, "error": repr(e)})
            log(f"   failed: {e!r}")
            continue
        info["label"] = label
        info["cost"] = cost_of(dst, shapes)
        if scope_total:
            removed = base_cost["params"] - info["cost"]["params"]
            info["scope_kept"] = 1.0 - removed / scope_total
        info["fidelity"] = fidelity(ref, run_all(dst, evals), evals)
        lat = measure_latency({"base": base, "v": dst}, lat_feed, repeat)
        info["latency_ratio"] = lat["v"]["median_ms"] / lat["base"]["median_ms"]
        info["ms"], info["base_ms"] = lat["v"]["median_ms"], lat["base"]["median_ms"]
        rows.append(info)
        log(f"   -> {json.dumps({k: info[k] for k in ('fidelity', 'latency_ratio', 'pass_seconds')})}")
    for row in rows:
        row["load"] = [load_before, load_average()]
    return {"base_cost": base_cost, "scope_params": scope_total, "rows": rows,
            "load": [load_before, load_average()]}


# ------------------------------------------------------------------------------------------------
# the sections


def convs(work: Path, repeat: int) -> dict[str, Any]:
    """Single 3×3 convs 256→256: dense vs Tucker-2 / CP chains, weights from the passes."""
    import onnx_ir as ir

    from onnxpress.passes.lowrank import LowRankCpPass, LowRankTuckerPass
    from tests.passes.pruning._models import Builder

    rows = []
    work.mkdir(parents=True, exist_ok=True)
    load_before = load_average()
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
    return {"rows": rows, "load": [load_before, load_average()]}


def resnet18(work: Path, repeat: int) -> dict[str, Any]:
    from tools.bench import pruning_models

    work.mkdir(parents=True, exist_ok=True)
    src = work / "resnet18.onnx"
    pruning_models.export(pruning_models.build("resnet18", seed=0), src, opset=17)
    rng_eval = np.random.default_rng(7)
    evals = [{"input": rng_eval.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(4)]
    # rank-ratio 0.23 of each kernel's params is ~4.1x fewer MACs over the decomposed convs (strided
    # convs run their first 1x1 at the input's resolution, so MACs drop less than params)
    variants = [("Tucker-2, 50 % of conv params", "O2,lowrank-tucker{rank-ratio=0.5 align=8}"),
                (STACK_LABEL, "O2,lowrank-tucker{rank-ratio=0.23 align=8}"),
                ("Tucker-2, 23 %, HOSVD only", "O2,lowrank-tucker{rank-ratio=0.23 align=8 hooi-iters=0}"),
                ("Tucker-2, 23 %, proportional ranks",
                 "O2,lowrank-tucker{rank-ratio=0.23 align=8 rank-select=proportional}"),
                ("CP, 23 % of conv params (10 ALS sweeps)", "O2,lowrank-cp{rank-ratio=0.23 max-iters=10}"),
                ("CP, 10 % of conv params (10 ALS sweeps)", "O2,lowrank-cp{rank-ratio=0.1 max-iters=10}")]
    shapes = {"input": [1, 3, 224, 224]}
    return bench_variants("resnet18", src, variants, None, evals, evals[0], fidelity_logits, shapes, work, repeat,
                          scope=None)


#: The lowrank-svd variants compared on a real model: (label suffix, options besides rank and samples).
SVD_VARIANTS = (
    ("data-aware, damping 0 (SVD-LLM)", "data-aware=true damping=0"),
    ("data-aware", "data-aware=true"),
    ("closed-loop + refit", "closed-loop=true refit=true"),
    ("data-aware + measured allocation", "data-aware=true allocation=measured"),
    ("closed-loop + measured allocation + refit", "closed-loop=true allocation=measured refit=true"),
)


def svd_variants(prefix: str, scope: str, samples: str, *, plain: bool = True, sensitivity: bool = False,
                 calib: list | None = None) -> list[tuple]:
    """(label, pipeline[, calibration feeds]) of the plain SVD row and SVD_VARIANTS at one budget
    (`scope`: the rank-ratio and include options); `calib` replaces the section's calibration."""
    own = (calib,) if calib is not None else ()
    rows = [(f"{prefix} plain SVD", f"O2,lowrank-svd{{{scope} align=8}}")] if plain else []
    extras = SVD_VARIANTS + ((("closed-loop + sensitivity + refit",
                                "closed-loop=true allocation=sensitivity refit=true"),) if sensitivity else ())
    for label, options in extras:
        rows.append((f"{prefix} {label}", f"O2,lowrank-svd{{{scope} {options} {samples}}}", *own))
    return rows


def ocr(models: Path, work: Path, repeat: int, samples: int) -> dict[str, Any]:
    from onnxpress.passes.lowrank import lowrank_fragment
    from tools.bench import ocr_data

    lines, truth = ocr_data.text_lines(128, seed=7)
    cal, _ = ocr_data.text_lines(64, seed=1001)
    chars = ocr_data.load_characters(models / "ppocrv4_rec.onnx")
    shapes = {"x": [1, 3, 48, 320]}
    m = f"max-samples={samples} align=8"
    variants = []
    for keep in (0.75, 0.5, 0.35):
        variants += svd_variants(f"MatMuls −{1 - keep:.0%}", f"rank-ratio={keep}", m, sensitivity=keep == 0.75)
    variants += [
        ("k×k convs Tucker-2, 50 %, proportional ranks",
         "O2,lowrank-tucker{rank-ratio=0.5 align=8 rank-select=proportional}"),
        ("k×k convs Tucker-2, 50 % of their params", "O2,lowrank-tucker{rank-ratio=0.5 align=8}"),
        ("k×k convs Tucker-2, 50 % + refit", f"O2,lowrank-tucker{{rank-ratio=0.5 align=8 refit=true max-samples={samples}}}"),
        ("`--lowrank 0.3 --data` (CLI shorthand)", "O2," + lowrank_fragment(0.3, data=True)),
    ]
    return bench_variants("ocr", models / "ppocrv4_rec.onnx", variants, [{"x": x} for x in cal],
                          [{"x": x} for x in lines], {"x": lines[0]}, make_fidelity_rec(chars, truth), shapes, work,
                          repeat, opt_shapes=shapes)


def minilm(models: Path, work: Path, repeat: int, samples: int) -> dict[str, Any]:
    from tools.bench import text_data

    lat_ids = text_data.tokenizer(TOKENS).encode(" ".join(text_data.EVAL_SENTENCES)).ids[:TOKENS]
    lat_ids = np.asarray([lat_ids], np.int64)
    lat = {"input_ids": lat_ids, "attention_mask": np.ones_like(lat_ids), "token_type_ids": np.zeros_like(lat_ids)}
    shapes = {k: [1, TOKENS] for k in lat}
    m = f"max-samples={samples} align=8"
    variants = []
    for removed in (0.25, 0.5):
        variants += svd_variants(f"FFN −{removed:.0%}", f"include={FFN} rank-ratio={1 - removed:g}", m,
                                 sensitivity=removed == 0.25)
    # in-domain calibration: 128 other hand-written sentences of the evaluation's kind
    in_domain = text_data.feeds(text_data.CALIBRATION_SENTENCES)
    for removed in (0.25, 0.5):
        variants += svd_variants(f"{IN_DOMAIN} −{removed:.0%}", f"include={FFN} rank-ratio={1 - removed:g}",
                                 f"max-samples={len(in_domain)} align=8", plain=False, calib=in_domain)
    variants += [
        ("FFN TT/MPO max-rank 16", f"O2,lowrank-tt{{include={FFN} max-rank=16}}"),
        ("FFN TT/MPO max-rank 64", f"O2,lowrank-tt{{include={FFN} max-rank=64}}"),
    ]
    return bench_variants("minilm", models / "minilm_l6_v2.onnx", variants,
                          text_data.feeds(text_data.calibration_texts(128)), text_data.feeds(text_data.EVAL_SENTENCES),
                          lat, fidelity_minilm, shapes, work, repeat, scope=FFN)


# ------------------------------------------------------------------------------------------------
# the report


def _fmt(x, f="{:.3f}"):
    return "–" if x is None else f.format(x)


def _layer_ratio(stats: dict[str, Any], key: str) -> float | None:
    before, after = stats.get(f"{key}_before"), stats.get(f"{key}_after")
    return after / before if before and after is not None else None


def _rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in res.get("rows", []) if "error" not in r]


def _find(res: dict[str, Any] | None, label: str) -> dict[str, Any] | None:
    return next((r for r in _rows(res or {}) if r["label"] == label), None)


MODEL_TABLES = (
    ("convs", None, None),
    ("resnet18", "ResNet-18 architecture, 1×3×224×224 (seeded random weights: cosine / top-1 are sanity only)",
     ("cosine", "top1")),
    ("ocr", "PP-OCRv4 rec, 1×3×48×320", ("text_agreement_trim", "text_agreement", "cosine")),
    ("minilm", "all-MiniLM-L6-v2, 1×128 tokens", ("cosine", "cosine_min")),
)


FIDELITY_HEADERS = {"text_agreement_trim": "text agreement", "text_agreement": "exact text", "cosine": "cosine",
                    "cosine_min": "cosine min", "top1": "top1"}


def model_table(res: dict[str, Any], fid: tuple[str, ...]) -> str:
    base = res["base_cost"]
    scoped = bool(res.get("scope_params"))
    header = ["variant", "layers"] + (["scope params kept"] if scoped else []) + [
        "layer params ×", "layer MACs ×", "model params ×", "model MACs ×", "latency ×", *(FIDELITY_HEADERS.get(k, k) for k in fid), "pass s"]
    rows = []
    for r in res["rows"]:
        if "error" in r:
            rows.append([r["label"], "failed: " + r["error"][:80]] + [""] * (len(header) - 2))
            continue
        st, f = r["stats"], r["fidelity"]
        rows.append([r["label"], f"{st.get('decomposed', 0)}"]
                    + ([_fmt(r.get("scope_kept"))] if scoped else [])
                    + [_fmt(_layer_ratio(st, "params")), _fmt(_layer_ratio(st, "macs")),
                       _fmt(r["cost"]["params"] / base["params"]), _fmt(r["cost"]["macs"] / base["macs"]),
                       _fmt(r["latency_ratio"], "{:.2f}"), *(_fmt(f.get(k), "{:.4f}") for k in fid),
                       _fmt(r.get("pass_seconds"), "{:.1f}")])
    return md_table(header, rows)


def targets(results: dict[str, Any]) -> list[str]:
    """One line per target of issue 4, with the numbers that decide it."""
    out = []
    for where, res in (("", results.get("resnet18")), (" (quiet machine)", results.get("quiet", {}).get("resnet18"))):
        stack = _find(res, STACK_LABEL)
        if not stack:
            continue
        macs = 1.0 / _layer_ratio(stack["stats"], "macs")
        speed = 1.0 / stack["latency_ratio"]
        verdict = "met" if macs >= 4.0 and speed >= 1.5 else "missed"
        out.append(f"- Tucker-2 conv stack with 4× fewer MACs ≥ 1.5× faster on ORT CPU{where}: **{verdict}** — "
                   f"ResNet-18, {stack['stats'].get('decomposed')} k×k convs with {macs:.2f}× fewer MACs "
                   f"(whole model {base_ratio(res, stack, 'macs'):.2f}×), whole-model latency {speed:.2f}× faster "
                   f"(median {stack['base_ms']:.1f} → {stack['ms']:.1f} ms, {res.get('cores')} cores, load "
                   f"{res.get('load')}).")
    for key, label, fid in (("minilm", "FFN", "cosine"), ("minilm", IN_DOMAIN, "cosine"),
                            ("ocr", "MatMuls", "text_agreement_trim")):
        res = results.get(key)
        if not res:
            continue
        for removed in ("25%", "50%", "65%"):
            rows = [r for r in _rows(res) if r["label"].startswith(f"{label} −{removed}")]
            one_shot = [r for r in rows if not any(word in r["label"] for word in NOT_ONE_SHOT)]
            better = [r for r in rows if any(word in r["label"] for word in NOT_ONE_SHOT)]
            if not one_shot or not better:
                continue
            order = lambda r: (r["fidelity"][fid], r["fidelity"]["cosine"])  # noqa: E731 - cosine breaks ties
            best_one = max(one_shot, key=order)
            # at the one-shot's budget where such a variant does as well; else the best at any budget
            equal = [r for r in better if (r.get("scope_kept") or 0.0) <= (best_one.get("scope_kept") or 0.0) + 0.005]
            best = max(better, key=order)
            if equal and max(equal, key=order)["fidelity"][fid] >= best["fidelity"][fid]:
                best = max(equal, key=order)
            a, b = best["fidelity"][fid], best_one["fidelity"][fid]
            verdict = "beats" if a > b else "ties with" if a == b else "does not beat"
            tie = (f" (equal {fid}; output cosine {best['fidelity']['cosine']:.4f} vs "
                   f"{best_one['fidelity']['cosine']:.4f})" if a == b and fid != "cosine" else "")
            out.append(f"- {key} {label} −{removed}: best allocation / closed-loop variant ({best['label']}) "
                       f"{fid} {a:.4f} **{verdict}** the best one-shot ({best_one['label']}) {b:.4f}{tie}; "
                       f"in-scope params kept {_fmt(best.get('scope_kept'))} vs {_fmt(best_one.get('scope_kept'))}"
                       + _budget_caveat(best, best_one, verdict) + ".")
    for key in ("minilm", "ocr"):
        for r in _rows(results.get(key) or {}):
            allocation = r["stats"].get("allocation")
            if not allocation:
                continue
            kept = [name for name, rank in allocation.items() if rank is None]
            ranked = {name: rank for name, rank in allocation.items() if rank is not None}
            where = (", all the budget on " + " and ".join(f"`{n}` (rank {k})" for n, k in ranked.items())
                     if len(ranked) <= 2 else "")
            kind = "measured" if "measured" in r["label"] else "spectral"
            out.append(f"- {key} {r['label']}: the {kind} allocation left {len(kept)} of {len(allocation)} "
                       f"in-scope layers dense{where}.")
    res = results.get("minilm")
    if res:
        for prefix, calibration in (("FFN −25%", "template paragraphs"), (f"{IN_DOMAIN} −25%", "in-domain sentences")):
            at25 = [r for r in _rows(res) if r["label"].startswith(prefix)]
            if at25:
                best = max(at25, key=lambda r: r["fidelity"]["cosine"])
                verdict = "met" if best["fidelity"]["cosine"] >= 0.95 else "missed"
                out.append(f"- MiniLM mean embedding cosine ≥ 0.95 at −25 % of the FFN parameters, calibrated on "
                           f"{calibration}: **{verdict}** — best {best['fidelity']['cosine']:.4f} ({best['label']}).")
        for r in _rows(res):
            if r["label"].startswith("FFN TT"):
                out.append(f"- {r['label']}: the decomposed layers keep {_layer_ratio(r['stats'], 'params'):.3f} of "
                           f"their params but need {_layer_ratio(r['stats'], 'macs'):.2f}× their MACs; latency "
                           f"{r['latency_ratio']:.2f}×, cosine {r['fidelity']['cosine']:.4f}: **TT/MPO trades FLOPs "
                           "for parameters**.")
    return out


def _budget_caveat(best: dict[str, Any], one_shot: dict[str, Any], verdict: str) -> str:
    """A warning where a win was bought with more parameters than the one-shot row kept."""
    extra = (best.get("scope_kept") or 0.0) - (one_shot.get("scope_kept") or 0.0)
    if verdict == "beats" and extra > 0.005:
        return f" (it keeps {extra:.3f} more of the in-scope params: not an equal-budget win)"
    return ""


def _run_scope(argv: list[str]) -> tuple[frozenset[str], str]:
    """The sections and the `--variants` filter of a recorded run."""
    def value(flag: str, default: str) -> str:
        for i, arg in enumerate(argv):
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
        return default

    return frozenset(p for p in value("--only", ",".join(SECTIONS)).split(",") if p), value("--variants", "")


def _live_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The recorded runs whose rows are still in the results: a run is dropped when a later one
    re-ran all its sections with the same `--variants` filter, or with none."""
    live = []
    for i, run in enumerate(runs):
        sections, variants = _run_scope(run["argv"])
        if not any(sections <= later_sections and later_variants in ("", variants)
                   for later_sections, later_variants in (_run_scope(r["argv"]) for r in runs[i + 1:])):
            live.append(run)
    return live


def base_ratio(res: dict[str, Any], row: dict[str, Any], key: str) -> float:
    return res["base_cost"][key] / max(row["cost"][key], 1)


NOTES = """\
Notes on method (they hold whatever the numbers):
- Decomposition time: Tucker-2 is a numpy HOSVD + HOOI (eigen-decompositions of the channel
  Grams) and CP a numpy ALS that contracts the kernel one factor at a time; tensorly's
  `partial_tucker` ran over 5 min on one 512-channel ResNet-18 conv, its `parafac` 80 s for 10 sweeps
  on one 512×512×3×3 kernel at R=64 (both on this loaded 2-core machine). Both are deterministic (CP's seeded columns only where R exceeds a
  mode's size); `hooi-iters=0` is the HOSVD alone.
- ResNet-18 has seeded random weights (no trained weights offline): random kernels are close to
  full rank, so their cosine is low at any rank and says nothing about trained networks; that table
  is about cost, speed and decomposition time. Tucker-2 and CP factor the weights alone; with data,
  `lowrank-tucker{refit=true}` then refits each chain's last conv to the original conv's outputs
  (the rec `+ refit` row).
- Whitening damping (`damping=`, default 0.03 of mean(diag XᵀX)): the data-aware fit moves from
  the best fit to the calibration inputs (0, SVD-LLM) towards the plain SVD. It pays on inputs
  unlike the calibration set: MiniLM's FFN layers at −25 %, whitened on the template paragraphs,
  have about 10× lower relative output error on held-out template paragraphs than on the
  evaluation sentences. Calibrated in-domain, damping costs a little instead; compare the
  `damping 0` rows of both MiniLM calibrations.
- Fidelity steps: on rec one decoded line of the 128 is 0.0078 of text agreement; MiniLM's cosine
  is a mean over 64 sentences. The target lines compare the best one-shot row (damping 0 or the
  default) with the best allocation / closed-loop row at the same parameter budget where one does
  as well, output cosine breaking ties.
- Calibration is never the evaluation data: MiniLM calibrates on template office / travel
  paragraphs (domain shift) or on 128 other hand-written sentences (in-domain, the `in-domain
  calibration` rows) and is evaluated on 64 hand-written sentences; rec calibrates on 64 rendered lines and
  is evaluated on 128 others. No fine-tuning anywhere.
- `allocation=sensitivity` shares one budget greedily by each layer's own relative output error
  (whitened tail energy on the calibration inputs) per parameter saved. It does not see how a
  layer's error reaches the task: on rec the 120×6625 CTC head is the cheapest place to save
  parameters by that measure, and errors there flip decoded characters. `allocation=measured`
  shares the same budget by measured end-to-end sensitivity instead (each layer truncated alone
  at 6 ranks in a clone, the model's outputs compared on 16 calibration feeds; errors assumed
  additive across layers). The measured allocation lands on the budget: the step that meets it
  goes only as far as needed, and what is left under the budget is given back (or swapped in for a
  step of a wide layer, paid by steps elsewhere) in aligned rank steps by the measured errors
  interpolated between the trial ranks. The spectral `sensitivity` allocation still stops at the
  first step that meets the budget (a dense layer's first step removes `min-gain` of it at once), so
  it can remove more than asked: compare at the `scope params kept` column.
- TT/MPO is gated on parameters only (`lowrank-tt` reports its MAC increase in the stats); use it
  where memory or download size is the goal, not speed. Its `model MACs ×` is undercounted: the
  chain's intermediate values keep the symbolic row count they were emitted with (MiniLM's sequence
  axis is dynamic), and `model_cost` counts unknown dims as 1 even after the inputs are fixed to
  1×128. The `layer MACs ×` column (the pass's own count) and the latency are the ones to read.
"""


def tables(results: dict[str, Any]) -> list[str]:
    out = []
    for key, title, fid in MODEL_TABLES:
        res = results.get(key)
        if not res:
            continue
        load, cores = res.get("load", [None, None]), res.get("cores")
        loaded = (f" Load average {load[0]} → {load[1]} on {cores} cores (above {cores} the cores were shared with "
                  "other work)." if load[0] is not None else "")
        if key == "convs":
            out.append("#### Single 3×3 conv 256→256, pads 1 (dense vs decomposed; random weights)\n")
            out.append(md_table(["H×W", "variant", "MACs ÷", "dense ms", "ms", "speed-up", "decomp. s"],
                                [[f"{r['hw']}×{r['hw']}", r["label"], _fmt(r["macs_ratio"], "{:.2f}"),
                                  _fmt(r["dense_ms"], "{:.2f}"), _fmt(r["ms"], "{:.2f}"), _fmt(r["speedup"], "{:.2f}"),
                                  r["seconds"]] for r in res["rows"]]))
            out.append(f"\n{loaded.strip()}\n")
            continue
        out.append(f"#### {title}\n")
        out.append(model_table(res, fid))
        out.append("\nPipelines: " + "; ".join(f"`{r['pipeline']}`" for r in res["rows"]) + "." + loaded + "\n")
    return out


def render(results: dict[str, Any], command: str) -> str:
    runs = "; ".join(f"`{' '.join(r['argv'])}` ({r['when']})" for r in _live_runs(results.get("runs", [])))
    out = [f"Command (all sections): `{command}`  ", *([f"Runs behind these tables: {runs}  "] if runs else []),
           f"Machine: {common.machine_line()}; ORT 1 intra-op thread, A/B interleaved, "
           f"median. {common.today()}, commit {common.git_commit()}. `latency ×` is variant / O2 baseline "
           "(< 1 is faster); `layer` ratios are over the decomposed layers only (the pass's stats), `model` "
           "ratios over the whole model; `pass s` is the low-rank pass's own wall time (decomposition, plus "
           "calibration runs for the data-aware variants).\n"]
    lines = targets(results)
    if lines:
        out += ["### Targets\n", *lines, ""]
    out.append(NOTES)
    out += ["### Results\n", *tables(results)]
    quiet = results.get("quiet")
    if quiet:
        out += ["### Quiet-machine cross-check\n",
                f"The `convs` and `resnet18` sections of the same script and code version, run with `--json` "
                f"{quiet.get('source', '')} on an otherwise idle {quiet.get('machine', 'machine')} (1 ORT thread, "
                "1 BLAS thread), because the machine above was shared while it measured.\n", *tables(quiet)]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=Path("bench_out/models"))
    ap.add_argument("--work", type=Path, default=Path("bench_out/lowrank"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=Path("bench_out/lowrank.json"))
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated subset of " + ", ".join(SECTIONS))
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--samples", type=int, default=64, help="calibration feeds for the data-aware variants")
    ap.add_argument("--variants", default="", help="run only the variants whose label contains this text and "
                    "merge their rows into the earlier results of their sections")
    ap.add_argument("--quiet-json", type=Path, default=None,
                    help="JSON of a `--only convs,resnet18` run on an idle machine: shown as a cross-check")
    ap.add_argument("--quiet-machine", default="machine", help="how to describe that machine in the document")
    args = ap.parse_args(argv)
    only = {part for part in args.only.split(",") if part}  # `--only ""`: just rebuild the document
    global VARIANT_FILTER
    VARIANT_FILTER = args.variants
    unknown = only - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s) {', '.join(sorted(unknown))}")
    # `--only` runs merge into the JSON of earlier runs, so the document can be rebuilt from parts
    results: dict[str, Any] = json.loads(args.json.read_text()) if args.json.exists() else {}
    started = time.perf_counter()
    if only:
        results.setdefault("runs", []).append({"when": common.today(), "argv": sys.argv[1:] if argv is None else argv})
    for key in SECTIONS:
        if key not in only:
            continue
        t = time.perf_counter()
        if key == "convs":
            fresh = convs(args.work, args.repeat)
        elif key == "resnet18":
            fresh = resnet18(args.work, args.repeat)
        elif key == "ocr":
            fresh = ocr(args.models, args.work, args.repeat, args.samples)
        else:
            fresh = minilm(args.models, args.work, args.repeat, args.samples)
        if args.variants and key in results:
            new = {row["label"]: row for row in fresh["rows"]}
            merged = [new.pop(row["label"], row) for row in results[key]["rows"]]
            fresh = {**results[key], "rows": merged + list(new.values())}
        results[key] = fresh
        results[key]["section_seconds"] = round(time.perf_counter() - t, 1)
        results[key]["when"] = common.today()
        results[key]["cores"] = os.cpu_count()
        log(f"[{key}] done in {results[key]['section_seconds']} s")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str))
    log(f"total {time.perf_counter() - started:.0f} s")
    if args.quiet_json is not None:
        quiet = json.loads(args.quiet_json.read_text())
        results["quiet"] = {key: quiet[key] for key in ("convs", "resnet18") if key in quiet}
        results["quiet"].update(source=f"`{args.quiet_json}`", machine=args.quiet_machine)
        args.json.write_text(json.dumps(results, indent=1, default=str))
    if args.out:
        command = ("OPENBLAS_NUM_THREADS=1 HF_HUB_OFFLINE=1 python tools/bench/lowrank.py --models bench_out/models "
                   f"--out docs/BENCHMARKS.md --json bench_out/lowrank.json --repeat {args.repeat}")
        common.write_md_section(args.out, "lowrank", "Low-rank decomposition (lowrank-svd / -tucker / -cp / -tt)",
                                render(results, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
