"""Input feeds for calibration, numeric checks and benchmarks, from wherever the user keeps them.

`load_data(spec, model)` turns a data spec into a `FeedSource`: a re-iterable stream of feed dicts
(input name -> array), validated against the model's inputs, one sample per feed. Sources:

* ``data.npz`` — keys are input names; the leading axis indexes samples. An array with one more dim
  than the input is split into ``arr[i]`` (input ``[1,3,224,224]`` stored as ``[N,1,3,224,224]``);
  an array with the input's own rank is split along axis 0 into chunks of the input's leading dim
  (1 when that dim is symbolic), so ``[N,3,224,224]`` gives ``N`` batch-1 feeds.
* a folder, in one of three layouts (checked in this order):

  1. ``<input>.npy`` files at the top: one stacked array per input, split like the npz arrays
     (memory-mapped, so only one sample at a time is read);
  2. ``.pb`` / ``.npy`` tensor files at the top: the folder is one sample;
  3. one subfolder per sample (``test_data_set_0/``, ``sample_001/`` ..., sorted naturally), each
     holding one file per input — the ONNX backend-test layout.

  Inside a sample, a file maps to an input by the TensorProto's name (``.pb``), else by its stem
  (``x.npy`` -> input ``x``), else by ``input_<k>`` -> the k-th model input. ``output_*`` files
  are ignored. Samples are read one at a time.
* ``"pkg.module:function"`` or a Python callable: called with no arguments on every pass over the
  data; it returns or yields feed dicts (a single dict is one sample).
* ``None`` — seeded random feeds shaped from the model: a symbolic leading (batch) dim is 1 (and so
  is that symbol wherever else it appears); any other symbolic dim needs ``input_shapes``.

Every feed is checked against the model: names, dtypes (float types are cast to the model's float
type with a warning; any other mismatch is refused), rank and static dims. Errors are one-line
`InputError`s.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpress.errors import InputError

__all__ = ["FeedSource", "InputSpec", "load_data", "model_inputs"]

logger = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]
Dim = int | str | None


# ----------------------------------------------------------------------------------------------
# What the model expects
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, numpy dtype (None when unknown) and dims (None: unknown rank)."""

    name: str
    dtype: np.dtype | None
    dims: tuple[Dim, ...] | None

    def shape_text(self, dims: Sequence[Dim] | None = None) -> str:
        dims = self.dims if dims is None else dims
        if dims is None:
            return "?"
        return "x".join("?" if d is None else str(d) for d in dims) or "scalar"


def model_inputs(model: ir.Model) -> list[InputSpec]:
    """The inputs a feed must provide (graph inputs that are not initializers), in order."""
    initializers = set(model.graph.initializers)
    specs = []
    for value in model.graph.inputs:
        if value.name in initializers:
            continue
        dtype = None
        if value.dtype is not None:
            try:
                dtype = np.dtype(value.dtype.numpy())
            except (TypeError, ValueError):  # strings and other types numpy cannot hold as numbers
                dtype = None
        dims = None
        if value.shape is not None:
            # paddle2onnx and others write -1 for "any size": a symbolic dim, not a size
            dims = tuple((d if d >= 0 else None) if isinstance(d, int) else d.value for d in value.shape.dims)
        specs.append(InputSpec(value.name or "", dtype, dims))
    return specs


def _with_overrides(specs: list[InputSpec], input_shapes: Mapping[str, Sequence[int]] | None) -> list[InputSpec]:
    """Replace each input's dims by the user's `--input-shape`, after checking they fit."""
    if not input_shapes:
        return specs
    by_name = {s.name: s for s in specs}
    for name in input_shapes:
        if name not in by_name:
            raise InputError(f"--input-shape names unknown input '{name}'; model inputs: {_names(specs)}")
    out = []
    for spec in specs:
        given = input_shapes.get(spec.name)
        if given is None:
            out.append(spec)
            continue
        given = tuple(int(d) for d in given)
        if spec.dims is not None:
            _check_dims(spec, given, what="--input-shape")
        out.append(InputSpec(spec.name, spec.dtype, given))
    return out


def _names(specs: Sequence[InputSpec]) -> str:
    return ", ".join(s.name for s in specs) or "none"


def _check_dims(spec: InputSpec, shape: Sequence[int], *, what: str = "data") -> None:
    if spec.dims is None:
        return
    got = "x".join(str(d) for d in shape) or "scalar"
    if len(shape) != len(spec.dims):
        raise InputError(
            f"input '{spec.name}' expects rank {len(spec.dims)} ({spec.shape_text()}), {what} has shape {got}"
        )
    for axis, (want, have) in enumerate(zip(spec.dims, shape)):
        if isinstance(want, int) and want != have:
            raise InputError(
                f"input '{spec.name}' dim {axis} is {want} in the model, {what} has {have} "
                f"(expected {spec.shape_text()}, got {got})"
            )


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------
class FeedSource:
    """A re-iterable stream of validated feed dicts, one per sample.

    Subclasses implement `_raw_feeds()` (unvalidated feeds, read lazily) and set `length` when the
    number of samples is known without reading them. `len()` raises TypeError when it is not.
    """

    def __init__(self, specs: Sequence[InputSpec], description: str, length: int | None = None) -> None:
        self.specs = list(specs)
        self.length = length
        self._description = description
        self._warned: set[str] = set()

    def _raw_feeds(self) -> Iterator[Mapping[str, Any]]:
        raise NotImplementedError

    def feeds(self) -> Iterator[Feed]:
        """Iterate the samples from the start; every call starts over."""
        for index, feed in enumerate(self._raw_feeds()):
            yield self.validate(feed, index)

    def __iter__(self) -> Iterator[Feed]:
        return self.feeds()

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError(f"the number of samples of {self.describe()} is not known before reading them")
        return self.length

    def __bool__(self) -> bool:  # len() may be unknown; a source is never "empty-false"
        return True

    def take(self, limit: int | None) -> list[Feed]:
        """At most `limit` feeds (all when None) as a list."""
        out: list[Feed] = []
        for feed in self.feeds():
            if limit is not None and len(out) >= limit:
                break
            out.append(feed)
        return out

    def describe(self) -> str:
        count = f"{self.length} sample(s)" if self.length is not None else "samples counted while read"
        return f"{self._description} ({count})"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"

    # -- validation ------------------------------------------------------------------------------
    def validate(self, feed: Mapping[str, Any], index: int = 0) -> Feed:
        """Check one feed against the model's inputs; cast between float types; keep input order."""
        if not isinstance(feed, Mapping):
            raise InputError(f"{self._description}: sample {index} is a {type(feed).__name__}, not a dict of arrays")
        known = {s.name for s in self.specs}
        unknown = [k for k in feed if k not in known]
        if unknown:
            raise InputError(
                f"{self._description}: unknown input '{unknown[0]}'; model inputs: {_names(self.specs)}"
            )
        out: Feed = {}
        for spec in self.specs:
            if spec.name not in feed:
                raise InputError(
                    f"{self._description}: sample {index} has no data for input '{spec.name}' "
                    f"(model inputs: {_names(self.specs)})"
                )
            out[spec.name] = self._coerce(spec, np.asarray(feed[spec.name]))
        return out

    def _coerce(self, spec: InputSpec, array: np.ndarray) -> np.ndarray:
        _check_dims(spec, array.shape, what=self._description)
        if spec.dtype is None or array.dtype == spec.dtype:
            return array
        if _is_float(array.dtype) and _is_float(spec.dtype):
            if spec.name not in self._warned:
                self._warned.add(spec.name)
                logger.warning("input '%s': casting %s data to the model's %s", spec.name, array.dtype, spec.dtype)
            return array.astype(spec.dtype)
        raise InputError(
            f"input '{spec.name}' is {spec.dtype} in the model, {self._description} has {array.dtype}; "
            "convert the data (only float-to-float is cast automatically)"
        )


def _is_float(dtype: np.dtype) -> bool:
    # bfloat16 / float8 from ml_dtypes are not np.floating subclasses but have kind 'V' and a float name
    return np.issubdtype(dtype, np.floating) or "float" in dtype.name


class _StackedSource(FeedSource):
    """One array per input whose leading axis indexes samples (an .npz or a folder of .npy)."""

    def __init__(
        self,
        specs: Sequence[InputSpec],
        description: str,
        headers: Mapping[str, tuple[tuple[int, ...], np.dtype]],
        open_arrays: Callable[[], Any],
    ) -> None:
        known = {s.name for s in specs}
        for key in headers:
            if key not in known:
                raise InputError(f"{description}: unknown input '{key}'; model inputs: {_names(specs)}")
        for spec in specs:
            if spec.name not in headers:
                raise InputError(f"{description} has no array for input '{spec.name}' (model inputs: {_names(specs)})")
        self._open_arrays = open_arrays
        self._split: dict[str, int] = {}  # input -> samples per chunk along axis 0; 0: index arr[i]
        counts = {}
        for spec in specs:
            shape, _ = headers[spec.name]
            counts[spec.name] = self._plan(spec, shape, description)
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"{k}: {v}" for k, v in counts.items())
            raise InputError(f"{description}: inputs disagree on the number of samples ({listed})")
        super().__init__(specs, description, next(iter(counts.values()), 0))

    def _plan(self, spec: InputSpec, shape: tuple[int, ...], description: str) -> int:
        got = "x".join(str(d) for d in shape) or "scalar"
        if spec.dims is None or len(shape) == len(spec.dims) + 1:
            if not shape:
                raise InputError(f"{description}: array '{spec.name}' is a scalar; the leading axis must index samples")
            self._split[spec.name] = 0
            if spec.dims is not None:
                _check_dims(spec, shape[1:], what=f"{description} (per sample)")
            return shape[0]
        if len(shape) == len(spec.dims) and shape:
            lead = spec.dims[0]
            chunk = lead if isinstance(lead, int) and lead > 0 else 1
            if shape[0] % chunk:
                raise InputError(
                    f"{description}: array '{spec.name}' has {shape[0]} rows along axis 0, "
                    f"not a multiple of the model's batch {chunk}"
                )
            _check_dims(spec, (chunk, *shape[1:]), what=description)
            self._split[spec.name] = chunk
            return shape[0] // chunk
        raise InputError(
            f"input '{spec.name}' expects rank {len(spec.dims)} ({spec.shape_text()}); {description} "
            f"has shape {got}: give one sample per index of a leading axis (rank {len(spec.dims) + 1}) "
            f"or stack along the batch axis (rank {len(spec.dims)})"
        )

    def _raw_feeds(self) -> Iterator[Mapping[str, Any]]:
        with self._open_arrays() as arrays:
            for i in range(self.length or 0):
                feed = {}
                for name, chunk in self._split.items():
                    arr = arrays[name]
                    part = arr[i] if chunk == 0 else arr[i * chunk : (i + 1) * chunk]
                    feed[name] = np.array(part, order="C")  # copies out of a memory map; keeps 0-d arrays 0-d
                yield feed


class _SampleFilesSource(FeedSource):
    """One sample per folder of tensor files (.npy / ONNX TensorProto .pb)."""

    def __init__(self, specs: Sequence[InputSpec], description: str, folders: Sequence[str]) -> None:
        super().__init__(specs, description, len(folders))
        self.folders = list(folders)

    def _raw_feeds(self) -> Iterator[Mapping[str, Any]]:
        from onnxpress._data_files import read_tensor_file, tensor_files

        for folder in self.folders:
            feed: dict[str, np.ndarray] = {}
            for path in tensor_files(folder):
                name, array = read_tensor_file(path, self.specs)
                if name in feed:
                    raise InputError(f"{folder}: two files hold input '{name}'")
                feed[name] = array
            yield feed


_END = object()


class _CallableSource(FeedSource):
    def __init__(self, specs: Sequence[InputSpec], description: str, function: Callable[[], Any]) -> None:
        length = len(function) if isinstance(function, Sequence) else None
        super().__init__(specs, description, length)
        self._function = function

    def _raw_feeds(self) -> Iterator[Mapping[str, Any]]:
        if isinstance(self._function, Sequence):  # a list of feeds given directly
            yield from self._function
            return
        produced = self._guarded(self._function)
        if produced is None:
            raise InputError(f"{self._description} returned None; return or yield dicts of input name -> array")
        if isinstance(produced, Mapping):
            yield produced
            return
        if not isinstance(produced, Iterable):
            raise InputError(f"{self._description} returned a {type(produced).__name__}, not feed dicts")
        iterator = iter(produced)
        while True:
            # a generator's body runs here, so its errors are the user's data errors too
            feed = self._guarded(lambda: next(iterator, _END))
            if feed is _END:
                return
            yield feed

    def _guarded(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"{self._description} raised {type(e).__name__}: {e}") from e


class _RandomSource(FeedSource):
    """Seeded random feeds; a symbolic leading (batch) dim is 1, any other symbolic dim must be given."""

    def __init__(self, specs: Sequence[InputSpec], num: int, seed: int) -> None:
        # A symbol takes one size everywhere it appears; batch symbols (axis 0) default to 1.
        sizes = {d: 1 for s in specs if s.dims for d in s.dims[:1] if isinstance(d, str) and d}
        resolved = []
        for spec in specs:
            if spec.dims is None:
                raise InputError(
                    f"input '{spec.name}' has an unknown shape; give it with --input-shape {spec.name}:1x3x224x224"
                )
            dims: list[int] = []
            for axis, d in enumerate(spec.dims):
                if isinstance(d, int):
                    dims.append(d)
                elif d in sizes or (axis == 0 and d is None):
                    dims.append(sizes.get(d, 1))  # type: ignore[arg-type]
                else:
                    label = f"'{d}'" if d else "of unknown size"
                    example = "x".join(str(x) if isinstance(x, int) else "1" for x in spec.dims)
                    raise InputError(
                        f"input '{spec.name}' has symbolic dim {label} ({spec.shape_text()}); "
                        f"give its size with --input-shape {spec.name}:{example}"
                    )
            if spec.dtype is None or not (_is_float(spec.dtype) or spec.dtype.kind in "iub"):
                raise InputError(f"input '{spec.name}' has type {spec.dtype}; random feeds cover numbers and bools only")
            if tuple(dims) != spec.dims:
                logger.info("random feeds: input '%s' %s as %s", spec.name, spec.shape_text(), spec.shape_text(dims))
            resolved.append(InputSpec(spec.name, spec.dtype, tuple(dims)))
        super().__init__(resolved, f"random feeds (seed {seed})", num)
        self.seed = seed

    def _raw_feeds(self) -> Iterator[Mapping[str, Any]]:
        rng = np.random.default_rng(self.seed)
        for _ in range(self.length or 0):
            feed = {}
            for spec in self.specs:
                shape = tuple(int(d) for d in spec.dims or ())
                dtype = spec.dtype
                assert dtype is not None
                if dtype.kind == "b":
                    feed[spec.name] = rng.integers(0, 2, shape).astype(np.bool_)
                elif dtype.kind in "iu":
                    # 0 or 1: valid as indices into any table, as masks, token types and token ids
                    feed[spec.name] = rng.integers(0, 2, shape).astype(dtype)
                else:
                    feed[spec.name] = rng.standard_normal(shape).astype(np.float32).astype(dtype)
            yield feed


def _import_callable(spec: str) -> Callable[[], Any]:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise InputError(f"cannot import data module '{module_name}': {e}") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise InputError(f"data module '{module_name}' has no callable '{attr}'")
    return function


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------
def load_data(
    spec: str | os.PathLike | Callable[[], Any] | Sequence[Mapping[str, Any]] | FeedSource | None,
    model: ir.Model,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    num_random: int = 4,
    seed: int = 0,
) -> FeedSource:
    """A `FeedSource` for `model` from a path, `module:function`, callable, list of feeds or None.

    The first sample is read and checked here, so a bad spec fails before any pass runs; the
    rest are checked as they are read.
    """
    from onnxpress._data_files import folder_source, npz_source

    specs = _with_overrides(model_inputs(model), input_shapes)
    source: FeedSource
    if spec is None:
        source = _RandomSource(specs, num_random, seed)
    elif isinstance(spec, FeedSource):
        return spec
    elif isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if os.path.isdir(text):
            source = folder_source(text, specs)
        elif os.path.isfile(text):
            if not text.endswith(".npz"):
                raise InputError(f"cannot read data {text}: expected an .npz file, a folder or module:function")
            source = npz_source(text, specs)
        elif re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", text):
            source = _CallableSource(specs, f"data function {text}", _import_callable(text))
        else:
            raise InputError(f"data {text} does not exist (expected an .npz file, a folder or module:function)")
    elif isinstance(spec, Sequence):
        source = _CallableSource(specs, "feed list", spec)  # type: ignore[arg-type]
    elif callable(spec):
        label = getattr(spec, "__qualname__", type(spec).__name__)
        source = _CallableSource(specs, f"data function {label}", spec)
    else:
        raise InputError(f"cannot use a {type(spec).__name__} as data")
    feeds = source.feeds()
    first = next(feeds, None)
    feeds.close()  # releases the open file of a stacked source
    if first is None:
        raise InputError(f"{source.describe()} holds no samples")
    logger.info("data: %s", source.describe())
    return source
