"""How far a candidate model's outputs are from a reference's: the numbers behind fidelity checks.

`compare_outputs(reference, candidate)` aggregates, per output name and over all samples, the max
and mean absolute error, the cosine similarity and the SQNR of the flattened outputs, the top-1
agreement for outputs that look like class scores (float, last dim > 1), and for non-float outputs
the fraction of elements that are exactly equal. `within_tolerance` applies a pass's `Tolerance`
and names the worst output. Statistics are accumulated sample by sample in float64, so long runs
never hold all outputs at once.

Non-finite values: a position where both sides hold the same non-finite value (NaN and NaN, or the
same infinity) counts as equal; any other position with a non-finite value on either side is a
mismatch, which makes the absolute errors infinite and fails every tolerance. Cosine and SQNR are
computed over the positions finite on both sides.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from onnxpress.passes.base import Tolerance

__all__ = ["OutputFidelity", "compare_outputs", "within_tolerance"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class OutputFidelity:
    """One output's agreement with the reference, over all samples.

    `exact_match` (fraction of exactly equal elements) is set for non-float outputs only;
    `note` says why the numbers are meaningless (a missing output, a changed shape).
    """

    name: str
    max_abs_error: float
    mean_abs_error: float
    cosine: float
    sqnr_db: float
    top1_agreement: float | None
    exact_match: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_float(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating) or "float" in array.dtype.name


class _Accumulator:
    """Streaming sums for one output; `add` one sample at a time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self.abs_sum = 0.0
        self.abs_max = 0.0
        self.nonfinite_mismatch = 0
        self.dot = 0.0
        self.ref_sq = 0.0
        self.got_sq = 0.0
        self.noise_sq = 0.0
        self.equal = 0
        self.is_float = True
        self.top1_rows = 0
        self.top1_same = 0
        self.note = ""
        # the tolerance check: the worst |got - ref| / (atol + rtol |ref|) and where it happened
        self.excess = 0.0
        self.excess_abs = 0.0

    def fail(self, note: str) -> None:
        if not self.note:
            self.note = note

    def add(self, ref: Any, got: Any, tol: Tolerance | None = None) -> None:
        if got is None:
            self.fail("missing in the candidate")
            return
        ref_arr, got_arr = np.asarray(ref), np.asarray(got)
        if ref_arr.shape != got_arr.shape:
            self.fail(f"shape {_shape(ref_arr)} became {_shape(got_arr)}")
            return
        self.is_float = self.is_float and _is_float(ref_arr)
        r = ref_arr.astype(np.float64, copy=False).ravel()
        g = got_arr.astype(np.float64, copy=False).ravel()
        self.count += r.size
        self.equal += int(np.count_nonzero((r == g) | (np.isnan(r) & np.isnan(g))))

        finite = np.isfinite(r) & np.isfinite(g)
        same_special = ~finite & ((r == g) | (np.isnan(r) & np.isnan(g)))
        self.nonfinite_mismatch += int(np.count_nonzero(~finite & ~same_special))
        rf, gf = r[finite], g[finite]
        diff = np.abs(gf - rf)
        if diff.size:
            self.abs_sum += float(diff.sum())
            self.abs_max = max(self.abs_max, float(diff.max()))
        self.dot += float(rf @ gf)
        self.ref_sq += float(rf @ rf)
        self.got_sq += float(gf @ gf)
        self.noise_sq += float(diff @ diff)

        if tol is not None and diff.size:
            bound = tol.atol + tol.rtol * np.abs(rf) + tol.scale_rtol * float(np.abs(rf).max())
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(diff == 0, 0.0, diff / bound)
            worst = int(np.argmax(ratio))
            if ratio[worst] > self.excess:
                self.excess = float(ratio[worst])
                self.excess_abs = float(diff[worst])

        if _is_float(ref_arr) and ref_arr.ndim >= 1 and ref_arr.shape[-1] > 1 and ref_arr.size:
            rows_ref = np.argmax(np.nan_to_num(ref_arr.reshape(-1, ref_arr.shape[-1]), nan=-np.inf), axis=-1)
            rows_got = np.argmax(np.nan_to_num(got_arr.reshape(-1, got_arr.shape[-1]), nan=-np.inf), axis=-1)
            self.top1_rows += rows_ref.size
            self.top1_same += int(np.count_nonzero(rows_ref == rows_got))

    def result(self) -> OutputFidelity:
        if self.note:
            return OutputFidelity(self.name, math.inf, math.inf, math.nan, -math.inf, None, None, self.note)
        mismatch = self.nonfinite_mismatch > 0
        finite_count = self.count - self.nonfinite_mismatch
        mean = math.inf if mismatch else (self.abs_sum / finite_count if finite_count else 0.0)
        return OutputFidelity(
            name=self.name,
            max_abs_error=math.inf if mismatch else self.abs_max,
            mean_abs_error=mean,
            cosine=_cosine(self.dot, self.ref_sq, self.got_sq),
            sqnr_db=_sqnr(self.ref_sq, self.noise_sq),
            top1_agreement=self.top1_same / self.top1_rows if self.top1_rows else None,
            exact_match=None if self.is_float else (self.equal / self.count if self.count else 1.0),
            note=f"{self.nonfinite_mismatch} non-finite value(s) differ" if mismatch else "",
        )


def _shape(array: np.ndarray) -> str:
    return "x".join(str(d) for d in array.shape) or "scalar"


def _cosine(dot: float, a: float, b: float) -> float:
    if a == 0.0 and b == 0.0:
        return 1.0
    if a == 0.0 or b == 0.0:
        return 0.0
    return max(-1.0, min(1.0, dot / (math.sqrt(a) * math.sqrt(b))))


def _sqnr(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _accumulate(
    reference: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    candidate: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    tol: Tolerance | None = None,
) -> dict[str, _Accumulator]:
    if isinstance(reference, Mapping):
        reference = [reference]
    if isinstance(candidate, Mapping):
        candidate = [candidate]
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference samples but {len(candidate)} candidate samples")
    stats: dict[str, _Accumulator] = {}
    for ref_sample, got_sample in zip(reference, candidate):
        for name, ref in ref_sample.items():
            stats.setdefault(name, _Accumulator(name)).add(ref, got_sample.get(name), tol)
    return stats


def compare_outputs(
    reference: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    candidate: Sequence[Mapping[str, Any]] | Mapping[str, Any],
) -> dict[str, OutputFidelity]:
    """Per reference output name: the candidate's fidelity, aggregated over all samples.

    Both arguments are lists of output dicts, one per sample (a single dict is one sample).
    Outputs only the candidate has are ignored.
    """
    return {name: acc.result() for name, acc in _accumulate(reference, candidate).items()}


def within_tolerance(
    reference: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    candidate: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    tol: Tolerance,
) -> tuple[bool, str]:
    """(ok, worst): whether every output is within `tol`, and a line about the worst output.

    An output passes when `|got - ref| <= atol + rtol * |ref|` everywhere or, when `tol.min_cosine`
    is set, when its cosine similarity reaches it. For non-float outputs `min_cosine` is read as the
    minimum fraction of exactly equal elements.
    """
    failures: list[tuple[float, str]] = []
    worst_ok: tuple[float, str] = (-1.0, "no outputs compared")
    bound = f"(rtol={tol.rtol:g}, atol={tol.atol:g}" + (f", scale_rtol={tol.scale_rtol:g})" if tol.scale_rtol else ")")
    for name, acc in _accumulate(reference, candidate, tol).items():
        fid = acc.result()
        if fid.note:
            failures.append((math.inf, f"output '{name}' {fid.note}"))
            continue
        error = f"max abs error {fid.max_abs_error:.3g}"
        if acc.excess <= 1.0:
            if acc.excess > worst_ok[0]:
                worst_ok = (acc.excess, f"output '{name}' {error} within tol {bound}")
            continue
        if tol.min_cosine is None:
            failures.append((acc.excess, f"output '{name}' {error} > tol {bound}"))
            continue
        score = fid.cosine if fid.exact_match is None else fid.exact_match
        label = "cosine" if fid.exact_match is None else "exact-match rate"
        if score >= tol.min_cosine:
            if acc.excess > worst_ok[0]:
                worst_ok = (acc.excess, f"output '{name}' {label} {score:.6f} >= {tol.min_cosine:g} ({error})")
        else:
            failures.append((acc.excess, f"output '{name}' {label} {score:.6f} < {tol.min_cosine:g} ({error})"))
    if failures:
        failures.sort(key=lambda item: item[0], reverse=True)
        return False, failures[0][1]
    return True, worst_ok[1]
