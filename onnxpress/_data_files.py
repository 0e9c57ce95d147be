"""Reading input samples from files: `.npz` archives and folders of `.npy` / TensorProto `.pb` files.

The layouts are described in `onnxpress.data`; this module only opens files and hands their arrays
to the sources defined there (`_StackedSource` for stacked arrays read one sample at a time,
`_SampleFilesSource` for one file per input per sample).
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from onnxpress.data import FeedSource, InputSpec, _SampleFilesSource, _StackedSource
from onnxpress.errors import InputError

__all__ = ["folder_source", "npz_source", "read_tensor_file", "tensor_files"]


def _npy_header(fp: Any, label: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(fp)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fp)
    except Exception as e:
        raise InputError(f"cannot read {label}: not a valid .npy array ({e})") from None
    return tuple(shape), dtype


def npz_source(path: str, specs: Sequence[InputSpec]) -> FeedSource:
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                with archive.open(member) as fp:
                    headers[member[: -len(".npy")]] = _npy_header(fp, f"{path}:{member}")
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"cannot read {path}: not a valid .npz file ({e})") from None

    def open_arrays() -> Any:
        return np.load(path, allow_pickle=False)

    return _StackedSource(specs, os.path.basename(path), headers, open_arrays)


class _NpyFolder:
    """Memory-maps `<input>.npy` files on entry; a context manager like NpzFile."""

    def __init__(self, files: Mapping[str, str]) -> None:
        self.files = files

    def __enter__(self) -> dict[str, np.ndarray]:
        return {name: np.load(path, mmap_mode="r", allow_pickle=False) for name, path in self.files.items()}

    def __exit__(self, *exc: object) -> None:
        return None


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def tensor_files(folder: str) -> list[str]:
    names = sorted(os.listdir(folder), key=_natural_key)
    return [
        os.path.join(folder, n)
        for n in names
        if n.endswith((".npy", ".pb")) and not n.startswith("output") and os.path.isfile(os.path.join(folder, n))
    ]


def read_tensor_file(path: str, specs: Sequence[InputSpec]) -> tuple[str, np.ndarray]:
    """(input name, array) of one `.npy` or TensorProto `.pb` file inside a sample folder."""
    stem = os.path.splitext(os.path.basename(path))[0]
    proto_name = ""
    try:
        if path.endswith(".npy"):
            array = np.load(path, allow_pickle=False)
        else:
            import onnx
            from onnx import numpy_helper

            tensor = onnx.TensorProto()
            with open(path, "rb") as f:
                tensor.ParseFromString(f.read())
            proto_name = tensor.name
            array = numpy_helper.to_array(tensor)
    except Exception as e:
        raise InputError(f"cannot read tensor file {path}: {type(e).__name__}: {e}") from None
    names = [s.name for s in specs]
    if proto_name in names:
        return proto_name, array
    if stem in names:
        return stem, array
    match = re.fullmatch(r"input_(\d+)", stem)
    if match and int(match.group(1)) < len(names):
        return names[int(match.group(1))], array
    raise InputError(f"tensor file {path} matches no model input; model inputs: {', '.join(names)}")


def folder_source(path: str, specs: Sequence[InputSpec]) -> FeedSource:
    label = os.path.basename(os.path.normpath(path)) + "/"
    top = tensor_files(path)
    names = {s.name for s in specs}
    stacked = {os.path.splitext(os.path.basename(f))[0]: f for f in top if f.endswith(".npy")}
    if stacked and set(stacked) <= names and not any(f.endswith(".pb") for f in top):
        headers = {}
        for name, file in stacked.items():
            try:
                with open(file, "rb") as fp:
                    headers[name] = _npy_header(fp, file)
            except OSError as e:
                raise InputError(f"cannot read {file}: {e.strerror or e}") from None
        return _StackedSource(specs, label, headers, lambda: _NpyFolder(stacked))
    if top:
        return _SampleFilesSource(specs, label, [path])
    samples = [
        os.path.join(path, n)
        for n in sorted(os.listdir(path), key=_natural_key)
        if os.path.isdir(os.path.join(path, n)) and tensor_files(os.path.join(path, n))
    ]
    if not samples:
        raise InputError(f"no .npy or .pb tensor files in {path} (nor in its subfolders)")
    return _SampleFilesSource(specs, label, samples)
