"""Safe model I/O: load from paths, bytes or protos; save atomically, with external data when big.

Loading keeps weights lazy (external data stays memory-mapped `ExternalTensor`s) and refuses,
with one clear line, anything that is not a usable ONNX model: missing or empty files, protobuf
that does not decode, external data that is missing, too short, or that points outside the model's
folder. Those checks read only the proto's metadata (location, offset, length), never the weights.
Saving writes the data file and the model to temporary names in the destination folder, fsyncs,
then renames (data first), so a failed save leaves no half-written file and never clobbers the
input. Tensor bytes are streamed by onnx_ir's external-data writer, so memory stays bounded for
models over 2 GB.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from onnxpress.errors import InputError
from onnxpress.ir.graph import all_graphs

__all__ = ["PROTO_LIMIT_BYTES", "file_size", "iter_tensors", "load", "save", "weight_bytes"]

logger = logging.getLogger(__name__)

#: Weights above this do not fit in one protobuf (2 GiB hard limit, minus room for the graph).
PROTO_LIMIT_BYTES = 2**31 - 1 - (64 << 20)

#: `model.meta` key holding the real path of the file a model was loaded from.
SOURCE_PATH_KEY = "onnxpress.source_path"


# ----------------------------------------------------------------------------------------------
# Tensors of a model
# ----------------------------------------------------------------------------------------------
def _initializer_values(model: ir.Model) -> Iterator[ir.Value]:
    for graph in all_graphs(model):
        if isinstance(graph, ir.Graph):
            yield from graph.initializers.values()


def _tensor_attributes(model: ir.Model) -> Iterator[tuple[ir.Node, str, ir.Attr]]:
    """(node, name, attr) for every TENSOR / TENSORS attribute, subgraphs and functions included."""
    for container in (model.graph, *model.functions.values()):
        for node in ir.traversal.RecursiveGraphIterator(container):
            for name, attr in node.attributes.items():
                if attr.is_ref() or attr.value is None:
                    continue
                if attr.type in (ir.AttributeType.TENSOR, ir.AttributeType.TENSORS):
                    yield node, name, attr


def iter_tensors(model: ir.Model) -> Iterator[ir.TensorProtocol]:
    """Every tensor of the model: initializers and tensor attributes, in all graphs and functions."""
    for value in _initializer_values(model):
        if value.const_value is not None:
            yield value.const_value
    for _, _, attr in _tensor_attributes(model):
        if attr.type == ir.AttributeType.TENSOR:
            yield attr.value
        else:
            yield from attr.value


def weight_bytes(model: ir.Model) -> int:
    """Bytes of all initializers (main graph and subgraphs), from dtype and shape only."""
    return sum(value.const_value.nbytes for value in _initializer_values(model) if value.const_value is not None)


def file_size(path: str | os.PathLike) -> int:
    """Bytes on disk of a saved model: the .onnx file plus every external data file it names."""
    path = os.fspath(path)
    model = load(path)
    data_files = {
        os.path.realpath(t.path) for t in iter_tensors(model) if isinstance(t, ir.ExternalTensor)
    }
    return os.path.getsize(path) + sum(os.path.getsize(f) for f in data_files)


# ----------------------------------------------------------------------------------------------
# Load
# ----------------------------------------------------------------------------------------------
def load(source: object, *, base_dir: str | os.PathLike | None = None) -> ir.Model:
    """An `onnx_ir.Model` from a path, bytes, an `onnx.ModelProto`, or a model (returned as is).

    External data stays on disk, memory-mapped on first use. `base_dir` resolves external data of
    bytes and protos (a path's own folder is used for paths). Raises `InputError` for anything
    unusable, before any weight is read.
    """
    if isinstance(source, ir.Model):
        return source
    source_path: str | None = None
    if isinstance(source, (str, os.PathLike)):
        source_path = os.fspath(source)
        name = os.path.basename(source_path) or source_path
        proto = _read_proto_file(source_path, name)
        base_dir = os.path.dirname(os.path.abspath(source_path))
    elif isinstance(source, (bytes, bytearray, memoryview)):
        name = "<bytes>"
        proto = _parse_proto(bytes(source), name)
    elif isinstance(source, onnx.ModelProto):
        name = "<ModelProto>"
        proto = source
    else:
        raise InputError(f"cannot load a model from a {type(source).__name__}; pass a path, bytes or ModelProto")

    if not proto.HasField("graph"):
        raise InputError(f"{name}: not an ONNX model (it has no graph)")
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as e:  # a proto that decodes but is not a consistent model
        raise InputError(f"{name}: not a valid ONNX model: {_first_line(e)}") from e

    _check_external_data(model, base_dir, name)
    if base_dir is not None:
        for tensor in iter_tensors(model):
            if isinstance(tensor, ir.ExternalTensor):
                tensor.base_dir = os.fspath(base_dir)
    if source_path is not None:
        model.meta[SOURCE_PATH_KEY] = os.path.realpath(source_path)
    logger.debug("loaded %s: %d nodes in the main graph", name, len(model.graph))
    return model


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _read_proto_file(path: str, name: str) -> onnx.ModelProto:
    if not os.path.exists(path):
        raise InputError(f"{name}: model file not found ({path})")
    if os.path.isdir(path):
        raise InputError(f"{name}: is a directory, not an ONNX model file")
    if os.path.getsize(path) == 0:
        raise InputError(f"{name}: the model file is empty")
    try:
        return onnx.load(path, load_external_data=False)
    except OSError as e:
        raise InputError(f"{name}: cannot read the model file: {_first_line(e)}") from e
    except Exception as e:  # DecodeError, text-format ParseError, ...: whatever the parser raises
        raise InputError(f"{name}: not a valid ONNX model (truncated or not protobuf): {_first_line(e)}") from e


def _parse_proto(data: bytes, name: str) -> onnx.ModelProto:
    if not data:
        raise InputError(f"{name}: the model is empty")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise InputError(f"{name}: not a valid ONNX model (truncated or not protobuf): {_first_line(e)}") from e
    return proto


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_external_data(model: ir.Model, base_dir: str | os.PathLike | None, name: str) -> None:
    """Refuse external data that is absolute, escapes the model folder, is missing or too short.

    Looks at location, offset and length only (stat calls, no reads).
    """
    sizes: dict[str, int] = {}
    for tensor in iter_tensors(model):
        if not isinstance(tensor, ir.ExternalTensor):
            continue
        location = os.fspath(tensor.location)
        what = f"{name}: external data of tensor {tensor.name!r} ({location!r})"
        if not location:
            raise InputError(f"{what} has no location")
        if os.path.isabs(location) or location.startswith(("/", "\\")) or os.path.splitdrive(location)[0]:
            raise InputError(f"{what} is an absolute path; external data must be relative to the model")
        if base_dir is None:
            raise InputError(f"{what}: the model has external data; pass base_dir= (the model's folder)")
        folder = os.path.abspath(os.fspath(base_dir))
        target = os.path.normpath(os.path.join(folder, location))
        if not _is_within(target, folder):
            raise InputError(f"{what} points outside the model's folder; refusing to read it")
        real = os.path.realpath(target)
        if not _is_within(real, os.path.realpath(folder)):
            raise InputError(f"{what} is a link to a file outside the model's folder; refusing to read it")
        if real not in sizes:
            if not os.path.isfile(real):
                raise InputError(f"{what}: external data file not found")
            sizes[real] = os.path.getsize(real)
        offset = tensor.offset or 0
        length = tensor.length if tensor.length is not None else tensor.nbytes
        if offset < 0 or length < 0:
            raise InputError(f"{what} has a negative offset or length")
        if length != tensor.nbytes:
            raise InputError(f"{what} has length {length} but its shape and type need {tensor.nbytes} bytes")
        if offset + length > sizes[real]:
            raise InputError(
                f"{what}: the data file is too short ({sizes[real]} bytes, needs {offset + length}); truncated?"
            )


# ----------------------------------------------------------------------------------------------
# Save
# ----------------------------------------------------------------------------------------------
def save(
    model: ir.Model,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    threshold_bytes: int = 1024,
) -> None:
    """Write `model` to `path` atomically; weights go to `<basename>.data` when asked or > 2 GB.

    `external_data=None` chooses external data only when the weights do not fit in one protobuf.
    With external data, tensors larger than `threshold_bytes` go to the data file. The model
    object is left unchanged. Refuses to overwrite the file the model was loaded from or a data
    file its tensors are memory-mapped from.
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    base = os.path.basename(path)
    data_name = f"{base}.data"
    data_path = os.path.join(folder, data_name)
    if os.path.isdir(path):
        raise InputError(f"{base}: output path is a directory")
    if not os.path.isdir(folder):
        raise InputError(f"{base}: output folder does not exist ({folder})")
    _refuse_overwriting_inputs(model, path, data_path)

    total = weight_bytes(model)
    use_external = external_data if external_data is not None else total > PROTO_LIMIT_BYTES
    if not use_external and total > PROTO_LIMIT_BYTES:
        raise InputError(
            f"{base}: weights are {total / 2**30:.1f} GiB, over the 2 GiB protobuf limit; save with external data"
        )

    temporaries: list[str] = []
    try:
        tmp_data = None
        with _prepared_tensors(model, folder, data_name, use_external, threshold_bytes, temporaries) as wrote:
            tmp_data = wrote
            try:
                proto = ir.serde.serialize_model(model)
                _drop_redundant_value_info(proto.graph)
                payload = proto.SerializeToString()
            except ValueError as e:  # protobuf refuses messages over 2 GiB
                raise InputError(f"{base}: the model does not fit in one protobuf: {_first_line(e)}") from e
        tmp_model = _temporary(folder, base, temporaries)
        with open(tmp_model, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        _commit(tmp_model, path, tmp_data, data_path, temporaries)
        _fsync_folder(folder)
    except OSError as e:
        raise InputError(f"{base}: cannot write the model: {_first_line(e)}") from e
    finally:
        for tmp in temporaries:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
    logger.info("saved %s (%s)", path, f"weights in {data_name}" if tmp_data is not None else "one file")


def _drop_redundant_value_info(graph: Any) -> None:
    """Remove `value_info` entries of initializers and graph inputs/outputs (their types are
    stated there already): bytes on disk, nothing else (quantized models carry one per weight)."""
    stated = {t.name for t in graph.initializer} | {v.name for v in graph.input} | {v.name for v in graph.output}
    kept = [v for v in graph.value_info if v.name not in stated]
    if len(kept) != len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(kept)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _refuse_overwriting_inputs(model: ir.Model, path: str, data_path: str) -> None:
    source = model.meta.get(SOURCE_PATH_KEY)
    if source and _same_file(path, source):
        raise InputError(f"{os.path.basename(path)}: refusing to overwrite the file the model was loaded from")
    mapped = {os.path.realpath(t.path) for t in iter_tensors(model) if isinstance(t, ir.ExternalTensor)}
    for target in (path, data_path):
        if any(_same_file(target, m) for m in mapped):
            raise InputError(
                f"{os.path.basename(target)}: refusing to overwrite a file the model's weights are read from"
            )


def _temporary(folder: str, base: str, temporaries: list[str]) -> str:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{base}.", suffix=".tmp")
    os.close(fd)
    temporaries.append(tmp)
    return tmp


def _commit(tmp_model: str, path: str, tmp_data: str | None, data_path: str, temporaries: list[str]) -> None:
    """Rename the data file, then the model, into place; undo the first if the second fails.

    The previous data file is kept as a hard link until the model is in place, so a failed rename
    puts the old pair back instead of leaving the old model beside new data.
    """
    previous = None
    if tmp_data is not None:
        if os.path.exists(data_path):
            previous = _temporary(os.path.dirname(data_path), os.path.basename(data_path), temporaries)
            os.remove(previous)
            try:
                os.link(data_path, previous)
            except OSError:  # no hard links here: the data file is replaced without a way back
                previous = None
        os.replace(tmp_data, data_path)
    try:
        os.replace(tmp_model, path)
    except BaseException:
        if tmp_data is not None:
            with contextlib.suppress(OSError):
                if previous is not None:
                    os.replace(previous, data_path)
                else:
                    os.remove(data_path)
        raise


def _fsync_folder(folder: str) -> None:
    with contextlib.suppress(OSError):  # not every platform lets you open a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _prepared_tensors(
    model: ir.Model,
    folder: str,
    data_name: str,
    use_external: bool,
    threshold_bytes: int,
    temporaries: list[str],
) -> Iterator[str | None]:
    """Temporarily point the model's tensors where the saved proto should find them.

    With external data, big initializers are streamed into a temporary data file and replaced by
    `ExternalTensor`s that name the final `data_name`; every other `ExternalTensor` (from the file
    the model was loaded from) is read into memory so the proto does not refer to the old file.
    Yields the temporary data file (None when nothing went external) and restores the model after.
    """
    restore_values: list[tuple[ir.Value, ir.TensorProtocol]] = []
    restore_attrs: list[tuple[ir.Node, str, ir.Attr]] = []
    try:
        big: list[ir.Value] = []
        for value in _initializer_values(model):
            tensor = value.const_value
            if tensor is None:
                continue
            if use_external and tensor.nbytes > threshold_bytes:
                big.append(value)
            elif isinstance(tensor, ir.ExternalTensor):
                restore_values.append((value, tensor))
                value.const_value = _in_memory(tensor)
        for node, name, attr in _tensor_attributes(model):
            tensors = [attr.value] if attr.type == ir.AttributeType.TENSOR else list(attr.value)
            if any(isinstance(t, ir.ExternalTensor) for t in tensors):
                restore_attrs.append((node, name, attr))
                loaded = [_in_memory(t) if isinstance(t, ir.ExternalTensor) else t for t in tensors]
                node.attributes[name] = (
                    ir.AttrTensor(name, loaded[0]) if attr.type == ir.AttributeType.TENSOR else ir.AttrTensors(name, loaded)
                )

        tmp_data = None
        if big:
            tmp_data = _temporary(folder, data_name, temporaries)
            regions = _write_data_file(tmp_data, [v.const_value for v in big])
            for value, (offset, length) in zip(big, regions, strict=True):
                tensor = value.const_value
                restore_values.append((value, tensor))
                value.const_value = ir.ExternalTensor(
                    data_name, offset, length, tensor.dtype, shape=tensor.shape, name=tensor.name, base_dir=folder
                )
        yield tmp_data
    finally:
        for value, tensor in reversed(restore_values):
            value.const_value = tensor
        for node, name, attr in restore_attrs:
            node.attributes[name] = attr


_COPY_CHUNK = 64 << 20


def _write_data_file(path: str, tensors: list[ir.TensorProtocol]) -> list[tuple[int, int]]:
    """Write tensors back to back into `path`, fsync it, return each one's (offset, length).

    Weights still memory-mapped from the input's data file are copied file-to-file by the kernel
    (`os.copy_file_range`), without passing through this process's memory; others are written
    with their own `tofile`.
    """
    regions: list[tuple[int, int]] = []
    with open(path, "wb") as out:
        offset = 0
        for tensor in tensors:
            length = tensor.nbytes
            if isinstance(tensor, ir.ExternalTensor) and not _copy_region(tensor, out, offset, length):
                out.seek(offset)
                tensor.tofile(out)
            elif not isinstance(tensor, ir.ExternalTensor):
                out.seek(offset)
                if hasattr(tensor, "tofile"):
                    tensor.tofile(out)
                else:
                    out.write(tensor.tobytes())
            regions.append((offset, length))
            offset += length
        out.flush()
        os.fsync(out.fileno())
    return regions


def _copy_region(tensor: ir.ExternalTensor, out: Any, offset: int, length: int) -> bool:
    """Kernel-side copy of an external tensor's bytes; False when the platform cannot."""
    copy = getattr(os, "copy_file_range", None)
    if copy is None or length == 0:
        return False
    out.flush()
    with open(tensor.path, "rb") as src:
        src_offset, dst_offset, remaining = tensor.offset or 0, offset, length
        try:
            while remaining > 0:
                n = copy(src.fileno(), out.fileno(), min(remaining, _COPY_CHUNK), src_offset, dst_offset)
                if n <= 0:
                    return False
                src_offset += n
                dst_offset += n
                remaining -= n
        except OSError:
            return False
    out.seek(offset + length)
    return True


def _in_memory(tensor: ir.ExternalTensor) -> ir.Tensor:
    return ir.Tensor(tensor.numpy().copy(), dtype=tensor.dtype, name=tensor.name)
