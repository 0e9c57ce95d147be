"""ChannelDependencyAnalysis: which channel slices of which tensors must be removed together.

The analysis walks the main graph in topological order and gives every channel it can follow an
*element*: an integer in a union-find. A value whose channels it tracks carries a `Slot` (the
channel axis and one element per position on it); producers (Conv output channels, Gemm/MatMul
output features with a constant weight) create fresh elements; channel-preserving ops pass their
input's elements on; ops that tie channels together (a residual Add, a depthwise Conv, a shared
weight) *unify* elements; Concat, Split and flattening Reshapes map positions to elements with
offsets and repeats. Every constant slice that belongs to a channel (a weight row or column, a
bias entry, a BatchNorm parameter) is recorded as a `Member` with the elements of its positions.

Removing one element class (a union-find set) therefore removes a consistent set of slices from
every member at once: the model stays valid by construction. Anything the analysis cannot reason
about — an unknown op, a dynamic weight, a subgraph, a graph input or output, a non-constant
Reshape target — *freezes* the elements it touches, with a reason, and frozen classes are never
removed. Per-op rules live in `handlers.py`, looked up by op type (Torch-Pruning's per-op pruners,
made strict for ONNX: ../shared/REFERENCES.md).

Groups (for people and for ratios) are the connected components of the coupling graph, a networkx
graph whose nodes are the element blocks created by producers and whose edges are unifications.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import networkx as nx
import numpy as np
import onnx_ir as ir

from onnxpress.passes.manager import Analysis

__all__ = [
    "Action",
    "Block",
    "ChannelDependencyAnalysis",
    "ChannelDependencies",
    "Group",
    "Member",
    "Slot",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Slot:
    """The tracked channel axis of a value and the element of every position on it."""

    axis: int
    elements: np.ndarray  # int64, one element id per position along `axis`

    def __len__(self) -> int:
        return len(self.elements)


@dataclasses.dataclass
class Member:
    """A constant tensor sliced along `axis` when the elements of its positions are removed."""

    value: ir.Value  # an initializer
    axis: int
    elements: np.ndarray
    node: ir.Node  # the node whose rule created the member
    role: str  # "out-channels", "in-channels", "bias", "norm-param", "operand", ...


@dataclasses.dataclass
class Block:
    """A run of elements created together: a producer's output channels, or untracked channels."""

    start: int
    size: int
    label: str  # e.g. "Conv conv_3 out" — what created them
    node: ir.Node | None
    producer: bool  # True when removing these channels removes weights of `node`


@dataclasses.dataclass
class Action:
    """A rewrite besides slicing (Conv `group`, a Reshape target, Split sizes) run after slicing.

    `apply(keep)` receives `keep(elements) -> bool mask` and edits the model.
    """

    node: ir.Node
    description: str
    apply: Callable[[Callable[[np.ndarray], np.ndarray]], None]


@dataclasses.dataclass
class Group:
    """Coupled blocks: pruning decisions are made per element class inside one group."""

    index: int
    blocks: list[Block]
    classes: list[int]  # union-find roots of this group's elements
    prunable: list[int]  # the classes that may be removed
    frozen_reasons: list[str]
    members: list[Member]

    @property
    def producers(self) -> list[ir.Node]:
        return [b.node for b in self.blocks if b.producer and b.node is not None]

    @property
    def frozen(self) -> bool:
        return not self.prunable

    def describe(self) -> str:
        names = ", ".join(sorted({b.label for b in self.blocks}))
        state = "frozen: " + "; ".join(self.frozen_reasons[:3]) if self.frozen else (
            f"{len(self.prunable)}/{len(self.classes)} channels prunable"
        )
        return f"group {self.index}: {names} — {len(self.members)} members — {state}"


class ChannelDependencies:
    """The result of the analysis, and the API the per-op handlers build it with."""

    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self._parent: list[int] = []
        self._frozen: list[bool] = []
        self.freeze_reasons: dict[int, list[str]] = defaultdict(list)  # element -> reasons
        self.blocks: list[Block] = []
        self._block_of: list[int] = []  # element -> block index
        self.slots: dict[int, Slot] = {}  # id(value) -> slot
        self._values: dict[int, ir.Value] = {}
        self.members: list[Member] = []
        self.actions: list[Action] = []
        #: element sets of which at least one must survive (a Split piece, for example)
        self.require_nonempty: list[np.ndarray] = []
        self.coupling = nx.Graph()
        #: the analysis option it was built with (a recorded plan keeps it for replaying)
        self.allow_lossy_norms = False

    # -- elements ------------------------------------------------------------------------------
    def new_elements(self, n: int, label: str, node: ir.Node | None, *, producer: bool) -> np.ndarray:
        start = len(self._parent)
        self._parent.extend(range(start, start + n))
        self._frozen.extend([False] * n)
        block = Block(start, n, label, node, producer)
        self._block_of.extend([len(self.blocks)] * n)
        self.coupling.add_node(len(self.blocks), label=label, producer=producer)
        self.blocks.append(block)
        return np.arange(start, start + n, dtype=np.int64)

    def untracked(self, n: int, label: str, reason: str) -> np.ndarray:
        """Channels that come from nothing we can prune (a graph input, a constant): frozen."""
        elements = self.new_elements(n, label, None, producer=False)
        self.freeze(elements, reason)
        return elements

    def find(self, e: int) -> int:
        parent = self._parent
        root = e
        while parent[root] != root:
            root = parent[root]
        while parent[e] != root:
            parent[e], e = root, parent[e]
        return root

    def classes_of(self, elements: Iterable[int]) -> np.ndarray:
        return np.fromiter((self.find(int(e)) for e in elements), dtype=np.int64)

    def unify(self, a: np.ndarray, b: np.ndarray, reason: str) -> None:
        """Tie position i of `a` to position i of `b` (same length required)."""
        if len(a) != len(b):
            self.freeze(np.concatenate([a, b]), f"{reason}: channel counts differ ({len(a)} vs {len(b)})")
            return
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx == ry:
                continue
            self._parent[ry] = rx
            if self._frozen[ry]:
                self._frozen[rx] = True
            bx, by = self._block_of[x], self._block_of[y]
            if bx != by:
                self.coupling.add_edge(bx, by, reason=reason)

    def freeze(self, elements: Iterable[int], reason: str) -> None:
        for e in elements:
            root = self.find(int(e))
            if not self._frozen[root]:
                self._frozen[root] = True
            reasons = self.freeze_reasons[root]
            if reason not in reasons:
                reasons.append(reason)

    def is_frozen(self, e: int) -> bool:
        return self._frozen[self.find(int(e))]

    def reasons_by_class(self) -> dict[int, list[str]]:
        """Freeze reasons per class (reasons recorded before later unions are merged in)."""
        out: dict[int, list[str]] = defaultdict(list)
        for element, reasons in self.freeze_reasons.items():
            merged = out[self.find(element)]
            merged.extend(r for r in reasons if r not in merged)
        return out

    # -- slots ---------------------------------------------------------------------------------
    def slot(self, value: ir.Value | None) -> Slot | None:
        return None if value is None else self.slots.get(id(value))

    def set_slot(self, value: ir.Value, slot: Slot) -> None:
        self.slots[id(value)] = slot
        self._values[id(value)] = value

    def slot_values(self) -> list[tuple[ir.Value, Slot]]:
        return [(self._values[k], s) for k, s in self.slots.items()]

    def freeze_value(self, value: ir.Value | None, reason: str) -> None:
        slot = self.slot(value)
        if slot is not None:
            self.freeze(slot.elements, reason)

    # -- members and actions ---------------------------------------------------------------------
    def add_member(self, value: ir.Value, axis: int, elements: np.ndarray, node: ir.Node, role: str) -> None:
        self.members.append(Member(value, axis, np.asarray(elements, dtype=np.int64), node, role))

    def add_action(self, node: ir.Node, description: str, apply: Callable) -> None:
        self.actions.append(Action(node, description, apply))

    # -- results ---------------------------------------------------------------------------------
    def groups(self) -> list[Group]:
        """Connected components of the coupling graph, with their classes and members."""
        by_class = self.reasons_by_class()
        component_of: dict[int, int] = {}
        components = sorted(nx.connected_components(self.coupling), key=min)
        for i, comp in enumerate(components):
            for b in comp:
                component_of[b] = i
        members_by: dict[int, list[Member]] = defaultdict(list)
        for m in self.members:
            if len(m.elements):
                members_by[component_of[self._block_of[int(m.elements[0])]]].append(m)
        groups = []
        for i, comp in enumerate(components):
            blocks = [self.blocks[b] for b in sorted(comp)]
            elements = [e for b in blocks for e in range(b.start, b.start + b.size)]
            classes = sorted({self.find(e) for e in elements})
            has_producer: set[int] = set()
            for b in blocks:
                if b.producer:
                    has_producer.update(self.find(e) for e in range(b.start, b.start + b.size))
            prunable = [c for c in classes if not self._frozen[c] and c in has_producer]
            reasons: list[str] = []
            for c in classes:
                if self._frozen[c]:
                    reasons.extend(r for r in by_class.get(c, ()) if r not in reasons)
            if not has_producer and not reasons:
                reasons.append("no weights produce these channels")
            groups.append(Group(i, blocks, classes, prunable, reasons, members_by.get(i, [])))
        return groups


class ChannelDependencyAnalysis(Analysis):
    """Build `ChannelDependencies` for the main graph (see the module docstring)."""

    def __init__(self, *, allow_lossy_norms: bool = False) -> None:
        self.allow_lossy_norms = allow_lossy_norms

    def compute(self, model: ir.Model, am: Any) -> ChannelDependencies:
        from onnxpress.passes.pruning import handlers

        deps = ChannelDependencies(model)
        deps.allow_lossy_norms = self.allow_lossy_norms
        graph = model.graph
        ctx = handlers.HandlerContext(deps, model, allow_lossy_norms=self.allow_lossy_norms)
        for node in graph:
            handlers.handle(ctx, node)
        for value in graph.outputs:
            deps.freeze_value(value, f"graph output '{value.name}' keeps its shape")
        ctx.check_member_uses()
        return deps
