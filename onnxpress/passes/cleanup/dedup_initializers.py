"""DeduplicateInitializersPass: merge initializers holding identical data, with bounded memory.

Initializers are first grouped by (dtype, shape); only groups with two or more members are hashed,
so a model whose weights all differ in shape reads no weight at all. External (memory-mapped)
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


def tensor_digest(tensor: ir.TensorProtocol) -> bytes:
    """A content hash of a tensor's bytes that keeps memory-mapped weights out of memory."""
    h = hashlib.blake2b(digest_size=32)
    if isinstance(tensor, ir.ExternalTensor):
        with open(tensor.path, "rb") as f:
            fd = f.fileno()
            offset = tensor.offset or 0
            remaining = tensor.length if tensor.length is not None else os.fstat(fd).st_size - offset
            while remaining > 0:
                chunk = os.pread(fd, min(_CHUNK, remaining), offset)
                if not chunk:
                    break
                h.update(chunk)
                offset += len(chunk)
                remaining -= len(chunk)
        return h.digest()
    array = tensor.numpy()
    h.update(np.ascontiguousarray(array).view(np.uint8).reshape(-1).data if array.size else b"")
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
            keep: dict[bytes, ir.Value] = {}
            for value in members:
                digest = tensor_digest(value.const_value)
                first = keep.setdefault(digest, value)
                if first is value:
                    continue
                ir.convenience.replace_all_uses_with(value, first)
                graph.initializers.pop(value.name)
                merged += 1
                saved += value.const_value.nbytes
                logger.debug("merged initializer %s into %s", value.name, first.name)
        return merged, saved
