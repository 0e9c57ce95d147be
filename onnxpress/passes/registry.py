"""The registry: pass names -> pass classes, named pipelines, wrapped onnx_ir passes, plugins.

* `@register_pass` registers an onnxpress `Pass` subclass under its `name`.
* `register_pipeline("O2", text)` registers a named pipeline, usable wherever a pass name is.
* `wrap_ir_pass(name, factory)` puts a pass written for onnx_ir / onnxscript under a name.
* Plugins: every entry point of the group `onnxpress.passes` is loaded on first lookup (an entry
  point may name a module that registers on import, a Pass subclass, or a function to call);
  `load_plugin("pkg.module")` imports a module by name (`--load-plugin`).

Unknown names and options fail with the close matches.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
from collections.abc import Callable
from typing import Any

import onnx_ir as ir

from onnxpress.errors import InputError, PipelineError
from onnxpress.passes.base import NoOptions, Pass, PassResult, options_from_text
from onnxpress.passes.pipeline import PipelineElement, build_pipeline, parse_pipeline

__all__ = [
    "register_pass",
    "register_pipeline",
    "wrap_ir_pass",
    "get_pass",
    "instantiate",
    "load_plugin",
    "list_entries",
    "expand_pipeline_text",
    "ENTRY_POINT_GROUP",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "onnxpress.passes"

_PASSES: dict[str, type[Pass]] = {}
_PIPELINES: dict[str, tuple[str, str]] = {}
_state = {"builtins": False, "entry_points": False, "families": False}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make `cls` available under `cls.name` in pipelines."""
    if not (isinstance(cls, type) and issubclass(cls, Pass)) or not cls.name:
        raise TypeError(f"@register_pass needs a Pass subclass with a name, got {cls!r}")
    existing = _PASSES.get(cls.name)
    if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"pass name '{cls.name}' is already registered by {existing.__module__}.{existing.__qualname__}")
    if cls.name in _PIPELINES:
        raise ValueError(f"'{cls.name}' is already the name of a pipeline")
    _PASSES[cls.name] = cls
    return cls


def register_pipeline(name: str, text: str, description: str = "") -> None:
    """Register a named pipeline (`O2`, a backend's default ...) usable like a pass name."""
    if name in _PASSES:
        raise ValueError(f"'{name}' is already the name of a pass")
    parse_pipeline(text)  # fail early on bad text
    _PIPELINES[name] = (text, description)


def wrap_ir_pass(
    name: str,
    factory: Callable[..., ir.passes.PassBase],
    description: str,
    options: type = NoOptions,
    tolerance: Any = None,
) -> type[Pass]:
    """Register a pass written for onnx_ir / onnxscript under `name`.

    `factory(**options_as_kwargs)` builds the inner pass; the wrapper preserves no analyses.
    """

    def run(self: Pass, model: ir.Model, am: Any) -> PassResult:
        kwargs = {f.name: getattr(self.options, f.name) for f in dataclasses.fields(self.options)}
        inner = factory(**kwargs)
        result = inner(model)
        if result.model is not model:
            raise PipelineError(f"wrapped pass '{name}' is not in place")
        return PassResult(model, bool(result.modified))

    attrs: dict[str, Any] = {"name": name, "Options": options, "run": run, "__doc__": description}
    if tolerance is not None:
        attrs["tolerance"] = tolerance
    cls_name = "".join(part.capitalize() for part in name.split("-")) + "Pass"
    cls = type(cls_name, (Pass,), attrs)
    cls.__module__ = getattr(factory, "__module__", __name__)
    cls.wrapped = factory  # type: ignore[attr-defined]
    return register_pass(cls)


def _ensure_loaded() -> None:
    if not _state["builtins"]:
        _state["builtins"] = True
        importlib.import_module("onnxpress.passes._builtin")
    if not _state["entry_points"]:
        _state["entry_points"] = True
        _load_entry_points()


def _ensure_all_loaded() -> None:
    """Import the built-in pass families that are loaded on demand (see passes/_builtin.py)."""
    _ensure_loaded()
    if not _state["families"]:
        _state["families"] = True
        builtin = importlib.import_module("onnxpress.passes._builtin")
        for module in builtin.LAZY_FAMILIES:
            importlib.import_module(module)


def _load_entry_points() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:  # a broken plugin must not break the tool
            logger.warning("could not load pass plugin %s (%s): %s", ep.name, ep.value, e)
            continue
        _adopt(obj, origin=f"entry point {ep.name}")


def _adopt(obj: Any, origin: str) -> None:
    if isinstance(obj, type) and issubclass(obj, Pass):
        if obj.name not in _PASSES:
            register_pass(obj)
    elif callable(obj) and not isinstance(obj, type):
        obj()
    else:
        logger.debug("plugin %s registered its passes on import", origin)


def reload_entry_points() -> None:
    """Load the entry points again (after installing a plugin in a running process)."""
    _state["entry_points"] = False
    _ensure_loaded()


def load_plugin(module: str) -> None:
    """Import `module` (its `@register_pass` classes register themselves).

    `pkg.mod:obj` registers `obj` (a Pass class, or a function to call); a path ending in `.py`
    is imported from that file.
    """
    _ensure_loaded()
    if module.endswith(".py"):
        _load_plugin_file(module)
        return
    module_name, _, attr = module.partition(":")
    try:
        mod = importlib.import_module(module_name)
    except ImportError as e:
        raise InputError(f"cannot load plugin '{module}': {e}") from None
    if attr:
        if not hasattr(mod, attr):
            raise InputError(f"cannot load plugin '{module}': module has no attribute '{attr}'")
        _adopt(getattr(mod, attr), origin=module)


def _load_plugin_file(path: str) -> None:
    import importlib.util
    import os
    import sys

    if not os.path.isfile(path):
        raise InputError(f"cannot load plugin '{path}': no such file")
    module_name = "onnxpress_plugin_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"cannot load plugin '{path}': not a Python module")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception as e:
        del sys.modules[module_name]
        raise InputError(f"cannot load plugin '{path}': {type(e).__name__}: {e}") from None


def _unknown(name: str) -> PipelineError:
    names = sorted(set(_PASSES) | set(_PIPELINES))
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see --list-passes"
    return PipelineError(f"unknown pass '{name}'{hint}")


def get_pass(name: str) -> type[Pass]:
    _ensure_loaded()
    cls = _PASSES.get(name)
    if cls is None:
        _ensure_all_loaded()
        cls = _PASSES.get(name)
    if cls is None:
        raise _unknown(name)
    return cls


def pipeline_text(name: str) -> str | None:
    _ensure_loaded()
    if name not in _PIPELINES and name not in _PASSES:
        _ensure_all_loaded()
    entry = _PIPELINES.get(name)
    return entry[0] if entry else None


def instantiate(element: PipelineElement) -> list[ir.passes.PassBase]:
    """One parsed element -> pass instances (a named pipeline gives several)."""
    _ensure_loaded()
    if element.name not in _PIPELINES and element.name not in _PASSES:
        _ensure_all_loaded()
    if element.name in _PIPELINES:
        if element.options or element.children is not None:
            raise PipelineError(f"pipeline '{element.name}' takes no options or nested passes")
        return build_pipeline(_PIPELINES[element.name][0])
    cls = get_pass(element.name)
    options = options_from_text(cls, element.options)
    if getattr(cls, "is_adaptor", False):
        children = build_pipeline(element.children or [])
        return [cls(options, children=children)]
    if element.children is not None:
        raise PipelineError(f"pass '{element.name}' is not an adaptor and takes no nested pipeline")
    return [cls(options)]


def expand_pipeline_text(text: str) -> str:
    """The pipeline with every named pipeline expanded and every option shown as built."""
    from onnxpress.passes.manager import pass_text

    return ",".join(pass_text(p) for p in build_pipeline(text))


@dataclasses.dataclass
class RegistryEntry:
    name: str
    kind: str  # "pass", "adaptor", "wrapped", "pipeline"
    description: str
    options: list[tuple[str, str, str]]  # (kebab name, type, default)
    module: str


def list_entries() -> list[RegistryEntry]:
    """Everything the registry knows, sorted by name (what `--list-passes` prints)."""
    _ensure_all_loaded()
    entries = []
    for name, cls in _PASSES.items():
        doc = (cls.__doc__ or "").strip().splitlines()
        opts = []
        for f in dataclasses.fields(cls.Options):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = f.default_factory()  # type: ignore[misc]
            else:
                default = "required"
            from onnxpress.passes.base import format_option_value

            opts.append((f.name.replace("_", "-"), str(f.type), format_option_value(default)))
        kind = "adaptor" if getattr(cls, "is_adaptor", False) else ("wrapped" if hasattr(cls, "wrapped") else "pass")
        entries.append(RegistryEntry(name, kind, doc[0] if doc else "", opts, cls.__module__))
    for name, (text, description) in _PIPELINES.items():
        entries.append(RegistryEntry(name, "pipeline", description or text, [], "onnxpress"))
    return sorted(entries, key=lambda e: e.name.lower())
