"""The `--quantize KIND` fragments and refusals the built-in GPU / NPU targets share."""

from __future__ import annotations

#: float16 with graph inputs and outputs kept float32 and fragile ops (norms, Softmax, Exp, ...)
#: kept float32 (convert-fp16's defaults: keep-io=true fragile=true).
FP16 = "convert-fp16"
#: 4-bit blockwise weights as com.microsoft.MatMulNBits (CPU, CUDA and DML kernels exist).
INT4_MATMULNBITS = "quantize-weights{bits=4 block-size=32 format=matmulnbits}"

NO_INT8_ON_GPU = ("its kernels do not fuse Q/DQ into int8 compute, so a QDQ model runs slower than "
                  "float (onnxruntime#9115, #14439); use --quantize fp16, or --target tensorrt for int8")
NO_DYNAMIC = "dynamic quantization emits DynamicQuantizeLinear / MatMulInteger, which this EP has no fast kernels for"
NO_16BIT = "16-bit integer activations are a QNN HTP feature"
