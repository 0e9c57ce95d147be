"""The result of one onnxpress run, for machines (JSON) and for people (a terminal summary).

A `Report` holds what went in and came out (paths, pipeline text), a summary of the model before
and after (nodes, params, parameter bytes, file size, MACs from the cost model), one record per
pass execution (time, whether it changed the model, its stats), the fidelity of each output against
the original model when it was measured, the verification mode, diagnostics, total time and the
onnxpress version. `to_json` writes it atomically; `render` prints it with rich, readable at
100 columns.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import onnx_ir as ir

from onnxpress.passes.fidelity import OutputFidelity

__all__ = ["Report", "summarize_model", "onnxpress_version"]

logger = logging.getLogger(__name__)

#: bumped when a key changes meaning or disappears
SCHEMA_VERSION = 1


def onnxpress_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnxpress")
    except PackageNotFoundError:
        import onnxpress

        return str(getattr(onnxpress, "__version__", "unknown"))


def summarize_model(model: ir.Model, path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Nodes, params, parameter bytes, MACs (and whether they are exact), file size when saved."""
    from onnxpress.ir.cost import model_cost
    from onnxpress.ir.io import file_size

    cost = model_cost(model)
    return {
        "nodes": int(cost.nodes),
        "params": int(cost.params),
        "param_bytes": int(cost.param_bytes),
        "macs": int(cost.macs),
        "macs_exact": bool(cost.exact),
        "file_size": file_size(path) if path is not None and os.path.exists(path) else None,
    }


def _pass_dict(record: Any) -> dict[str, Any]:
    if isinstance(record, Mapping):
        return dict(record)
    return {
        "name": record.name,
        "text": record.text,
        "seconds": float(record.seconds),
        "modified": bool(record.modified),
        "skipped": bool(getattr(record, "skipped", False)),
        "stats": dict(record.stats),
    }


@dataclasses.dataclass
class Report:
    """One run. `passes` accepts PassRecords (converted to dicts) or dicts."""

    input_path: str | None
    output_path: str | None
    pipeline: str
    before: dict[str, Any]
    after: dict[str, Any]
    passes: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    fidelity: dict[str, OutputFidelity] | None = None
    verify: str = "none"  # the verification mode: none, structure, numeric
    diagnostics: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0  # the whole run
    target: str | None = None  # the backend / execution provider the model was optimized for
    data: str | None = None  # FeedSource.describe() of the input data, when there was any
    version: str = dataclasses.field(default_factory=onnxpress_version)
    #: which provider ran each node in a real session on the target EP (backends/placement.py):
    #: {"checked": True, "target_provider", "nodes": [...], "by_provider", "op_types", "fallback"}
    #: or {"checked": False, "reason"}; None when no check was asked for
    placement: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.passes = [_pass_dict(r) for r in self.passes]
        if self.input_path is not None:
            self.input_path = os.fspath(self.input_path)
        if self.output_path is not None:
            self.output_path = os.fspath(self.output_path)

    # -- machines ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: non-finite floats become the strings "inf", "-inf" and "nan"."""
        data = {
            "schema": SCHEMA_VERSION,
            "version": self.version,
            "input_path": self.input_path,
            "output_path": self.output_path,
            "pipeline": self.pipeline,
            "before": dict(self.before),
            "after": dict(self.after),
            "passes": [dict(p) for p in self.passes],
            "fidelity": None if self.fidelity is None else {k: v.to_dict() for k, v in self.fidelity.items()},
            "target": self.target,
            "data": self.data,
            "verify": self.verify,
            "diagnostics": list(self.diagnostics),
            "seconds": self.seconds,
            "placement": None if self.placement is None else dict(self.placement),
        }
        return _json_safe(data)

    def to_json(self, path: str | os.PathLike) -> None:
        """Write `to_dict()` to `path` atomically (a temporary file in the same folder, then rename)."""
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".json.tmp", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.to_dict(), f, indent=2, allow_nan=False)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        logger.info("wrote report %s", path)

    # -- people -----------------------------------------------------------------------------------
    def render(self, console: Any, *, show_timing: bool = True, per_execution: bool = False) -> None:
        """Print the summary, per-pass and fidelity tables on a `rich.console.Console`.

        Passes are aggregated by name (runs, total time, how many runs changed the model, summed
        counters); `per_execution=True` lists every execution instead. `show_timing=False` leaves
        times out, for output that must not change between runs.
        """
        from rich.table import Table

        console.print(f"{self.input_path or 'model'} -> {self.output_path or '(not saved)'}", highlight=False)
        summary = Table(expand=False)
        summary.add_column("")
        summary.add_column("before", justify="right")
        summary.add_column("after", justify="right")
        summary.add_column("after/before", justify="right")
        rows = [
            ("nodes", "nodes", _count),
            ("params", "params", _si),
            ("param bytes", "param_bytes", _bytes),
            ("file size", "file_size", _bytes),
            ("MACs", "macs", _si),
        ]
        for label, key, fmt in rows:
            b, a = self.before.get(key), self.after.get(key)
            if b is None and a is None:
                continue
            if key == "macs" and not (self.before.get("macs_exact", True) and self.after.get("macs_exact", True)):
                label += " (approx.)"
            summary.add_row(label, fmt(b), fmt(a), _ratio(b, a))
        console.print(summary)

        if self.passes:
            title = f"passes ({_seconds(self.seconds)} in all)" if show_timing else "passes"
            table = Table(title=title, title_justify="left")
            table.add_column("#" if per_execution else "runs", justify="right")
            table.add_column("pass", overflow="fold", max_width=36)
            if show_timing:
                table.add_column("time", justify="right")
            table.add_column("changed", justify="center")
            table.add_column("stats", overflow="fold", max_width=40)
            rows = list(enumerate(self.passes)) if per_execution else [
                (p["runs"], p) for p in aggregate_passes(self.passes)
            ]
            for first, p in rows:
                if per_execution:
                    changed = "skipped" if p.get("skipped") else ("yes" if p.get("modified") else "-")
                else:
                    changed = f"{p['changed']}/{p['runs']}" if p["changed"] else "-"
                stats = " ".join(f"{k}={_short(v)}" for k, v in (p.get("stats") or {}).items())
                timing = [_seconds(p.get("seconds", 0.0))] if show_timing else []
                table.add_row(str(first), p.get("text") or p.get("name", "?"), *timing, changed, stats)
            console.print(table)

        if self.fidelity:
            table = Table(title="fidelity against the input model", title_justify="left")
            table.add_column("output", overflow="fold", max_width=30)
            table.add_column("max abs err", justify="right")
            table.add_column("mean abs err", justify="right")
            table.add_column("cosine", justify="right")
            table.add_column("SQNR dB", justify="right")
            table.add_column("top-1", justify="right")
            for name, fid in self.fidelity.items():
                top1 = "-" if fid.top1_agreement is None else f"{100 * fid.top1_agreement:.1f}%"
                if fid.exact_match is not None:
                    top1 = f"{100 * fid.exact_match:.1f}% equal"
                table.add_row(
                    name + (f" ({fid.note})" if fid.note else ""),
                    f"{fid.max_abs_error:.3g}",
                    f"{fid.mean_abs_error:.3g}",
                    f"{fid.cosine:.6f}" if math.isfinite(fid.cosine) else "-",
                    f"{fid.sqnr_db:.1f}" if math.isfinite(fid.sqnr_db) else ("inf" if fid.sqnr_db > 0 else "-inf"),
                    top1,
                )
            console.print(table)
        if self.placement is not None:
            _render_placement(console, self.placement)
        target = f"target: {self.target}   " if self.target else ""
        data = f"data: {self.data}   " if self.data else ""
        footer = f"{target}{data}verify: {self.verify}   onnxpress {self.version}"
        console.print(footer)
        from rich.markup import escape

        for line in self.diagnostics:
            if line.startswith("WARNING"):
                console.print(f"[bold red]{escape(line)}[/bold red]", markup=True, highlight=False)
            else:
                console.print(f"[yellow]note:[/yellow] {escape(line)}", markup=True, highlight=False)


def _render_placement(console: Any, placement: dict[str, Any]) -> None:
    """One line on where the nodes ran, and the ones that fell back off the target's provider."""
    target = placement.get("target_provider", "?")
    if not placement.get("checked"):
        console.print(f"placement on {target}: not checked ({placement.get('reason', 'unknown reason')})",
                      markup=False, highlight=False)
        return
    nodes = placement.get("nodes") or []
    fallback = placement.get("fallback") or []
    counts = ", ".join(f"{n} on {p}" for p, n in (placement.get("by_provider") or {}).items())
    partitions = placement.get("partitions") or []
    if partitions:  # an EP that compiles subgraphs shows one kernel per partition, not its nodes
        absorbed = placement.get("absorbed") or []
        console.print(f"placement: {len(partitions)} compiled {target} partition(s) holding {len(absorbed)} "
                      f"node(s); {len(nodes)} kernel(s) ran: {counts or 'none'}", markup=False, highlight=False)
    else:
        console.print(f"placement: {len(nodes)} node(s) ran: {counts or 'none'}", markup=False, highlight=False)
    if fallback:
        shown = ", ".join(fallback[:10]) + (f" and {len(fallback) - 10} more" if len(fallback) > 10 else "")
        console.print(f"fell back from {target}: {shown}", markup=False, highlight=False)


def aggregate_passes(passes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per pass name, in first-run order: runs, changed runs, total seconds, summed stats."""
    rows: dict[str, dict[str, Any]] = {}
    for p in passes:
        if p.get("skipped"):
            continue
        row = rows.setdefault(p["name"], {"name": p["name"], "text": p["name"], "runs": 0, "changed": 0,
                                          "seconds": 0.0, "stats": {}})
        row["runs"] += 1
        row["changed"] += bool(p.get("modified"))
        row["seconds"] += float(p.get("seconds", 0.0))
        for key, value in (p.get("stats") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row["stats"][key] = row["stats"].get(key, 0) + value
            else:
                row["stats"][key] = value
    return list(rows.values())


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars in pass stats
        return _json_safe(value.item())
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value >= 1 else f"{value * 1000:.1f} ms"


def _count(value: Any) -> str:
    return "-" if value is None else f"{int(value):,}"


def _si(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f}"


def _bytes(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} B"


def _ratio(before: Any, after: Any) -> str:
    if before is None or after is None:
        return "-"
    if before == 0:
        return "-" if after == 0 else "new"
    return f"{after / before:.3f}x"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 24 else text[:21] + "..."

