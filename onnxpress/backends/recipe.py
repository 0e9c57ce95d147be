"""The recipe an emitted model carries in its `metadata_props`: what made it, so it can be made again.

Keys (all prefixed `onnxpress.`): `pipeline` (the expanded pipeline text, every option as built),
`target`, `version` (of onnxpress), `input_sha256` (of the input model: its file and the external
data files it references, or its serialized bytes when it came from memory), `input_shapes` (JSON,
only when `--input-shape` fixed dims) and `data` (`random` when calibration ran on seeded random
feeds; real data is not recorded, only described, and must be given again). No timestamps: the same
input and recipe give the same bytes, so a build system can diff recipes and outputs.
`optimize --replay OUT.onnx NEW.onnx` reads it back with `read_recipe`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import onnx_ir as ir

from onnxpress.errors import InputError

__all__ = ["PREFIX", "Recipe", "input_digest", "read_recipe", "record_recipe"]

PREFIX = "onnxpress."
_CHUNK = 1 << 20
_HASH_IN_MEMORY_LIMIT = 1 << 30


@dataclasses.dataclass(frozen=True)
class Recipe:
    pipeline: str
    target: str
    version: str
    input_sha256: str
    input_shapes: Mapping[str, Sequence[int]] | None = None
    data: str | None = None

    def to_metadata(self) -> dict[str, str]:
        props = {
            "pipeline": self.pipeline,
            "target": self.target,
            "version": self.version,
            "input_sha256": self.input_sha256,
        }
        if self.input_shapes:
            props["input_shapes"] = json.dumps({k: [int(d) for d in v] for k, v in self.input_shapes.items()},
                                               sort_keys=True)
        if self.data:
            props["data"] = self.data
        return {PREFIX + k: v for k, v in props.items()}

    @classmethod
    def from_metadata(cls, props: Mapping[str, str], where: str = "the model") -> "Recipe":
        missing = [k for k in ("pipeline", "target") if PREFIX + k not in props]
        if missing:
            raise InputError(f"{where} carries no onnxpress recipe (metadata {', '.join(PREFIX + k for k in missing)} "
                             "missing); was it written by onnxpress?")
        shapes = props.get(PREFIX + "input_shapes")
        try:
            parsed = json.loads(shapes) if shapes else None
        except ValueError:
            raise InputError(f"{where}: metadata {PREFIX}input_shapes is not valid JSON") from None
        return cls(
            pipeline=props[PREFIX + "pipeline"],
            target=props[PREFIX + "target"],
            version=props.get(PREFIX + "version", "unknown"),
            input_sha256=props.get(PREFIX + "input_sha256", ""),
            input_shapes=parsed,
            data=props.get(PREFIX + "data"),
        )


def record_recipe(model: ir.Model, recipe: Recipe) -> None:
    """Write the recipe into `model.metadata_props` (other entries are kept)."""
    model.metadata_props.update(recipe.to_metadata())


def read_recipe(source: str | os.PathLike | ir.Model) -> Recipe:
    """The recipe of an emitted model (a path: only the graph file is read, never its weights)."""
    if isinstance(source, ir.Model):
        return Recipe.from_metadata(source.metadata_props)
    import onnx

    path = os.fspath(source)
    if not os.path.isfile(path):
        raise InputError(f"--replay: no such file: {path}")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and friends for a non-ONNX file
        raise InputError(f"--replay {os.path.basename(path)}: not an ONNX model ({type(e).__name__})") from None
    return Recipe.from_metadata({p.key: p.value for p in proto.metadata_props}, os.path.basename(path))


def input_digest(source: Any, model: ir.Model | None = None) -> str:
    """sha256 of the input model: a file plus the external data files `model` (loaded from it)
    reads, or the bytes of an in-memory model."""
    digest = hashlib.sha256()
    if isinstance(source, (str, os.PathLike)):
        _update_file(digest, os.fspath(source))
        for data in _external_files(model) if model is not None else ():
            _update_file(digest, data)
    elif isinstance(source, (bytes, bytearray)):
        digest.update(source)
    else:
        from onnxpress.ir.io import weight_bytes

        if isinstance(source, ir.Model) and weight_bytes(source) > _HASH_IN_MEMORY_LIMIT:
            return "unhashed: in-memory model over 1 GiB (pass a path to hash it)"
        proto = ir.serde.serialize_model(source) if isinstance(source, ir.Model) else source
        digest.update(proto.SerializeToString())
    return digest.hexdigest()


def _update_file(digest: Any, path: str) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)


def _external_files(model: ir.Model) -> list[str]:
    from onnxpress.ir.io import iter_tensors

    files = {os.path.abspath(os.path.join(str(t.base_dir or "."), t.location))
             for t in iter_tensors(model) if isinstance(t, ir.ExternalTensor)}
    return sorted(f for f in files if os.path.isfile(f))
