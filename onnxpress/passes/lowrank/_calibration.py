"""Input Gram matrices XᵀX of linear layers, collected in waves on the model being compressed.

Data-aware SVD fits each layer to the inputs it will really see: those of the model whose earlier
layers are already decomposed (sequential, closed-loop fitting as in GPTQ / SVD-LLM). Running the
model once per layer would be slow, so layers go in waves: `ready` picks the pending layers that no
other pending layer feeds, directly or not (Q, K and V of one attention block, say, go together);
`input_grams` captures their inputs in one streamed run and reduces them to Grams with pruning's
`GramAccumulator`, so memory stays at K² numbers per layer whatever the number of tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.lowrank._layers import LinearLayer
from onnxpress.passes.pruning.calibration import GramAccumulator, iter_values

__all__ = ["input_grams", "ready"]

logger = logging.getLogger(__name__)


def ready(graph: ir.Graph, pending: Sequence[LinearLayer]) -> list[LinearLayer]:
    """The pending layers whose input depends on no other pending layer."""
    pending_nodes = {id(layer.node) for layer in pending}
    upstream: dict[int, bool] = {}  # id(node) -> some pending layer is it or feeds it
    for node in graph:  # graphs are kept in topological order
        upstream[id(node)] = id(node) in pending_nodes or any(
            v is not None and v.producer() is not None and upstream.get(id(v.producer()), False)
            for v in node.inputs
        )
    out = []
    for layer in pending:
        producer = layer.x.producer()
        if producer is None or not upstream.get(id(producer), False):
            out.append(layer)
    return out or list(pending[:1])  # a cycle cannot happen; never stall


def _key(layer: LinearLayer) -> tuple[str, bool]:
    return (layer.x.name or "", layer.trans_a)


def input_grams(model: ir.Model, layers: Sequence[LinearLayer], runner: Any,
                feeds: Sequence[Mapping[str, Any]]) -> dict[int, np.ndarray]:
    """{id(layer.node): XᵀX [K, K] in float64} for every layer whose input could be captured."""
    wanted: dict[tuple[str, bool], LinearLayer] = {}
    for layer in layers:
        if layer.x.name:
            wanted.setdefault(_key(layer), layer)
        else:
            logger.debug("input of '%s' has no name to capture; plain SVD", layer.node.name)
    if not wanted:
        return {}
    sums = {key: GramAccumulator(layer.shape[0], 0) for key, layer in wanted.items()}
    names = list(dict.fromkeys(key[0] for key in wanted))
    for (values,) in iter_values(runner, [(model, names)], feeds):
        for key, layer in wanted.items():
            rows = layer.rows(np.asarray(values[key[0]]))
            if rows.shape[1] != layer.shape[0]:
                logger.debug("'%s' captured with %d columns, not %d", key[0], rows.shape[1], layer.shape[0])
                continue
            sums[key].update(rows, np.zeros((rows.shape[0], 0)))
    grams = {}
    for layer in layers:
        acc = sums.get(_key(layer))
        if acc is not None and acc.rows:
            grams[id(layer.node)] = acc.gram[: acc.n_in, : acc.n_in]
    return grams
