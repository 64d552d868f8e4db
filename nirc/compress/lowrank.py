"""Low-rank replacement of one layer: Tucker-2 for a kxk Conv, truncated SVD for a 1x1 Conv, Gemm or MatMul.

Tucker-2 (HOSVD on the output and input channel modes): ``W[O, C, kh, kw] ~=
U_out[O, r_o] . G[r_o, r_i, kh, kw] . U_in[C, r_i]^T``, executed as three convs,
1x1 ``C -> r_i``, the original kxk geometry ``r_i -> r_o``, 1x1 ``r_o -> O``
(with the original bias). Because the 1x1 convs are linear per pixel and
commute with padding by zeros, the chain computes ``conv(x, W_approx)`` exactly
up to the truncation. A 1x1 conv or a fully connected layer is a matrix ``W[O, I]
~= (U S)[O, r] V^T[r, I]``: two layers of rank ``r`` (the first one keeps the
stride and pads).

Ranks are multiples of the NPU's brick (``align``): Ethos-U stores feature maps
in 16-channel bricks and computes output channels in blocks, so a rank of 20
costs what 32 costs. The last factor writes the original output tensor, so
everything downstream (and :mod:`nirc.compress.reconstruct`) is unchanged by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from nirc.compress.linear import bias_of, is_linear, weight_of
from nirc.passes._channels import round_down
from nirc.passes._rewrite import Namer

SUFFIXES = ("/lr_in", "/lr_core", "/lr_out")
"""Names of the factor nodes are ``<layer><suffix>``: the report and the cost tables map them back."""


@dataclass(frozen=True)
class Ranks:
    """The ranks of a decomposition: ``core`` is None for a two-factor (SVD) split."""

    first: int
    core: int | None

    def text(self) -> str:
        return f"rank {self.first}" if self.core is None else f"ranks {self.first}/{self.core}"


def decomposable(node: gs.Node) -> bool:
    """Constant-weight Conv (group 1), Gemm or 2-D MatMul with at least two output and input channels."""
    if not is_linear(node):
        return False
    weight = weight_of(node)
    return bool(min(weight.shape[0], weight.shape[1]) >= 2)


def ranks_for(weight_shape: tuple[int, ...], removed: float, align: int) -> Ranks | None:
    """Ranks that remove about ``removed`` of the layer's parameters, rounded down to ``align``.

    None when no aligned rank saves anything (a layer narrower than twice the brick).
    """
    out_ch, in_ch = weight_shape[0], weight_shape[1]
    kernel = int(np.prod(weight_shape[2:])) if len(weight_shape) > 2 else 1
    budget = (1.0 - removed) * out_ch * in_ch * kernel
    if kernel == 1:
        rank = round_down(int(budget / (out_ch + in_ch)), align)
        if rank < 1 or rank * (out_ch + in_ch) >= out_ch * in_ch:
            return None
        return Ranks(rank, None)
    # k * in * (k_in) + kernel * k^2 * in * out + k * out * out = budget, with r_i = k * in, r_o = k * out.
    a, b = kernel * in_ch * out_ch, in_ch * in_ch + out_ch * out_ch
    k = (-b + math.sqrt(b * b + 4 * a * budget)) / (2 * a)
    r_in, r_out = round_down(int(k * in_ch), align), round_down(int(k * out_ch), align)
    if r_in < 1 or r_out < 1 or (r_in >= in_ch and r_out >= out_ch):
        return None
    r_in, r_out = min(r_in, in_ch), min(r_out, out_ch)
    if in_ch * r_in + kernel * r_in * r_out + r_out * out_ch >= out_ch * in_ch * kernel:
        return None
    return Ranks(r_in, r_out)


def _leading(matrix: np.ndarray, rank: int) -> np.ndarray:
    """The ``rank`` leading left singular vectors of a wide ``matrix``, from the eigenvectors of its Gram.

    The Gram matrix is ``rows x rows`` (channels), far smaller than the unfolding for a kxk kernel.
    """
    values, vectors = np.linalg.eigh(matrix @ matrix.T)
    return np.asarray(vectors[:, np.argsort(-values, kind="stable")[:rank]])


def tucker2(weight: np.ndarray, r_in: int, r_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first ``[r_in, C, 1, 1]``, core ``[r_out, r_in, kh, kw]``, last ``[O, r_out, 1, 1]``) by HOSVD."""
    out_ch, in_ch = weight.shape[:2]
    u_out = _leading(weight.reshape(out_ch, -1), r_out)
    u_in = _leading(np.moveaxis(weight, 1, 0).reshape(in_ch, -1), r_in)
    core = np.einsum("ocij,or,cs->rsij", weight, u_out, u_in, optimize=True)
    return u_in.T[:, :, None, None], core, u_out[:, :, None, None]


def svd_split(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(first ``[r, I]``, second ``[O, r]``) with ``second @ first`` the best rank-``r`` approximation.

    Projecting onto the leading singular vectors of the smaller side gives the same product
    (Eckart-Young) with a Gram matrix of ``min(O, I)^2`` entries.
    """
    if matrix.shape[0] <= matrix.shape[1]:
        left = _leading(matrix, rank)
        return left.T @ matrix, left
    right = _leading(matrix.T, rank).T
    return right, matrix @ right.T


def decompose(graph: gs.Graph, node: gs.Node, ranks: Ranks) -> list[gs.Node]:
    """Replace ``node`` in ``graph`` by its factors; returns them in execution order (last writes the output)."""
    weight = weight_of(node)
    bias = bias_of(node, weight.shape[0])
    namer = Namer(graph)
    x, y = node.inputs[0], node.outputs[0]
    base = node.name or node.op
    if node.op == "Conv" and ranks.core is not None:
        first, core, last = tucker2(weight, ranks.first, ranks.core)
        plan = [
            (first, None, {}, "in"),
            (core, None, dict(node.attrs), "core"),
            (last, bias, {}, "out"),
        ]
    elif node.op == "Conv":
        first2, second = svd_split(weight[:, :, 0, 0], ranks.first)
        plan = [
            (first2[:, :, None, None], None, dict(node.attrs), "in"),
            (second[:, :, None, None], bias, {}, "out"),
        ]
    else:
        first2, second = svd_split(weight, ranks.first)
        plan = [(first2, None, {}, "in"), (second, bias, {}, "out")]
    nodes: list[gs.Node] = []
    current = x
    for index, (w, b, attrs, role) in enumerate(plan):
        last_step = index == len(plan) - 1
        if node.op == "Conv":
            attrs.pop("group", None)
            attrs["kernel_shape"] = list(w.shape[2:])
            inputs = [current, namer.constant(f"{base}_lr_{role}_w", w.astype(np.float32))]
            if b is not None:
                inputs.append(namer.constant(f"{base}_lr_{role}_b", b.astype(np.float32)))
            op = "Conv"
        elif node.op == "Gemm":
            inputs = [current, namer.constant(f"{base}_lr_{role}_w", w.astype(np.float32))]
            if b is not None:
                inputs.append(namer.constant(f"{base}_lr_{role}_b", b.astype(np.float32)))
            attrs = {"transB": 1}
            op = "Gemm"
        else:  # MatMul has no bias: the original had none either
            inputs = [current, namer.constant(f"{base}_lr_{role}_w", np.ascontiguousarray(w.T).astype(np.float32))]
            op = "MatMul"
        # Shapes of the new tensors come from the caller's refresh_shapes().
        out = y if last_step else gs.Variable(namer.fresh(f"{base}_lr_{role}"), dtype=np.float32)
        name = namer.fresh(f"{base}/lr_{role}")
        nodes.append(gs.Node(op=op, name=name, attrs=attrs, inputs=inputs, outputs=[out]))
        current = out
    node.outputs.clear()
    node.inputs.clear()
    index = graph.nodes.index(node)
    graph.nodes[index : index + 1] = nodes
    return nodes
