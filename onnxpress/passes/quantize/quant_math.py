"""Scale / zero-point arithmetic shared by every quantization pass (numpy only, no ONNX).

The conventions, in one place so that all passes agree:

* Asymmetric: the range is first widened to contain 0 (so that 0, padding and ReLU's floor, is
  exact), then `scale = (max - min) / (qmax - qmin)` and `zero_point = round(qmin - min / scale)`.
* Symmetric: `zero_point` is the middle of the type (0 for int8/int16, 128 for uint8, 32768 for
  uint16) and `scale = max(|min|, |max|) / (qmax - zero_point)`, so signed types use the restricted
  range [-127, 127] that integer kernels prefer (no -128 · -128 overflow in pairwise sums).
* A zero (or denormal) range gets scale 1: every value quantizes to the zero point and back to 0.
* Rounding is half-to-even (`np.rint`), as ONNX QuantizeLinear specifies.

`quantize_array`, `compute_scale_zero_point` and `per_channel_scales` are the public API the
weight-only, dynamic and QDQ passes import.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

__all__ = [
    "QuantType",
    "compute_scale_zero_point",
    "dequantize_array",
    "per_channel_scales",
    "quant_type",
    "quantize_array",
]

#: Below this a scale is treated as zero (float32 denormals make kernels slow or wrong).
_MIN_SCALE = 1e-30


@dataclasses.dataclass(frozen=True)
class QuantType:
    """One integer type a tensor can be quantized to."""

    name: str
    numpy: type
    ir: ir.DataType
    qmin: int
    qmax: int

    @property
    def bits(self) -> int:
        return int(np.iinfo(self.numpy).bits)

    @property
    def signed(self) -> bool:
        return self.qmin < 0

    @property
    def symmetric_zero_point(self) -> int:
        return (self.qmin + self.qmax + 1) // 2


_TYPES = {
    t.name: t
    for t in (
        QuantType("uint8", np.uint8, ir.DataType.UINT8, 0, 255),
        QuantType("int8", np.int8, ir.DataType.INT8, -128, 127),
        QuantType("uint16", np.uint16, ir.DataType.UINT16, 0, 65535),
        QuantType("int16", np.int16, ir.DataType.INT16, -32768, 32767),
        QuantType("int32", np.int32, ir.DataType.INT32, -(2**31), 2**31 - 1),
    )
}


def quant_type(dtype: str | QuantType | type | np.dtype) -> QuantType:
    """The QuantType for a name ("int8"), a numpy dtype, or a QuantType."""
    if isinstance(dtype, QuantType):
        return dtype
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    try:
        return _TYPES[name]
    except KeyError:
        raise ValueError(f"unsupported quantization type {name!r}; one of {', '.join(_TYPES)}") from None


def compute_scale_zero_point(
    rmin: float | np.ndarray, rmax: float | np.ndarray, dtype: str | QuantType, symmetric: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(scale float32, zero_point of `dtype`) for the range [rmin, rmax]; scalars or arrays."""
    qt = quant_type(dtype)
    rmin = np.minimum(np.asarray(rmin, dtype=np.float64), 0.0)
    rmax = np.maximum(np.asarray(rmax, dtype=np.float64), 0.0)
    if not (np.all(np.isfinite(rmin)) and np.all(np.isfinite(rmax))):
        raise ValueError("cannot quantize a non-finite range")
    if symmetric:
        zero_point = np.full(rmin.shape, qt.symmetric_zero_point, dtype=np.float64)
        scale = np.maximum(-rmin, rmax) / float(qt.qmax - qt.symmetric_zero_point)
    else:
        scale = (rmax - rmin) / float(qt.qmax - qt.qmin)
    tiny = scale < _MIN_SCALE
    scale = np.where(tiny, 1.0, scale).astype(np.float32)
    if not symmetric:
        # Derive the zero point from the float32 scale actually stored, so that 0 stays exact.
        zero_point = np.where(tiny, qt.qmin, np.rint(qt.qmin - rmin / scale.astype(np.float64)))
    zero_point = np.clip(zero_point, qt.qmin, qt.qmax).astype(qt.numpy)
    return scale, zero_point


def _along(values: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    """Reshape per-channel `values` to broadcast along `axis` of an `ndim`-d array."""
    values = np.asarray(values)
    if axis is None or values.ndim == 0:
        return values
    shape = [1] * ndim
    shape[axis] = values.size
    return values.reshape(shape)


def quantize_array(
    x: np.ndarray,
    scale: float | np.ndarray,
    zero_point: int | np.ndarray,
    dtype: str | QuantType,
    axis: int | None = None,
) -> np.ndarray:
    """ONNX QuantizeLinear in numpy: saturate(rint(x / scale) + zero_point); per-channel on `axis`."""
    qt = quant_type(dtype)
    x = np.asarray(x, dtype=np.float32)
    s = _along(np.asarray(scale, dtype=np.float32), x.ndim, axis)
    z = _along(np.asarray(zero_point).astype(np.int64), x.ndim, axis)
    q = np.rint(x / s).astype(np.int64) + z
    return np.clip(q, qt.qmin, qt.qmax).astype(qt.numpy)


def dequantize_array(
    q: np.ndarray, scale: float | np.ndarray, zero_point: int | np.ndarray, axis: int | None = None
) -> np.ndarray:
    """ONNX DequantizeLinear in numpy."""
    q = np.asarray(q)
    s = _along(np.asarray(scale, dtype=np.float32), q.ndim, axis)
    z = _along(np.asarray(zero_point).astype(np.int64), q.ndim, axis)
    return ((q.astype(np.int64) - z).astype(np.float32) * s).astype(np.float32)


def per_channel_scales(
    w: np.ndarray, axis: int, dtype: str | QuantType, symmetric: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(scale[C], zero_point[C]) of weight `w` with one channel per index of `axis`."""
    w = np.asarray(w, dtype=np.float32)
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    if moved.shape[1] == 0:
        lo = hi = np.zeros(w.shape[axis], dtype=np.float32)
    else:
        lo, hi = moved.min(axis=1), moved.max(axis=1)
    return compute_scale_zero_point(lo, hi, dtype, symmetric)
