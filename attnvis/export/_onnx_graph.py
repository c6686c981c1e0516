"""Finding attention weights in an ONNX graph that attnvis did not make (pure ``onnx``, no torch).

An attention-weight tensor is the output of a ``Softmax`` whose input is
computed from a product of two activations (Q·Kᵀ: ``MatMul``/``Einsum``,
possibly scaled, masked, reshaped or transposed on the way) and whose output
is multiplied with a third activation (V). A Softmax over ``x @ W`` (a
classifier's output, an MoE gate) fails the first test: ``W`` is a constant.
The standard ``Attention`` op (opset 23+) computes them inside; it is asked
for them through its ``qk_matmul_output`` output.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass

import onnx

#: Ops between Q·Kᵀ and the Softmax that keep it "the same scores": scale, mask, bias, softcap, layout.
_BEFORE = frozenset({"Add", "Sub", "Mul", "Div", "Where", "Cast", "Reshape", "Transpose", "Identity", "Squeeze",
                     "Unsqueeze", "Expand", "Neg", "Tanh", "Clip", "Max", "Min", "Slice"})
#: Ops between the Softmax and its product with V: dropout, casts, head masks, layout.
_AFTER = frozenset({"Cast", "Dropout", "Identity", "Reshape", "Transpose", "Mul", "Where", "Squeeze", "Unsqueeze",
                    "Expand"})
_PRODUCTS = frozenset({"MatMul", "Einsum", "FusedMatMul"})
#: Ops whose output is a shape or a constant, never an activation.
_SHAPE_OPS = frozenset({"Shape", "Size", "Constant", "ConstantOfShape", "EyeLike", "RandomNormal", "RandomUniform"})
#: onnxruntime's fused attention ops: they compute the weights inside and cannot return them.
FUSED_CONTRIB = frozenset({"Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention",
                           "PackedMultiHeadAttention", "DecoderMaskedMultiHeadAttention",
                           "DecoderMaskedSelfAttention", "SparseAttention", "QAttention", "LongformerAttention"})
_MAX_HOPS = 16


@dataclass(frozen=True)
class Site:
    """Where one attention layer's weights are.

    Attributes:
        index: the node's position in ``graph.node``.
        op: ``"Softmax"`` or ``"Attention"`` (the opset-23 op).
        tensor: the Softmax's output name; empty for an ``Attention`` node.
        name: the module path the exporter recorded, else the node name.
    """

    index: int
    op: str
    tensor: str
    name: str


class _Graph:
    """Producers, consumers and the constant tensors of one graph."""

    def __init__(self, graph: onnx.GraphProto):
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        self.constant = {t.name for t in graph.initializer} | {""}
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
            for name in node.output:
                self.producer[name] = node
            if node.op_type in _SHAPE_OPS or all(name in self.constant for name in node.input):
                self.constant.update(node.output)

    def activations(self, node: onnx.NodeProto) -> list[str]:
        return [name for name in node.input if name not in self.constant]

    def is_product(self, node: onnx.NodeProto) -> bool:
        """A MatMul-like node of two activations."""
        return node.op_type in _PRODUCTS and len(self.activations(node)) >= 2

    def scores_before(self, tensor: str) -> bool:
        """``tensor`` is Q·Kᵀ, maybe scaled/masked/reshaped on the way."""
        todo, seen = [tensor], set()
        while todo and len(seen) < _MAX_HOPS:
            node = self.producer.get(todo.pop())
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if self.is_product(node):
                return True
            if node.op_type in _BEFORE:
                todo.extend(self.activations(node))
        return False

    def values_after(self, tensor: str) -> bool:
        """``tensor`` reaches a product with another activation (V)."""
        todo, seen = [tensor], set()
        while todo and len(seen) < _MAX_HOPS:
            for node in self.consumers.get(todo.pop(), []):
                if id(node) in seen:
                    continue
                seen.add(id(node))
                if self.is_product(node):
                    return True
                if node.op_type in _AFTER:
                    todo.extend(node.output)
        return False


def layer_name(node: onnx.NodeProto, fallback: str) -> str:
    """The module path the exporter recorded for ``node``.

    The ``torch.export``-based exporter stores the module scopes in the node's
    ``pkg.torch.onnx.name_scopes`` (``['', 'vit', ..., 'vit.layers.0.attention', 'softmax']``);
    the TorchScript-based one names nodes ``/vit/layers.0/attention/Softmax``.
    """
    props = {p.key: p.value for p in node.metadata_props}
    try:
        scopes = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))
    except (ValueError, SyntaxError):
        scopes = []
    if len(scopes) >= 2 and scopes[-2]:
        return str(scopes[-2])
    parts = [p for p in node.name.split("/") if p]
    if len(parts) >= 2:
        return ".".join(parts[:-1])
    return node.name or fallback


def _softmax_axis(node: onnx.NodeProto, opset: int) -> int:
    for attr in node.attribute:
        if attr.name == "axis":
            return int(attr.i)
    return -1 if opset >= 13 else 1


def find_sites(model: onnx.ModelProto) -> list[Site]:
    """Every attention-weight site of the main graph, in graph order.

    Softmaxes are kept here when their axis could be the last; the caller
    checks the rank on a real run (shapes of a foreign graph are often symbolic).
    """
    opset = default_opset(model)
    graph = _Graph(model.graph)
    sites = []
    for i, node in enumerate(model.graph.node):
        if node.domain in ("", "ai.onnx") and node.op_type == "Attention":
            sites.append(Site(i, "Attention", "", layer_name(node, f"attention_{i}")))
        elif (node.op_type == "Softmax" and node.domain in ("", "ai.onnx") and _softmax_axis(node, opset) in (-1, 2, 3)
              and graph.scores_before(node.input[0]) and graph.values_after(node.output[0])):
            sites.append(Site(i, "Softmax", node.output[0], layer_name(node, f"softmax_{i}")))
    return sites


def softmax_axis_is_last(model: onnx.ModelProto, site: Site, rank: int) -> bool:
    """The Softmax at ``site`` normalizes the last axis of its rank-``rank`` input."""
    axis = _softmax_axis(model.graph.node[site.index], default_opset(model))
    return axis in (-1, rank - 1)


def fused_contrib_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """onnxruntime's fused attention nodes (``com.microsoft``), which cannot output weights."""
    return [n for n in model.graph.node if n.domain == "com.microsoft" and n.op_type in FUSED_CONTRIB]


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1
