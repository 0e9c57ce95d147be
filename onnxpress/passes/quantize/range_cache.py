"""The calibration range cache: ranges computed once per (model, data, method), reused across runs.

Calibrating a big model takes minutes, and users re-run `optimize` with different placement
options on the same model and data. `RangeCache` keeps the computed ranges in one JSON file per
key in a cache folder; the key hashes the model, the data and the method settings:

* `model_digest` hashes the graph structure (nodes, attributes, value names, types, shapes,
  opsets, functions, subgraphs) and, for each initializer, its name, dtype, shape and a strided
  sample of at most ~1,100 elements. Weights are never read in full (a memory-mapped 2 GB model
  hashes in milliseconds), so two models that differ only in weights the sample misses collide —
  a trade we accept for a cache.
* `data_digest` hashes the source's description and the bytes of every feed used (the feeds are
  already in memory for the run, and hashing is far cheaper than running the model).

Writes are atomic (temporary file in the same folder, then rename) and merge with what another
process may have written meanwhile. A damaged cache file is ignored with a warning.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import tempfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

__all__ = ["RangeCache", "data_digest", "decode_array", "encode_array", "model_digest"]

logger = logging.getLogger(__name__)

#: Bump when the meaning of cached entries changes; old files then simply miss.
CACHE_FORMAT = 1
#: Elements of each initializer that enter the model digest (strided), plus its first and last few.
_SAMPLED_ELEMENTS = 1024
_EDGE_ELEMENTS = 32


# ----------------------------------------------------------------------------------------------
# Digests
# ----------------------------------------------------------------------------------------------
def _tensor_sample(tensor: ir.TensorProtocol) -> bytes:
    """A few bytes that change when the tensor's contents change (almost always)."""
    try:
        flat = tensor.numpy().reshape(-1)  # memory-mapped for external data: only sampled pages are read
    except Exception:  # a dtype numpy cannot hold: fall back to the raw bytes of small tensors only
        return tensor.tobytes() if tensor.size <= 4 * _SAMPLED_ELEMENTS else b""
    if flat.size <= _SAMPLED_ELEMENTS + 2 * _EDGE_ELEMENTS:
        return np.ascontiguousarray(flat).tobytes()
    strided = np.linspace(0, flat.size - 1, _SAMPLED_ELEMENTS).astype(np.int64)
    parts = (flat[:_EDGE_ELEMENTS], flat[strided], flat[-_EDGE_ELEMENTS:])
    return b"".join(np.ascontiguousarray(p).tobytes() for p in parts)


def _value_text(value: ir.Value | None) -> str:
    if value is None:
        return "-"
    return f"{value.name}:{value.dtype}:{value.shape}"


class _Hasher:
    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def add(self, *parts: Any) -> None:
        for part in parts:
            self._h.update(part if isinstance(part, (bytes, bytearray, memoryview)) else str(part).encode())
            self._h.update(b"\x1f")

    def tensor(self, tensor: ir.TensorProtocol | None) -> None:
        if tensor is None:
            self.add("no-tensor")
            return
        self.add(tensor.dtype, tuple(tensor.shape), _tensor_sample(tensor))

    def attribute(self, attr: Any) -> None:
        self.add(attr.name, attr.type)
        if getattr(attr, "is_ref", lambda: False)():
            self.add("ref", attr.ref_attr_name)
        elif attr.type == ir.AttributeType.GRAPH:
            self.graph(attr.value)
        elif attr.type == ir.AttributeType.GRAPHS:
            for graph in attr.value:
                self.graph(graph)
        elif attr.type == ir.AttributeType.TENSOR:
            self.tensor(attr.value)
        elif attr.type == ir.AttributeType.TENSORS:
            for tensor in attr.value:
                self.tensor(tensor)
        else:
            self.add(repr(attr.value))

    def nodes(self, nodes: Iterable[ir.Node]) -> None:
        for node in nodes:
            self.add("node", node.domain, node.op_type, node.overload)
            self.add(*(_value_text(v) for v in node.inputs))
            self.add("->", *(_value_text(v) for v in node.outputs))
            for attr in node.attributes.values():
                self.attribute(attr)

    def graph(self, graph: ir.Graph | ir.GraphView) -> None:
        self.add("graph", *(_value_text(v) for v in graph.inputs))
        self.add("outputs", *(_value_text(v) for v in graph.outputs))
        for name, value in sorted(getattr(graph, "initializers", {}).items()):
            self.add("init", name)
            self.tensor(value.const_value)
        self.nodes(graph)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def model_digest(model: ir.Model) -> str:
    """A hash of the model's structure and sampled weights (cheap for big models)."""
    h = _Hasher()
    h.add("opsets", sorted(model.opset_imports.items()))
    h.graph(model.graph)
    for key in sorted(model.functions, key=str):
        function = model.functions[key]
        h.add("function", key, *(_value_text(v) for v in function.inputs), *sorted(function.attributes))
        h.nodes(function)
        h.add("returns", *(_value_text(v) for v in function.outputs))
    return h.hexdigest()


def data_digest(data: Any, feeds: Sequence[Mapping[str, Any]]) -> str:
    """A hash of the data source's description and of every feed's names, dtypes, shapes and bytes."""
    h = _Hasher()
    describe = getattr(data, "describe", None)
    h.add("data", describe() if callable(describe) else type(data).__name__, len(feeds))
    for feed in feeds:
        for name in sorted(feed):
            array = np.ascontiguousarray(np.asarray(feed[name]))
            h.add(name, array.dtype, array.shape, memoryview(array).cast("B") if array.size else b"")
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Arrays in JSON
# ----------------------------------------------------------------------------------------------
def encode_array(array: np.ndarray) -> dict[str, Any]:
    """A small JSON object for a numeric array (zlib-compressed, base64)."""
    array = np.ascontiguousarray(array)
    return {
        "dtype": array.dtype.str,
        "shape": list(array.shape),
        "data": base64.b64encode(zlib.compress(array.tobytes())).decode("ascii"),
    }


def decode_array(obj: Mapping[str, Any]) -> np.ndarray:
    raw = zlib.decompress(base64.b64decode(obj["data"]))
    return np.frombuffer(raw, dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()


# ----------------------------------------------------------------------------------------------
# The cache file
# ----------------------------------------------------------------------------------------------
class RangeCache:
    """One JSON file of `{value name: entry}` for one key (model, data and method settings)."""

    def __init__(self, cache_dir: str | os.PathLike, key: Mapping[str, Any]) -> None:
        self.key = {"format": CACHE_FORMAT, **key}
        text = json.dumps(self.key, sort_keys=True)
        self.digest = hashlib.sha256(text.encode()).hexdigest()[:24]
        self.folder = os.fspath(cache_dir)
        self.path = os.path.join(self.folder, f"ranges-{self.digest}.json")

    def load(self) -> dict[str, dict[str, Any]]:
        """The cached entries, or {} when there is no usable file."""
        try:
            with open(self.path, encoding="utf-8") as f:
                content = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            logger.warning("ignoring unreadable range cache %s: %s", self.path, e)
            return {}
        if not isinstance(content, dict) or content.get("key") != self.key:
            logger.warning("ignoring range cache %s: written for a different key", self.path)
            return {}
        entries = content.get("ranges")
        return dict(entries) if isinstance(entries, dict) else {}

    def update(self, entries: Mapping[str, Mapping[str, Any]]) -> None:
        """Merge `entries` into the file atomically (what is on disk now, plus these)."""
        if not entries:
            return
        os.makedirs(self.folder, exist_ok=True)
        merged = self.load()
        merged.update(entries)
        fd, tmp = tempfile.mkstemp(prefix=".ranges-", suffix=".json.tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"key": self.key, "ranges": merged}, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        logger.debug("range cache %s: %d entries", self.path, len(merged))
