"""docs/targets.md's generated part: one capability table per built-in target, from the data itself.

`python -m onnxpress.backends._docs` prints it; tests/backends/test_docs.py checks that the file
holds exactly this between its markers, so the documentation cannot drift from the capabilities.
"""

from __future__ import annotations

from onnxpress.backends.base import BUILTIN_TARGETS, get_backend

__all__ = ["BEGIN", "END", "targets_markdown"]

BEGIN = "<!-- BEGIN GENERATED: python -m onnxpress.backends._docs -->"
END = "<!-- END GENERATED -->"


def _set(values: frozenset[str]) -> str:
    return ", ".join(f"`{v}`" for v in sorted(values)) if values else "none"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def target_markdown(name: str) -> str:
    backend = get_backend(name)
    caps = backend.capabilities
    lo, hi = caps.opset_range
    rows = [
        ("providers (preferred first)", ", ".join(f"`{p}`" for p in caps.providers)),
        ("ops fused in QDQ form", _set(caps.qdq_ops)),
        ("QDQ activation dtypes", _set(caps.activation_dtypes)),
        ("QDQ weight dtypes", _set(caps.weight_dtypes) + (" (per channel)" if caps.per_channel_weights and caps.weight_dtypes else "")),
        ("symmetric activations only (zero point 0)", _yes(caps.symmetric_activations_only)),
        ("bias left float", _yes(caps.float_bias)),
        ("Q/DQ on op outputs", _yes(caps.output_qdq) if caps.qdq_ops else "-"),
        ("16-bit activations", _yes(caps.sixteen_bit_activations)),
        ("whole graph quantized", _yes(caps.whole_graph_quantized)),
        ("static shapes required", _yes(caps.static_shapes_required)),
        ("static shapes preferred (faster)", _yes(caps.static_shapes_preferred or caps.static_shapes_required)),
        ("opset range", f"{lo}-{hi}"),
        ("fp16 preferred", _yes(caps.prefers_fp16)),
        ("ops it lacks (not exhaustive)", _set(caps.missing_ops)),
        ("provider options", ", ".join(f"`{k}={v}`" for k, v in caps.provider_options) or "none"),
    ]
    lines = [f"### `{name}`", "", "| capability | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "| `--quantize` | pipeline fragment |", "|---|---|"]
    for kind in ("int8", "int16", "int4", "fp16", "dynamic"):
        if kind in backend.quantize_fragments:
            lines.append(f"| {kind} | `{backend.quantize_fragments[kind]}` |")
        elif kind in backend.quantize_refusals:
            lines.append(f"| {kind} | refused: {backend.quantize_refusals[kind]} |")
    lines += ["", f"Default pipeline around `-O2`: prelude `{backend.prelude() or '(none)'}`, "
                  f"tail `{backend.tail() or '(none)'}`.", ""]
    return "\n".join(lines)


def targets_markdown() -> str:
    body = "\n".join(target_markdown(name) for name in BUILTIN_TARGETS)
    return f"{BEGIN}\n\n{body}\n{END}"


if __name__ == "__main__":
    import sys

    sys.stdout.write(targets_markdown() + "\n")
