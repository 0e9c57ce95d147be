"""Find multi-head self-attention blocks whose heads can be removed as units.

A block is matched from its Softmax, strictly, in the form torch exports BERT-style attention:

    Q, K, V = MatMul(x, W) [+ bias] -> Reshape [.., H, dh] -> Transpose(s) [-> scalar Mul/Div]
    scores  = MatMul(Q, K) [-> scalar Mul/Div] [-> Add mask] -> Softmax(last axis)
    context = MatMul(probs, V) -> Transpose(s) -> Reshape [.., H*dh] -> MatMul(., Wo) [+ bias]

Heads are blocks of `dh` consecutive columns of Wq, Wk, Wv (and bias entries) and of `dh`
consecutive rows of Wo; every head-batched tensor in between carries the heads on one axis. A
block is refused, with a reason, when anything deviates: an op not in the list above, a value of
the block read by any other node or a graph output (that includes `Shape` of a block value), a
weight shared with other nodes, a Reshape target whose head-dependent entries are not constants,
a mask that may differ per head, a Softmax over another axis. `heads_axes` lists every value
whose shape carries the head count (or H*dh), so that a rewrite can update them.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import onnx_ir as ir

from onnxpress.passes.cleanup import _util as u
from onnxpress.passes.cleanup._shape_values import ShapeValues, dim_key
from onnxpress.passes.pruning._attention_values import broadcast_dim, depends_on

__all__ = ["AttentionBlock", "Projection", "TargetEdit", "find_attention_blocks"]

logger = logging.getLogger(__name__)

_SCALE_OPS = ("Mul", "Div")


class NoMatch(Exception):
    """Raised inside the matcher; the message says why the block is left alone."""


@dataclasses.dataclass
class TargetEdit:
    """One literal entry of a Reshape target that encodes H (`unit=1`) or H*dh (`unit=dh`).

    The entry sits at `offset` in input `index` of `holder`: the Reshape itself (constant target)
    or a Concat building the target from pieces.
    """

    reshape: ir.Node
    holder: ir.Node
    index: int
    offset: int
    unit: int


@dataclasses.dataclass
class Projection:
    """One of Q, K, V: `x @ weight (+ bias)`, split into heads by `reshape`."""

    matmul: ir.Node
    weight: ir.Value  # [D_in, H*dh]
    bias_add: ir.Node | None
    bias: ir.Value | None  # [H*dh]
    reshape: ir.Node
    chain: list[ir.Node]  # Transposes and scalar Mul/Div between the Reshape and the score MatMul


@dataclasses.dataclass
class AttentionBlock:
    name: str
    num_heads: int
    head_dim: int
    q: Projection
    k: Projection
    v: Projection
    scores: ir.Node  # MatMul(Q, K)
    score_ops: list[ir.Node]  # scalar Mul/Div and the mask Add, in order
    softmax: ir.Node
    context: ir.Node  # MatMul(probs, V)
    out_chain: list[ir.Node]  # Transposes back to [B, S, H, dh]
    merge: ir.Node  # Reshape to [.., H*dh]
    out_matmul: ir.Node
    out_weight: ir.Value  # [H*dh, D_out]
    out_bias: ir.Value | None  # [D_out] of the Add right after out_matmul, if any
    heads_axes: list[tuple[ir.Value, int, int]]  # (value, axis, unit): dim = heads * unit
    target_edits: list[TargetEdit]

    @property
    def projections(self) -> tuple[Projection, Projection, Projection]:
        return self.q, self.k, self.v

    @property
    def nodes(self) -> list[ir.Node]:
        out: list[ir.Node] = []
        for p in self.projections:
            out += [p.matmul] + ([p.bias_add] if p.bias_add else []) + [p.reshape] + p.chain
        return out + [self.scores, *self.score_ops, self.softmax, self.context, *self.out_chain, self.merge,
                      self.out_matmul]


def find_attention_blocks(model: ir.Model) -> tuple[list[AttentionBlock], dict[str, str]]:
    """Every attention block of the main graph, and {softmax name: reason} for those refused."""
    graph = model.graph
    opset = u.default_opset(model)
    shapes = ShapeValues()
    blocks: list[AttentionBlock] = []
    refused: dict[str, str] = {}
    for node in graph:
        if not u.is_onnx_op(node, "Softmax"):
            continue
        try:
            block = _Matcher(graph, opset, shapes).match(node)
        except NoMatch as e:
            label = node.name or node.outputs[0].name
            refused[label] = str(e)
            logger.debug("attention at %s not matched: %s", label, e)
            continue
        blocks.append(block)
    return blocks, refused


# ----------------------------------------------------------------------------------------------
class _Matcher:
    def __init__(self, graph: ir.Graph, opset: int, shapes: ShapeValues) -> None:
        self.graph = graph
        self.opset = opset
        self.shapes = shapes

    # -- small checks --------------------------------------------------------------------------
    def producer(self, value: ir.Value | None, *ops: str) -> ir.Node:
        node = None if value is None else value.producer()
        if node is None or not u.is_onnx_op(node, *ops) or u.has_ref_attrs(node):
            found = "a graph input or constant" if node is None else node.op_type
            raise NoMatch(f"expected {'/'.join(ops)} before '{value.name if value else '?'}', found {found}")
        return node

    def initializer(self, value: ir.Value | None, what: str, ndim: int) -> np.ndarray:
        if value is None or value.is_graph_input() or value.is_graph_output() or \
                self.graph.initializers.get(value.name) is not value:
            raise NoMatch(f"{what} is not an initializer")
        array = u.const_array(value)
        if array is None or array.ndim != ndim or array.dtype.kind != "f":
            raise NoMatch(f"{what} '{value.name}' is not a float tensor of rank {ndim}")
        if len({n for n, _ in value.uses()}) != 1 or len(value.uses()) != 1:
            raise NoMatch(f"{what} '{value.name}' is read by other nodes")
        return array

    def scale_input(self, node: ir.Node | None) -> ir.Value | None:
        """The non-constant input of a Mul/Div by a one-element float constant, else None."""
        if node is None or not u.is_onnx_op(node, *_SCALE_OPS) or len(node.inputs) != 2:
            return None
        a, b = node.inputs
        for chain, other in ((a, b), (b, a)):
            if node.op_type == "Div" and chain is not a:
                continue
            array = u.const_array(other)
            if chain is not None and array is not None and array.size == 1 and array.ndim <= 4 \
                    and array.dtype.kind == "f" and u.const_array(chain) is None:
                return chain
        return None

    # -- the match -------------------------------------------------------------------------------
    def match(self, softmax: ir.Node) -> AttentionBlock:
        axis = u.attr_int(softmax, "axis", -1 if self.opset >= 13 else 1)
        if axis not in (-1, 3):
            raise NoMatch(f"Softmax over axis {axis}, not the last of a 4-D tensor")
        # scores path, walked back from the Softmax
        score_ops: list[ir.Node] = []
        value = softmax.inputs[0]
        mask: ir.Value | None = None
        while True:
            node = value.producer() if value is not None else None
            if node is None:
                raise NoMatch("Softmax input does not come from a MatMul of Q and K")
            if u.is_onnx_op(node, "MatMul"):
                break
            scaled = self.scale_input(node)
            if scaled is not None:
                score_ops.insert(0, node)
                value = scaled
                continue
            if u.is_onnx_op(node, "Add") and mask is None and len(node.inputs) == 2:
                score_ops.insert(0, node)
                # the operand reached from the score MatMul (through scalar scales) is the scores
                a, b = node.inputs
                value, mask = (a, b) if self._leads_to_scores(a) else (b, a)
                continue
            raise NoMatch(f"{node.op_type} '{node.name}' between the scores and the Softmax")
        scores = node
        if scores.outputs[0] is not value:
            raise NoMatch("unexpected wiring of the scores")
        q_value, k_value = scores.inputs
        q, q_labels = self.projection(q_value, "Q")
        k, k_labels = self.projection(k_value, "K")
        probs = softmax.outputs[0]
        users = probs.uses()
        if len(users) != 1 or not u.is_onnx_op(users[0][0], "MatMul") or users[0][1] != 0:
            raise NoMatch("Softmax output does not feed one MatMul with V")
        context = users[0][0]
        v, v_labels = self.projection(context.inputs[1], "V")
        if len({id(n) for p in (q, k, v) for n in (p.matmul, p.reshape)}) != 6:
            raise NoMatch("Q, K and V share a projection or a Reshape")
        batch = q_labels[:2]
        if sorted(batch) != ["b", "h"] or q_labels[2:] != ["s", "d"]:
            raise NoMatch(f"Q arrives as {''.join(q_labels)}, expected bhsd")
        if k_labels != batch + ["d", "s"]:
            raise NoMatch(f"K arrives as {''.join(k_labels)}, expected {''.join(batch)}ds")
        if v_labels != batch + ["s", "d"]:
            raise NoMatch(f"V arrives as {''.join(v_labels)}, expected {''.join(batch)}sd")
        head_axis = batch.index("h")
        if mask is not None:
            self.check_mask(mask, head_axis)
        # back to [B, S, H*dh] and the output projection
        out_chain: list[ir.Node] = []
        labels = batch + ["s", "d"]
        value = context.outputs[0]
        while True:
            node = self.only_user(value)
            if u.is_onnx_op(node, "Transpose"):
                perm = u.attr_ints(node, "perm")
                if perm is None or sorted(perm) != [0, 1, 2, 3]:
                    raise NoMatch(f"Transpose '{node.name}' without a 4-D perm")
                labels = [labels[p] for p in perm]
                out_chain.append(node)
                value = node.outputs[0]
                continue
            break
        if not u.is_onnx_op(node, "Reshape") or node.inputs[0] is not value:
            raise NoMatch(f"{node.op_type} '{node.name}' after the attention context")
        if labels != ["b", "s", "h", "d"]:
            raise NoMatch(f"context reaches the merging Reshape as {''.join(labels)}, expected bshd")
        merge = node
        out_matmul = self.only_user(merge.outputs[0])
        if not u.is_onnx_op(out_matmul, "MatMul") or out_matmul.inputs[0] is not merge.outputs[0]:
            raise NoMatch("the merged heads do not feed an output projection MatMul")
        wo = self.initializer(out_matmul.inputs[1], "output projection weight", 2)
        # head count and size from the Q/K/V weights and targets
        width = None
        for p in (q, k, v):
            w = p.weight.const_value.shape[1]
            if width is not None and w != width:
                raise NoMatch("Q, K and V widths differ")
            width = w
        if wo.shape[0] != width:
            raise NoMatch(f"output projection takes {wo.shape[0]} features, heads give {width}")
        edits: list[TargetEdit] = []
        heads = dh = None
        for p in (q, k, v):
            h, d, e = self.split_target(p.reshape, width)
            if heads is not None and (h, d) != (heads, dh):
                raise NoMatch("Q, K and V are split into different heads")
            heads, dh = h, d
            edits += e
        assert heads is not None and dh is not None
        edits += self.merge_target(merge, heads, dh)
        out_bias = None
        bias_add = self.only_user(out_matmul.outputs[0], strict=False)
        if bias_add is not None and u.is_onnx_op(bias_add, "Add") and len(bias_add.inputs) == 2:
            other = bias_add.inputs[1] if bias_add.inputs[0] is out_matmul.outputs[0] else bias_add.inputs[0]
            array = u.const_array(other)
            if array is not None and array.shape == (wo.shape[1],) and self.graph.initializers.get(other.name) is other \
                    and len(other.uses()) == 1 and not other.is_graph_output():
                out_bias = other
        block = AttentionBlock(
            name=_block_name([q.matmul, k.matmul, v.matmul, out_matmul]),
            num_heads=heads, head_dim=dh, q=q, k=k, v=v, scores=scores, score_ops=score_ops, softmax=softmax,
            context=context, out_chain=out_chain, merge=merge, out_matmul=out_matmul,
            out_weight=out_matmul.inputs[1], out_bias=out_bias, heads_axes=[], target_edits=edits,
        )
        block.heads_axes = self.heads_axes(block, head_axis)
        self.check_uses(block)
        return block

    def _leads_to_scores(self, value: ir.Value | None) -> bool:
        node = value.producer() if value is not None else None
        while node is not None and self.scale_input(node) is not None:
            node = self.scale_input(node).producer()
        return node is not None and u.is_onnx_op(node, "MatMul") and u.const_array(node.inputs[1]) is None

    def only_user(self, value: ir.Value, strict: bool = True) -> ir.Node | None:
        users = {n for n, _ in value.uses()}
        if len(users) != 1 or value.is_graph_output():
            if not strict:
                return None
            raise NoMatch(f"'{value.name}' is read by {len(users)} nodes" +
                          (" and is a graph output" if value.is_graph_output() else ""))
        return next(iter(users))

    def projection(self, value: ir.Value, which: str) -> tuple[Projection, list[str]]:
        """Walk back from the score/context MatMul operand to `x @ W (+ b)`; the axis labels."""
        chain: list[ir.Node] = []
        while True:
            node = self.producer(value, "Transpose", "Reshape", *_SCALE_OPS)
            if node.op_type == "Reshape":
                break
            if node.op_type == "Transpose":
                chain.insert(0, node)
                value = node.inputs[0]
            elif self.scale_input(node) is not None:
                chain.insert(0, node)
                value = self.scale_input(node)
            else:
                raise NoMatch(f"{node.op_type} '{node.name}' on the {which} path is not a scalar scale")
        reshape = node
        labels = ["b", "s", "h", "d"]
        for t in chain:
            if t.op_type == "Transpose":
                perm = u.attr_ints(t, "perm")
                if perm is None or sorted(perm) != [0, 1, 2, 3]:
                    raise NoMatch(f"Transpose '{t.name}' on the {which} path without a 4-D perm")
                labels = [labels[p] for p in perm]
        value = reshape.inputs[0]
        node = self.producer(value, "Add", "MatMul")
        bias_add = bias = None
        if node.op_type == "Add":
            bias_add = node
            a, b = node.inputs
            bias, value = (a, b) if u.const_array(a) is not None else (b, a)
            self.initializer(bias, f"{which} bias", 1)
            node = self.producer(value, "MatMul")
        weight = node.inputs[1]
        w = self.initializer(weight, f"{which} weight", 2)
        if bias is not None and bias.const_value.shape[0] != w.shape[1]:
            raise NoMatch(f"{which} bias does not match the projection width")
        if u.const_array(node.inputs[0]) is not None:
            raise NoMatch(f"{which} projection input is a constant")
        return Projection(node, weight, bias_add, bias, reshape, chain), labels

    # -- Reshape targets ---------------------------------------------------------------------------
    def target_entries(self, reshape: ir.Node) -> list[tuple[object, bool, ir.Node, int, int]]:
        """(element, is literal, holder, input index, offset) for every entry of a Reshape target.

        An element is an int, or the dim key of a runtime dim (see `ShapeValues`)."""
        target = reshape.inputs[1]
        array = u.const_array(target)
        if array is not None:
            return [(int(x), True, reshape, 1, i) for i, x in enumerate(array.reshape(-1).tolist())]
        concat = target.producer() if target is not None else None
        if concat is None or not u.is_onnx_op(concat, "Concat") or u.attr_int(concat, "axis", 0) not in (0, -1):
            raise NoMatch(f"Reshape '{reshape.name}' has a target that is neither constant nor a Concat")
        entries: list[tuple[object, bool, ir.Node, int, int]] = []
        for index, piece in enumerate(concat.inputs):
            array = u.const_array(piece)
            if array is not None and array.ndim == 1:
                entries += [(int(x), True, concat, index, i) for i, x in enumerate(array.tolist())]
                continue
            got = self.shapes.get(piece)
            if got is None or got[1]:
                raise NoMatch(f"Reshape '{reshape.name}': target piece '{piece.name}' is not a shape computation")
            entries += [(e, False, concat, index, i) for i, e in enumerate(got[0])]
        return entries

    def split_target(self, reshape: ir.Node, width: int) -> tuple[int, int, list[TargetEdit]]:
        """Heads and head size of a [B, S, H*dh] -> [B, S, H, dh] Reshape, and the entries to rewrite."""
        entries = self.target_entries(reshape)
        if len(entries) != 4:
            raise NoMatch(f"Reshape '{reshape.name}' does not split into [B, S, H, dh]")
        (eh, h_lit, *h_at), (ed, d_lit, *_) = entries[2], entries[3]
        eh = eh if h_lit else None
        ed = ed if d_lit else None
        if eh is not None and ed is not None and eh > 0 and ed > 0 and eh * ed == width:
            heads, dh = eh, ed  # the product of the last two entries is the width: B and S follow
        else:
            if ed is not None and ed > 0 and width % ed == 0 and eh == -1:
                heads, dh = width // ed, ed
            elif eh is not None and eh > 0 and width % eh == 0 and ed == -1:
                heads, dh = eh, width // eh
            else:
                raise NoMatch(f"Reshape '{reshape.name}': head count and size are not constant entries")
            # the inferred entry is H or dh only when the first two entries are B and S
            data = reshape.inputs[0]
            if data.shape is None or len(data.shape) != 3:
                raise NoMatch(f"Reshape '{reshape.name}': input rank unknown")
            for i, (e, literal, *_rest) in enumerate(entries[:2]):
                copies = (literal and e == 0 and not u.attr_int(reshape, "allowzero", 0)) or e == dim_key(data, i)
                if not copies:
                    raise NoMatch(f"Reshape '{reshape.name}': target entry {i} is not the input's dim {i}")
        edits = [TargetEdit(reshape, h_at[0], h_at[1], h_at[2], 1)] if eh is not None and eh > 0 else []
        return heads, dh, edits

    def merge_target(self, reshape: ir.Node, heads: int, dh: int) -> list[TargetEdit]:
        """The entries to rewrite in a [B, S, H, dh] -> [.., H*dh] Reshape (the last one, if literal)."""
        entries = self.target_entries(reshape)
        if len(entries) < 2:
            raise NoMatch(f"Reshape '{reshape.name}' does not merge the heads")
        last, literal, *at = entries[-1]
        if not literal or last not in (-1, heads * dh):
            raise NoMatch(f"Reshape '{reshape.name}': the merged size is not a constant -1 or {heads * dh}")
        for i, (e, lit, *_rest) in enumerate(entries[:-1]):
            if lit and e == 0 and (i >= 2 or u.attr_int(reshape, "allowzero", 0)):
                raise NoMatch(f"Reshape '{reshape.name}' copies a head dim")
            if lit and last == -1 and e == -1:
                raise NoMatch(f"Reshape '{reshape.name}': two inferred entries")
        # Entries other than the last do not depend on H (checked with the uses), so the last one
        # resolves to (H - k) * dh after pruning exactly as it resolved to H * dh before.
        return [TargetEdit(reshape, at[0], at[1], at[2], dh)] if last > 0 else []

    # -- the mask ------------------------------------------------------------------------------
    def check_mask(self, mask: ir.Value, head_axis: int) -> None:
        """The additive mask must broadcast over the heads: size 1 (or absent) on that axis."""
        rank = len(mask.shape) if mask.shape is not None else None
        if rank is None:
            raise NoMatch("mask rank unknown")
        if rank > 4:
            raise NoMatch("mask has more axes than the scores")
        from_right = 4 - head_axis
        if rank < from_right:
            return
        dim = broadcast_dim(mask, rank - from_right, self.shapes, 0)
        if dim != 1:
            raise NoMatch(f"mask '{mask.name}' may differ per head (size {dim if dim is not None else '?'})")

    # -- shapes and uses -----------------------------------------------------------------------
    def heads_axes(self, block: AttentionBlock, head_axis: int) -> list[tuple[ir.Value, int, int]]:
        dh = block.head_dim
        out: list[tuple[ir.Value, int, int]] = []
        for p in block.projections:
            out.append((p.matmul.outputs[0], -1, dh))
            if p.bias_add is not None:
                out.append((p.bias_add.outputs[0], -1, dh))
            labels = ["b", "s", "h", "d"]
            out.append((p.reshape.outputs[0], 2, 1))
            for n in p.chain:
                if n.op_type == "Transpose":
                    labels = [labels[i] for i in u.attr_ints(n, "perm")]
                out.append((n.outputs[0], labels.index("h"), 1))
        for n in [block.scores, *block.score_ops, block.softmax, block.context]:
            out.append((n.outputs[0], head_axis, 1))
        labels = ["b", "h", "s", "d"] if head_axis == 1 else ["h", "b", "s", "d"]
        for n in block.out_chain:
            labels = [labels[i] for i in u.attr_ints(n, "perm")]
            out.append((n.outputs[0], labels.index("h"), 1))
        out.append((block.merge.outputs[0], -1, dh))
        return out

    def check_uses(self, block: AttentionBlock) -> None:
        """No value whose shape changes may be read outside the block or be a graph output;
        no dynamic target piece may depend on such a value."""
        inside = {id(n) for n in block.nodes}
        changing = {id(v) for v, _, _ in block.heads_axes}
        for value, _, _ in block.heads_axes:
            if value.is_graph_output():
                raise NoMatch(f"'{value.name}' is a graph output")
            for user, _ in value.uses():
                if id(user) not in inside:
                    raise NoMatch(f"'{value.name}' is also read by {user.op_type} '{user.name}'")
        mask_add = next((n for n in block.score_ops if n.op_type == "Add"), None)
        if mask_add is not None and any(depends_on(x, changing) for x in mask_add.inputs if id(x) not in changing):
            raise NoMatch("the mask is computed from the attention itself")
        for reshape in [p.reshape for p in block.projections] + [block.merge]:
            if u.const_array(reshape.inputs[1]) is None:
                for piece in reshape.inputs[1].producer().inputs:
                    if depends_on(piece, changing):
                        raise NoMatch(f"Reshape '{reshape.name}': target depends on a value whose heads change")


def _block_name(nodes: list[ir.Node]) -> str:
    names = [n.name for n in nodes if n.name]
    if len(names) == len(nodes):
        prefix = os.path.commonprefix(names)
        prefix = prefix[: prefix.rfind("/")] if "/" in prefix else prefix.rstrip("._/")
        if prefix:
            return prefix
    return f"attention@{nodes[0].name or nodes[0].outputs[0].name}"
