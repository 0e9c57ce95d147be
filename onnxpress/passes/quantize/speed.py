"""Measured speed check: is the quantized model faster than the float one on the target at all?

Integer kernels do not always pay. On ONNX Runtime's CPU EP a small CNN (PP-OCR's direction
classifier: 48×192 inputs, 0.6 MB of weights) runs 1.1-1.4× *slower* in int8 than in float at one
thread (docs/BENCHMARKS.md; ORT's own quantizer's result too): per-node requantization and lost
NCHWc layout fusions cost more than the integer arithmetic saves. Storing only the weights in int8 does not help there either (ORT
keeps the weight DequantizeLinear nodes and runs plain Conv, 1.6× slower). So the quantizer
measures: `compare_latency` times both models on the target's own runner, interleaved (A/B/A/B,
the first runs discarded), on one calibration feed, and reports the ratio; the pass then warns or,
with `if-slower=keep-float`, leaves the model float.

Per part (`part-timing`): whole-model timing cannot tell which ops lose. ORT's profiler can: every
kernel's time, named after the node it came from (`kernel_times`). `node_times` attributes the
kernels of the float model and of the quantized clone to the model's nodes by those names (exact;
without ORT's `_token_N`; an NCHWc conv named `<output>_nchwc`, with the activation fused into
it), leaving layout reorders and Q / DQ unattributed. Measured on PP-OCR and MiniLM at one thread,
the CPU EP's int8 kernels that lose to their float counterparts are the ones float runs in NCHWc
or MLAS form: uint8 MaxPool / AveragePool (~10× slower), Resize (~3×), QLinearSoftmax (~5×), some
grouped convs. `slower_parts` groups the nodes whose int8 time exceeds their float time by kind
(op type; grouped convs apart) and keeps the kinds that would save a visible share of the run;
`choose_float_parts` then tries them one by one on clones and keeps a kind float only where ORT
really runs it in float (a DQ -> op -> Q between quantized neighbours is fused back into the
integer kernel: QLinearSoftmax, QLinearAveragePool, QLinearMul, uint8 Resize; `integer_nodes` of
the trial's profile says so; a float Conv there would even get int8 per-tensor weights of ORT's
own making, which `qdq_build` prevents) — where it does not, the part is tried once more with the
nodes that keep its input tensors float too (a Softmax with the Add before it: MiniLM's
QLinearSoftmax takes 6× the float Softmax's time at 128 tokens), the
whole model measures at least 2 % faster, loses at most 0.5 dB of output SQNR and grows by at most
5 % of weight bytes: a float island costs Q / DQ passes and layout changes the profile does not show.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import onnx_ir as ir

from onnxpress.ir.io import weight_bytes

__all__ = ["SLOWER", "Kernel", "SlowerPart", "attribute", "choose_float_parts", "compare_latency", "integer_nodes",
           "kernel_times", "node_times", "part_of", "slower_parts"]

#: Rounds of A/B timing at least and at most; rounds stop early once `budget_s` is spent.
MIN_ROUNDS, MAX_ROUNDS = 5, 200


def _session(runner: Any, model: ir.Model, threads: int | None, profile_dir: str | None = None) -> Any:
    """A session on `runner`, at `threads` intra-op threads where given, profiled into `profile_dir`."""
    if threads is None and profile_dir is None:
        return runner.session(model)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
    if profile_dir is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(profile_dir, "profile")
    return runner.session(model, session_options=opts)


def threads_label(runner: Any, threads: int | None) -> int | str:
    return threads or getattr(runner, "intra_op_threads", None) or "ORT default"


def compare_latency(runner: Any, reference: ir.Model, candidate: ir.Model, feed: Mapping[str, Any], *,
                    budget_s: float = 3.0, warmup: int = 2, threads: int | None = None) -> dict[str, Any]:
    """Median latency of both models on `runner`'s sessions and `candidate / reference` (below 1 = faster).

    `threads`: intra-op threads of the timed sessions (default: the runner's)."""
    sessions = [_session(runner, reference, threads), _session(runner, candidate, threads)]
    outputs = [[o.name for o in s.get_outputs()] for s in sessions]
    feeds = [{i.name: feed[i.name] for i in s.get_inputs() if i.name in feed} for s in sessions]
    for s, names, f in zip(sessions, outputs, feeds):
        for _ in range(warmup):
            s.run(names, f)
    times: list[list[float]] = [[], []]
    start = time.perf_counter()
    rounds = 0
    while rounds < MAX_ROUNDS and (rounds < MIN_ROUNDS or time.perf_counter() - start < budget_s):
        order = (0, 1) if rounds % 2 == 0 else (1, 0)
        for k in order:
            t = time.perf_counter()
            sessions[k].run(outputs[k], feeds[k])
            times[k].append(time.perf_counter() - t)
        rounds += 1
    ref_ms, cand_ms = (float(np.median(t)) * 1e3 for t in times)
    return {"float_ms": round(ref_ms, 4), "quantized_ms": round(cand_ms, 4),
            "ratio": round(cand_ms / max(ref_ms, 1e-12), 4), "rounds": rounds,
            "threads": threads_label(runner, threads)}


# ----------------------------------------------------------------------------------------------
# Per part: ORT's per-kernel profile, attributed to the model's nodes, then timed trials
# ----------------------------------------------------------------------------------------------
#: A node's int8 kernels count as slower when they take this many times its float kernels' time
#: (plus `SLOWER_MARGIN_US`): the profiler's per-kernel numbers carry a few µs of overhead each.
SLOWER_RATIO, SLOWER_MARGIN_US = 1.25, 2.0
#: A part is tried only where the profile says keeping it float saves at least this share of the
#: quantized model's kernel time and this many µs per run: less is below what a timed trial of the
#: whole model can tell from noise.
MIN_SHARE, MIN_SAVING_US = 0.01, 20.0
#: Activations ORT fuses into the float Conv before them (FusedConv / NCHWc conv): their kernel
#: time belongs to the conv.
_FUSED_INTO_CONV = frozenset({"Relu", "Clip", "Sigmoid", "HardSigmoid", "LeakyRelu", "Tanh"})
_PROFILE_SUFFIX = "_kernel_time"
#: Tensor types in ORT's profile that make a kernel an integer one.
_INTEGER_TYPES = frozenset({"uint8", "int8", "uint16", "int16", "uint4", "int4"})
#: ORT's generated names keep the original node's name in front of a `_token_N` counter
#: (QLinearConv after the NHWC layout transform: `Conv@3_token_58`).
_TOKEN = re.compile(r"_token_\d+$")
#: The float CPU EP names an NCHWc conv after its output tensor: `relu_0.tmp_0_nchwc`.
_NCHWC = "_nchwc"

SLOWER = "slower in int8 (measured)"


class Kernel(NamedTuple):
    """One kernel of a profiled run: its op type, median µs per call, and whether it reads or writes
    8- / 16-bit integer tensors (an integer kernel: QLinearConv, MatMulIntegerToFloat, MaxPool on
    uint8, ...)."""

    op_type: str
    us: float
    integer: bool = False


def kernel_times(runner: Any, model: ir.Model, feed: Mapping[str, Any], *, runs: int = 20,
                 warmup: int = 3, threads: int | None = None) -> dict[str, Kernel]:
    """Every kernel ORT ran for `model` on `runner`'s settings, by ORT's node name.

    One profiled session (`onnxruntime.SessionOptions.enable_profiling`), at `threads` intra-op
    threads where given; the first `warmup` runs are dropped (`runs=1, warmup=0` tells which
    kernels run). A kernel run several times per model run (inside a Loop) counts per call."""
    with tempfile.TemporaryDirectory(prefix="onnxpress-profile-") as tmp:
        session = _session(runner, model, threads, tmp)
        names = [o.name for o in session.get_outputs()]
        inputs = {i.name: feed[i.name] for i in session.get_inputs() if i.name in feed}
        for _ in range(warmup + runs):
            session.run(names, inputs)
        with open(session.end_profiling(), encoding="utf-8") as f:
            events = json.load(f)
    samples: dict[str, list[float]] = {}
    first: dict[str, dict[str, Any]] = {}
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith(_PROFILE_SUFFIX):
            continue
        name = name[: -len(_PROFILE_SUFFIX)]
        samples.setdefault(name, []).append(float(event.get("dur", 0.0)))
        first.setdefault(name, event.get("args") or {})
    out = {}
    for name, v in samples.items():
        args = first[name]
        types = {t for key in ("input_type_shape", "output_type_shape") for entry in args.get(key) or ()
                 for t in (entry if isinstance(entry, dict) else {})}
        out[name] = Kernel(str(args.get("op_name", "")), float(np.median(v[warmup:] if len(v) > warmup else v)),
                           bool(types & _INTEGER_TYPES))
    return out


def attribute(kernels: Mapping[str, Kernel], model: ir.Model) -> list[tuple[ir.Node | None, Kernel]]:
    """Each kernel with the node of `model` it comes from, or None, for a profile of `model` or of a
    quantized clone of it (the clone keeps the node names; its Q / DQ nodes are claimed by none).

    A kernel belongs to the node of the same name, or of its name without ORT's `_token_N`, or,
    for an NCHWc conv named after its output, to the conv producing that output (through a fused
    activation). Layout reorders, Q / DQ and anything else unnamed stay unattributed."""
    nodes = {n.name: n for graph in model.graphs() for n in graph if n.name}
    producers = {v.name: n for graph in model.graphs() for n in graph for v in n.outputs if v.name}
    out: list[tuple[ir.Node | None, Kernel]] = []
    for name, kernel in kernels.items():
        node = nodes.get(name) or nodes.get(_TOKEN.sub("", name))
        if node is None and name.endswith(_NCHWC):
            node = producers.get(name[: -len(_NCHWC)])
        if node is not None and node.op_type in _FUSED_INTO_CONV and node.inputs and node.inputs[0] is not None:
            source = node.inputs[0].producer()
            if source is not None and source.op_type in ("Conv", "ConvTranspose"):
                node = source
        out.append((node, kernel))
    return out


def node_times(kernels: Mapping[str, Kernel], model: ir.Model) -> tuple[dict[ir.Node, float], float]:
    """(µs per node of `model`, µs of kernels no node claims): `attribute`d kernel times summed."""
    out: dict[ir.Node, float] = {}
    unattributed = 0.0
    for node, kernel in attribute(kernels, model):
        if node is None:
            unattributed += kernel.us
        else:
            out[node] = out.get(node, 0.0) + kernel.us
    return out, unattributed


def integer_nodes(kernels: Mapping[str, Kernel], model: ir.Model) -> set[ir.Node]:
    """The nodes of `model` that some integer kernel of the profile comes from."""
    return {node for node, kernel in attribute(kernels, model) if node is not None and kernel.integer}


def part_of(node: ir.Node) -> str:
    """The kind of part a node is timed with: its op type; grouped convs apart from dense ones."""
    if node.op_type in ("Conv", "ConvTranspose"):
        group = node.attributes.get("group")
        if group is not None and group.as_int() > 1:
            return f"{node.op_type} (grouped)"
    return node.op_type


@dataclasses.dataclass
class SlowerPart:
    """Nodes of one kind whose int8 kernels the profile found slower than their float ones."""

    part: str
    nodes: list[ir.Node]
    float_us: float
    quantized_us: float

    @property
    def saving_us(self) -> float:
        return self.quantized_us - self.float_us


def slower_parts(float_us: Mapping[ir.Node, float], quantized_us: Mapping[ir.Node, float],
                 candidates: Sequence[ir.Node], total_us: float) -> list[SlowerPart]:
    """The kinds of parts worth a timed trial, the biggest predicted saving first.

    A node counts where both profiles claim it and its int8 time exceeds SLOWER_RATIO × its float
    time + SLOWER_MARGIN_US; a kind is returned where its nodes together would save MIN_SHARE of
    `total_us` and MIN_SAVING_US."""
    parts: dict[str, SlowerPart] = {}
    for node in candidates:
        f, q = float_us.get(node, 0.0), quantized_us.get(node, 0.0)
        if f <= 0 or q <= SLOWER_RATIO * f + SLOWER_MARGIN_US:
            continue
        part = parts.setdefault(part_of(node), SlowerPart(part_of(node), [], 0.0, 0.0))
        part.nodes.append(node)
        part.float_us += f
        part.quantized_us += q
    found = [p for p in parts.values() if p.saving_us >= max(MIN_SHARE * total_us, MIN_SAVING_US)]
    return sorted(found, key=lambda p: -p.saving_us)


def choose_float_parts(
    parts: Sequence[SlowerPart],
    keep_float: Mapping[ir.Node, str],
    build: Callable[[Mapping[ir.Node, str]], ir.Model],
    timer: Callable[[ir.Model, ir.Model], float],
    fidelity: Callable[[ir.Model], float],
    *,
    runs_float: Callable[[ir.Model, Sequence[ir.Node]], bool] | None = None,
    widen: Callable[[Sequence[ir.Node]], list[ir.Node]] | None = None,
    max_trials: int = 4,
    min_gain: float = 0.02,
    max_loss_db: float = 0.5,
    max_growth: float = 0.05,
) -> tuple[dict[ir.Node, str], list[dict[str, Any]]]:
    """Greedy, measured: each part (biggest predicted saving first) stays float only where the model
    with it float runs at least `min_gain` faster than without (`timer(current, trial)`; one
    timing is good to a few %, and a smaller gain is not worth a float island), loses at most
    `max_loss_db` of output SQNR (`fidelity`), and the parts kept float together add at most
    `max_growth` to the quantized model's weight bytes (float weights are 4× their int8 size: a
    quantizer's output must stay small). `build(keep_float)` quantizes a clone; `runs_float(trial,
    nodes)` says whether the runtime really runs the nodes in float there (ORT fuses a DQ -> op -> Q
    between quantized neighbours back into the integer kernel: such a part is not timed, unless
    `widen(nodes)` names more nodes — those that keep the part's input tensors float too — and
    with them float the part does run in float; then the wider part is the trial).

    Returns the nodes kept float for speed (reason SLOWER) and one record per trial."""
    chosen: dict[ir.Node, str] = {}
    records: list[dict[str, Any]] = []
    current = build(keep_float)
    current_db = fidelity(current)
    size_limit = weight_bytes(current) * (1.0 + max_growth)
    for part in list(parts)[:max_trials]:
        record: dict[str, Any] = {"part": part.part, "nodes": len(part.nodes), "kept_float": False}
        records.append(record)
        nodes = [n for n in part.nodes if n not in keep_float]
        trial = build({**keep_float, **chosen, **{n: SLOWER for n in nodes}})
        if runs_float is not None and weight_bytes(trial) <= size_limit and not runs_float(trial, part.nodes):
            extra = [n for n in (widen(part.nodes) if widen is not None else []) if n not in keep_float and n not in nodes]
            if not extra:
                record["fused_back"] = True
                continue
            nodes += extra
            trial = build({**keep_float, **chosen, **{n: SLOWER for n in nodes}})
            record["widened"] = len(extra)
            if weight_bytes(trial) <= size_limit and not runs_float(trial, part.nodes):
                record["fused_back"] = True
                continue
        if weight_bytes(trial) > size_limit:
            record["too_big"] = round(weight_bytes(trial) / max(weight_bytes(current), 1), 3)
            continue
        ratio, db = timer(current, trial), fidelity(trial)
        if ratio < 1.0 - min_gain and db >= current_db - max_loss_db:
            ratio = max(ratio, timer(current, trial))  # a gain must show twice: one timing is good to a few %
        kept = ratio < 1.0 - min_gain and db >= current_db - max_loss_db
        record.update({"profile_us": [round(part.float_us, 1), round(part.quantized_us, 1)], "ratio": round(ratio, 4),
                       "sqnr_db": round(db, 2), "kept_float": kept})
        if kept:
            chosen.update({n: SLOWER for n in nodes})
            current, current_db = trial, db
    return chosen, records
