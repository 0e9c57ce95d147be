"""Linear layers as `Y = X W + b`: the view the least-squares refits and OBS scoring work on.

`RefitLayer` presents a Conv (group 1, im2col rows: `conv_rows`), a ConvTranspose whose kernel
equals its stride (one output block per input pixel), a Gemm or a MatMul (with the constant of
the Add that follows it as its bias) as an effective weight matrix and bias, turns a feed's input
and output tensors into matching rows, and writes a refitted weight back as new tensors.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx_ir as ir

__all__ = ["RefitLayer", "assign_tensor", "bias_add", "conv_rows", "is_constant", "only_user", "subsample",
           "unsupported_transpose"]


# ----------------------------------------------------------------------------------------------
# Conv as a matrix product
# ----------------------------------------------------------------------------------------------
def _conv_geometry(node: ir.Node, in_spatial: tuple[int, ...], out_spatial: tuple[int, ...],
                   kernel: tuple[int, ...]) -> tuple[list[int], list[int], list[int]]:
    """(strides, dilations, pads [begin..., end...]) with auto_pad resolved."""
    nd = len(kernel)

    def ints(name: str, default: list[int]) -> list[int]:
        attr = node.attributes.get(name)
        return list(attr.value) if attr is not None else default

    strides = ints("strides", [1] * nd)
    dilations = ints("dilations", [1] * nd)
    pads = ints("pads", [0] * (2 * nd))
    auto_pad = node.attributes.get("auto_pad")
    mode = auto_pad.value if auto_pad is not None else "NOTSET"
    if mode == "VALID":
        pads = [0] * (2 * nd)
    elif mode in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * nd)
        for i in range(nd):
            total = max(0, (out_spatial[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_spatial[i])
            small, large = total // 2, total - total // 2
            pads[i], pads[i + nd] = (small, large) if mode == "SAME_UPPER" else (large, small)
    return strides, dilations, pads


def conv_rows(x: np.ndarray, node: ir.Node, kernel: tuple[int, ...], out_spatial: tuple[int, ...],
              positions: np.ndarray) -> np.ndarray:
    """im2col of `x` [B, C, *spatial] at the given flat output positions (over [B, *out_spatial]).

    Row r holds the input patch of output position `positions[r]`, ordered (C, *kernel) like a
    Conv weight `W.reshape(O, -1)`: `conv_rows(...) @ W.reshape(O, -1).T + B` is the Conv output
    at those positions (group=1).
    """
    nd = len(kernel)
    strides, dilations, pads = _conv_geometry(node, tuple(x.shape[2:]), out_spatial, kernel)
    padded = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)])
    coords = np.unravel_index(positions, (x.shape[0], *out_spatial))
    p, c = len(positions), x.shape[1]
    index = [coords[0].reshape(p, 1, *[1] * nd), np.arange(c).reshape(1, c, *[1] * nd)]
    for i in range(nd):
        taps = coords[1 + i][:, None] * strides[i] + np.arange(kernel[i])[None, :] * dilations[i]
        shape = [p, 1] + [1] * nd
        shape[2 + i] = kernel[i]
        index.append(taps.reshape(shape))
    return padded[tuple(index)].reshape(p, -1)


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RefitLayer:
    """A consumer layer as `Y = X W_eff + b_eff`, and how to write a refit back.

    A ConvTranspose whose kernel equals its stride (no padding, no dilation) maps every input pixel
    to its own s×s output block: one row per input pixel, one column per (output channel, offset
    in the block) (`phases` columns per channel), and one bias per channel shared by its columns.
    """

    node: ir.Node
    weight: ir.Value
    bias: ir.Value | None  # Conv B, Gemm C, or the constant of the Add after a MatMul
    kept_out: np.ndarray | None = None  # original output channels still there (None: all)
    alpha: float = 1.0  # Gemm: W_eff = alpha·B', b_eff = beta·C
    beta: float = 1.0

    @property
    def op(self) -> str:
        return self.node.op_type

    @property
    def name(self) -> str:
        return self.node.name or self.node.outputs[0].name

    @property
    def weight_in_axis(self) -> int:
        """The weight axis that holds the input channels."""
        if self.op == "Conv":
            return 1
        return int(bool(self._attr("transB", 0))) if self.op == "Gemm" else 0  # ConvTranspose: [C_in, C_out, *k]

    @property
    def taps(self) -> int:
        """Rows of the effective weight per input channel (the kernel size of a Conv)."""
        shape = self.weight.const_value.shape
        return int(np.prod(shape[2:], dtype=np.int64)) if self.op == "Conv" else 1

    @property
    def phases(self) -> int:
        """Columns of the effective weight per output channel (the block size of a ConvTranspose)."""
        shape = self.weight.const_value.shape
        return int(np.prod(shape[2:], dtype=np.int64)) if self.op == "ConvTranspose" else 1

    def input_axis(self, ndim: int) -> int:
        """The axis of the layer's input tensor (of rank `ndim`) that holds the channels."""
        if self.op in ("Conv", "ConvTranspose"):
            return 1
        if self.op == "Gemm":
            return 0 if self._attr("transA", 0) else 1
        return ndim - 1

    def _attr(self, name: str, default: Any) -> Any:
        a = self.node.attributes.get(name)
        return default if a is None else a.value

    def effective(self) -> tuple[np.ndarray, np.ndarray | None]:
        w = np.asarray(self.weight.const_value.numpy(), dtype=np.float64)
        if self.op == "Conv":
            w_eff = w.reshape(w.shape[0], -1).T
        elif self.op == "ConvTranspose":
            w_eff = w.reshape(w.shape[0], -1)
        elif self.op == "Gemm":
            w_eff = self.alpha * (w.T if self._attr("transB", 0) else w)
        else:
            w_eff = w
        if self.bias is None:
            return w_eff, None
        if self.op == "MatMul":  # the refit adds a correction to the Add's constant
            return w_eff, np.zeros(w_eff.shape[1])
        b = np.asarray(self.bias.const_value.numpy(), dtype=np.float64).reshape(-1)
        return w_eff, (self.beta * b if self.op == "Gemm" else np.repeat(b, self.phases))

    def rows(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, cap: int) -> tuple[np.ndarray, np.ndarray]:
        """Matching (input rows, target rows) of one feed, at most `cap` of them."""
        if self.op == "Conv":
            kernel = tuple(self.weight.const_value.shape[2:])
            out_spatial = tuple(y.shape[2:])
            total = y.shape[0] * int(np.prod(out_spatial, dtype=np.int64))
            positions = subsample(total, cap, rng)
            targets = np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])[positions]
            return conv_rows(x, self.node, kernel, out_spatial, positions), self._kept(targets)
        if self.op == "ConvTranspose":  # y[b, o, s·i + a] = Σ_c x[b, c, i] W[c, o, a] + B[o]
            block = tuple(self.weight.const_value.shape[2:])
            nd, spatial = len(block), x.shape[2:]
            split = [y.shape[0], y.shape[1]] + [n for i in range(nd) for n in (spatial[i], block[i])]
            order = [0] + [2 + 2 * i for i in range(nd)] + [1] + [3 + 2 * i for i in range(nd)]
            targets = y.reshape(split).transpose(order).reshape(-1, y.shape[1] * self.phases)
            x = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
            positions = subsample(x.shape[0], cap, rng)
            return x[positions], self._kept(targets[positions])
        if self.op == "Gemm" and self._attr("transA", 0):
            x = x.T
        x = x.reshape(-1, x.shape[-1])
        y = y.reshape(-1, y.shape[-1])
        positions = subsample(x.shape[0], cap, rng)
        return x[positions], self._kept(y[positions])

    def _kept(self, targets: np.ndarray) -> np.ndarray:
        """The teacher's columns of the output channels this layer still has."""
        if self.kept_out is None:
            return targets
        columns = (self.kept_out[:, None] * self.phases + np.arange(self.phases)[None, :]).reshape(-1)
        return targets[:, columns]

    def write(self, w_eff: np.ndarray, b_eff: np.ndarray | None) -> None:
        old = self.weight.const_value
        if self.op == "Conv":
            new = w_eff.T.reshape(old.shape)
        elif self.op == "ConvTranspose":
            new = w_eff.reshape(old.shape)
        elif self.op == "Gemm":
            new = w_eff / self.alpha
            new = new.T if self._attr("transB", 0) else new
        else:
            new = w_eff
        assign_tensor(self.weight, new)
        if self.bias is None or b_eff is None:
            return
        shape = tuple(self.bias.const_value.shape)
        if self.op == "MatMul":
            base = np.asarray(self.bias.const_value.numpy(), dtype=np.float64)
            assign_tensor(self.bias, base + b_eff.reshape(shape))
        elif self.op == "Gemm":
            assign_tensor(self.bias, (b_eff / self.beta).reshape(shape))
        elif self.op == "ConvTranspose":  # the fit shares one bias per channel (equal columns)
            assign_tensor(self.bias, b_eff.reshape(-1, self.phases).mean(axis=1).reshape(shape))
        else:
            assign_tensor(self.bias, b_eff.reshape(shape))


def subsample(total: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    if total <= cap:
        return np.arange(total)
    return np.sort(rng.choice(total, size=cap, replace=False))


def assign_tensor(value: ir.Value, array: np.ndarray) -> None:
    """Give `value` a new tensor (never write into the old buffer), same dtype and shape."""
    dtype = value.const_value.numpy().dtype
    value.const_value = ir.tensor(np.ascontiguousarray(array.astype(dtype)), name=value.name)


def only_user(value: ir.Value | None, node: ir.Node) -> bool:
    return value is not None and not value.is_graph_output() and all(u.node is node for u in value.uses())


def is_constant(value: ir.Value | None, graph: ir.Graph) -> bool:
    return (value is not None and value.const_value is not None and value.name in graph.initializers
            and value not in graph.inputs)


def unsupported_transpose(node: ir.Node, kernel: tuple[int, ...]) -> str | None:
    """Why a ConvTranspose is not one output block per input pixel (None when it is)."""
    def ints(name: str, default: int) -> list[int]:
        attr = node.attributes.get(name)
        return list(attr.value) if attr is not None else [default] * len(kernel)

    auto_pad = node.attributes.get("auto_pad")
    if auto_pad is not None and auto_pad.value not in ("NOTSET", "VALID"):
        return f"ConvTranspose auto_pad={auto_pad.value}"
    if "output_shape" in node.attributes:
        return "ConvTranspose with output_shape"
    if ints("strides", 1) != list(kernel) or any(ints("pads", 0)) or any(d != 1 for d in ints("dilations", 1)) \
            or any(ints("output_padding", 0)):
        return "ConvTranspose kernel differs from its stride (overlapping or padded blocks)"
    return None


def bias_add(node: ir.Node, graph: ir.Graph, n_out: int) -> ir.Value | None:
    """The per-feature constant of an Add that alone consumes a MatMul's output, if any."""
    out = node.outputs[0]
    uses = list(out.uses())
    if out.is_graph_output() or len(uses) != 1 or uses[0].node.op_type != "Add":
        return None
    add = uses[0].node
    other = add.inputs[1 - uses[0].idx] if len(add.inputs) == 2 else None
    if not is_constant(other, graph) or not only_user(other, add):
        return None
    shape = tuple(other.const_value.shape)
    if int(np.prod(shape, dtype=np.int64)) != n_out or (shape and shape[-1] != n_out):
        return None
    return other
