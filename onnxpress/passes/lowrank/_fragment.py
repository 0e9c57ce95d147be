"""The pipeline text behind the CLI shorthand `--lowrank RATIO`."""

from __future__ import annotations

__all__ = ["lowrank_fragment"]


def lowrank_fragment(ratio: float, data: bool) -> str:
    """Pipeline text removing about `ratio` of the parameters of the layers it decomposes.

    SVD for MatMul / Gemm (data-aware when calibration data is given), Tucker-2 for convs with
    ranks chosen by the kernel's spectra (and each chain refitted on the data when given), ranks
    rounded to multiples of 8; layers where that does not pay are left alone by the cost gate.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"--lowrank takes a fraction of parameters to remove in (0, 1), got {ratio}")
    keep = f"{1.0 - ratio:.6g}"
    aware, refit = (" data-aware=true", " refit=true") if data else ("", "")
    return (f"lowrank-svd{{rank-ratio={keep}{aware} align=8}},"
            f"lowrank-tucker{{rank-ratio={keep} align=8{refit}}}")
