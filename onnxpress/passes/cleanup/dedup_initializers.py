"""DeduplicateInitializersPass: merge initializers holding identical data, with bounded memory.

Initializers are first grouped by (dtype, shape); within a group, a cheap fingerprint of the
first and last 64 KiB separates most distinct weights, and only members whose fingerprints collide
are hashed in full. A model whose weights all differ reads at most 128 KiB of each. External (memory-mapped)
weights are hashed by reading their file region in chunks with ordinary reads: nothing of the
weight file becomes resident in the process (memory-mapping it would count every page against
the process's RSS), so a 2 GB model deduplicates in a few MB of memory. Each graph (main graph,
If/Loop/Scan bodies) is processed on its own; initializers that are also graph inputs (which a
user may override at run time) and graph outputs are left alone.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.passes.base import Pass, PassResult
from onnxpress.passes.registry import register_pass

logger = logging.getLogger(__name__)

_CHUNK = 16 << 20
_EDGE = 64 << 10


def _ranges(tensor: ir.TensorProtocol, edges_only: bool) -> list[tuple[int, int]]:
    """(offset, length) pieces of the tensor's bytes to hash: all of it, or its two ends."""
    size = tensor.nbytes
    if not edges_only or size <= 2 * _EDGE:
        return [(0, size)]
    return [(0, _EDGE), (size - _EDGE, _EDGE)]


def tensor_digest(tensor: ir.TensorProtocol, *, edges_only: bool = False) -> bytes:
    """A content hash of a tensor's bytes (or of its first and last 64 KiB) without mapping it.

    External weights are read with ordinary reads, so none of their pages stay resident.
    """
    h = hashlib.blake2b(digest_size=32)
    if isinstance(tensor, ir.ExternalTensor):
        with open(tensor.path, "rb") as f:
            fd = f.fileno()
            base = tensor.offset or 0
            for start, length in _ranges(tensor, edges_only):
                offset, remaining = base + start, length
                while remaining > 0:
                    chunk = os.pread(fd, min(_CHUNK, remaining), offset)
                    if not chunk:
                        break
                    h.update(chunk)
                    offset += len(chunk)
                    remaining -= len(chunk)
        return h.digest()
    array = tensor.numpy()
    raw = np.ascontiguousarray(array).view(np.uint8).reshape(-1) if array.size else np.zeros(0, np.uint8)
    for start, length in _ranges(tensor, edges_only):
        h.update(raw[start : start + length].data)
    return h.digest()


@register_pass
class DeduplicateInitializersPass(Pass):
    """Merge initializers with identical dtype, shape and bytes (hashed; memory stays bounded).

    Applies within each graph; keeps the first initializer of every identical set and rewires the
    others' users to it. Initializers that are graph inputs or outputs are never merged.
    """

    name = "dedup-initializers"
    preserved_analyses = frozenset()

    def run(self, model: ir.Model, am: Any) -> PassResult:
        from onnxpress.passes.cleanup._util import all_graphs

        merged = 0
        bytes_saved = 0
        for graph in all_graphs(model):
            if not isinstance(graph, ir.Graph):
                continue  # functions hold no initializers
            merged_here, saved_here = self._dedup_graph(graph)
            merged += merged_here
            bytes_saved += saved_here
        if merged:
            logger.info("dedup-initializers: merged %d initializer(s), %d bytes", merged, bytes_saved)
        return PassResult(model, merged > 0, {"merged": merged, "bytes_saved": bytes_saved})

    def _dedup_graph(self, graph: ir.Graph) -> tuple[int, int]:
        protected = {v.name for v in graph.inputs} | {v.name for v in graph.outputs}
        groups: dict[tuple, list[ir.Value]] = defaultdict(list)
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is None or value.name in protected:
                continue
            groups[(tensor.dtype, tuple(tensor.shape))].append(value)
        merged = 0
        saved = 0
        for members in groups.values():
            if len(members) < 2:
                continue
            by_edges: dict[bytes, list[ir.Value]] = defaultdict(list)
            for value in members:
                by_edges[tensor_digest(value.const_value, edges_only=True)].append(value)
            for candidates in by_edges.values():
                if len(candidates) < 2:
                    continue
                keep: dict[bytes, ir.Value] = {}
                for value in candidates:
                    first = keep.setdefault(tensor_digest(value.const_value), value)
                    if first is value:
                        continue
                    ir.convenience.replace_all_uses_with(value, first)
                    graph.initializers.pop(value.name)
                    merged += 1
                    saved += value.const_value.nbytes
                    logger.debug("merged initializer %s into %s", value.name, first.name)
        return merged, saved
