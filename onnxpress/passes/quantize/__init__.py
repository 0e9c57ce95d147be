"""Quantization: streaming calibration, QDQ placement and insertion, weight-only and fp16 passes.

`calibration` measures ranges; `placement` decides where Q/DQ go from the backend's capabilities;
`qdq` (the `quantize-qdq` pass) inserts them; `quant_math` holds the scale / zero-point arithmetic
every quantization pass shares. `quantize_fragment` is the pipeline text behind `--quantize`.
"""

from onnxpress.passes.quantize.calibration import METHODS, TensorRange, calibrate
from onnxpress.passes.quantize.dynamic import QuantizeDynamicPass
from onnxpress.passes.quantize.fp16 import ConvertFp16Pass
from onnxpress.passes.quantize.qdq import QuantizeQdqPass
from onnxpress.passes.quantize.weights import QuantizeWeightsPass

__all__ = [
    "METHODS",
    "ConvertFp16Pass",
    "QuantizeDynamicPass",
    "QuantizeQdqPass",
    "QuantizeWeightsPass",
    "TensorRange",
    "calibrate",
    "quantize_fragment",
]

#: `--quantize KIND` -> pipeline text (CPU defaults for int8: uint8 asymmetric activations,
#: int8 symmetric per-channel weights, int32 bias).
_FRAGMENTS = {
    "int8": "quantize-qdq{activations=uint8 weights=int8 per-channel=true}",
    "int4": "quantize-weights{bits=4 block-size=32}",
    "fp16": "convert-fp16",
    "dynamic": "quantize-dynamic",
}


def quantize_fragment(kind: str, data: bool) -> str:
    """Pipeline text for `--quantize KIND`.

    `data` says whether calibration data was given; the text does not depend on it (static int8
    on random feeds still runs: the CLI warns loudly in the summary), it is here so the caller
    need not special-case kinds.
    """
    try:
        return _FRAGMENTS[kind]
    except KeyError:
        raise ValueError(f"--quantize takes one of {', '.join(_FRAGMENTS)}, got {kind!r}") from None
