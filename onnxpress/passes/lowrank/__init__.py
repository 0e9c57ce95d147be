"""Low-rank and tensor-network decomposition passes: SVD, Tucker-2, CP, tensor-train (MPO).

The factorisations themselves live in `math` (numpy, no ONNX); the passes find the
layers, pick ranks, apply the cost gate, and emit standard ONNX ops.
"""

from onnxpress.passes.lowrank._fragment import lowrank_fragment
from onnxpress.passes.lowrank.cp import LowRankCpPass
from onnxpress.passes.lowrank.svd import LowRankSvdPass
from onnxpress.passes.lowrank.tt import LowRankTtPass
from onnxpress.passes.lowrank.tucker import LowRankTuckerPass

__all__ = ["LowRankCpPass", "LowRankSvdPass", "LowRankTtPass", "LowRankTuckerPass", "lowrank_fragment"]
