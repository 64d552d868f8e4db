"""Low-rank replacement of one layer: Tucker-2 for a kxk Conv, truncated SVD for a 1x1 Conv, Gemm or MatMul.

Tucker-2 (HOSVD on the output and input channel modes): ``W[O, C, kh, kw] ~=
U_out[O, r_o] . G[r_o, r_i, kh, kw] . U_in[C, r_i]^T``, executed as three convs,
1x1 ``C -> r_i``, the original kxk geometry ``r_i -> r_o``, 1x1 ``r_o -> O``
(with the original bias). Because the 1x1 convs are linear per pixel and
commute with padding by zeros, the chain computes ``conv(x, W_approx)`` exactly
up to the truncation.

CP (rank ``R``, by alternating least squares: ``W[o, c, y, x] ~= sum_r A[o, r]
B[c, r] Ky[y, r] Kx[x, r]``) runs as four convs: 1x1 ``C -> R``, depthwise kx1,
depthwise 1xk (each with its axis' stride, padding and dilation), 1x1 ``R -> O``.
At equal parameters it is not generally faster on Ethos-U (depthwise convs run
at a fraction of the MAC rate): ``benchmarks/results/lowrank_forms.md`` measures
it 1.4-2.5x slower than Tucker-2 at 28x28 and above and at 4x4, up to 1.5x faster
at 14x14. So it is a second form of the same level, used where Vela says it
is cheaper (:func:`nirc.compress.search.choose_forms`).

A 1x1 conv or a fully connected layer is a matrix ``W[O, I]
~= (U S)[O, r] V^T[r, I]``: two layers of rank ``r`` (the first one keeps the
stride and pads).

Ranks are multiples of the NPU's brick (``align``): Ethos-U stores feature maps
in 16-channel bricks and computes output channels in blocks, so a rank of 20
costs what 32 costs. The last factor writes the original output tensor, so
everything downstream (and :mod:`nirc.compress.reconstruct`) is unchanged by name.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from nirc.compress.linear import bias_of, is_linear, weight_of
from nirc.passes._channels import round_down
from nirc.passes._rewrite import Namer

SUFFIXES = ("/lr_in", "/lr_core", "/lr_h", "/lr_w", "/lr_out")
"""Names of the factor nodes are ``<layer><suffix>``: the report and the cost tables map them back."""


@dataclass(frozen=True)
class Ranks:
    """The ranks of a decomposition: ``core`` is None for a two-factor (SVD) split."""

    first: int
    core: int | None
    cp: bool = False

    def text(self) -> str:
        if self.cp:
            return f"CP rank {self.first}"
        return f"rank {self.first}" if self.core is None else f"ranks {self.first}/{self.core}"


def decomposable(node: gs.Node) -> bool:
    """Constant-weight Conv (group 1), Gemm or 2-D MatMul with at least two output and input channels."""
    if not is_linear(node):
        return False
    weight = weight_of(node)
    return bool(min(weight.shape[0], weight.shape[1]) >= 2)


def cp_capable(node: gs.Node) -> bool:
    """A group-1 Conv with a 2-D kernel larger than 1x1 and explicit padding (CP splits it per axis)."""
    if node.op != "Conv" or not decomposable(node):
        return False
    shape = weight_of(node).shape
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    return len(shape) == 4 and shape[2] * shape[3] > 1 and int(node.attrs.get("group", 1)) == 1 and auto_pad == "NOTSET"


def ranks_for(weight_shape: tuple[int, ...], removed: float, align: int, cp: bool = False) -> Ranks | None:
    """Ranks that remove about ``removed`` of the layer's parameters, rounded down to ``align``.

    None when no aligned rank saves anything (a layer narrower than twice the brick).
    """
    out_ch, in_ch = weight_shape[0], weight_shape[1]
    if cp:
        if len(weight_shape) != 4:
            return None
        per_rank = out_ch + in_ch + weight_shape[2] + weight_shape[3]
        full = out_ch * in_ch * weight_shape[2] * weight_shape[3]
        rank = round_down(int((1.0 - removed) * full / per_rank), align)
        return Ranks(rank, None, cp=True) if rank >= 1 and rank * per_rank < full else None
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


def cp_als(weight: np.ndarray, rank: int, sweeps: int = 40, tol: float = 1e-7) -> list[np.ndarray]:
    """Factors ``[A (O, R), B (C, R), Ky (kh, R), Kx (kw, R)]`` of a rank-``R`` CP fit of ``weight``.

    Alternating least squares from a deterministic start (leading singular vectors of each mode,
    seeded random columns beyond a mode's size), until the relative squared error changes by less
    than ``tol`` or after ``sweeps``; the output factor carries the scale.
    """
    modes = weight.ndim
    rng = np.random.default_rng(0)
    factors: list[np.ndarray] = []
    for mode in range(modes):
        unfold = np.moveaxis(weight, mode, 0).reshape(weight.shape[mode], -1).astype(np.float64)
        lead = _leading(unfold, min(rank, weight.shape[mode]))
        extra = rng.standard_normal((weight.shape[mode], rank - lead.shape[1])) / math.sqrt(weight.shape[mode])
        factors.append(np.concatenate([lead, extra], axis=1))
    letters = "abcd"[:modes]
    norm2 = float(np.sum(weight.astype(np.float64) ** 2))
    previous = math.inf
    for _ in range(sweeps):
        for mode in range(modes):
            others = [m for m in range(modes) if m != mode]
            gram = np.ones((rank, rank))
            for m in others:
                gram *= factors[m].T @ factors[m]
            spec = f"{letters},{','.join(letters[m] + 'r' for m in others)}->{letters[mode]}r"
            mttkrp = np.einsum(spec, weight, *(factors[m] for m in others), optimize=True)
            factors[mode] = np.linalg.solve(gram + 1e-12 * np.trace(gram) / rank * np.eye(rank), mttkrp.T).T
        # ||W - R||^2 = ||W||^2 - 2 <W, R> + ||R||^2, from the last mode's products (no full tensor).
        full_gram = gram * (factors[-1].T @ factors[-1])
        error = max(0.0, norm2 - 2.0 * float(np.sum(mttkrp * factors[-1])) + float(np.sum(full_gram))) / norm2
        for mode in range(1, modes):
            norms = np.linalg.norm(factors[mode], axis=0)
            norms[norms == 0] = 1.0
            factors[mode] = factors[mode] / norms
            factors[0] = factors[0] * norms
        if previous - error < tol:
            break
        previous = error
    return factors


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
    if ranks.cp:
        plan = _cp_plan(node, weight, bias, ranks.first)
    elif node.op == "Conv" and ranks.core is not None:
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
            group = int(attrs.pop("group", 1))  # type: ignore[call-overload]
            if group != 1:  # CP's depthwise factors
                attrs["group"] = group
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


_CP_MEMO: dict[tuple[bytes, tuple[int, ...], int], list[np.ndarray]] = {}
_CP_MEMO_SIZE = 64


def _cp_memo(weight: np.ndarray, rank: int) -> list[np.ndarray]:
    """:func:`cp_als`, remembered by the kernel's bytes: the search decomposes the same kernel at the
    same rank in its cost probe, its sensitivity run and the final model (ALS takes seconds a layer)."""
    key = (hashlib.sha256(np.ascontiguousarray(weight, dtype=np.float32).tobytes()).digest(), weight.shape, rank)
    found = _CP_MEMO.get(key)
    if found is None:
        found = cp_als(weight.astype(np.float64), rank)
        if len(_CP_MEMO) >= _CP_MEMO_SIZE:
            _CP_MEMO.pop(next(iter(_CP_MEMO)))
        _CP_MEMO[key] = found
    return found


def _cp_plan(
    node: gs.Node, weight: np.ndarray, bias: np.ndarray, rank: int
) -> list[tuple[np.ndarray, np.ndarray | None, dict[str, object], str]]:
    """The four convs of a CP factorisation, each axis with its own stride, padding and dilation."""
    a, b, ky, kx = _cp_memo(weight, rank)
    strides = list(node.attrs.get("strides", [1, 1]))
    pads = list(node.attrs.get("pads", [0, 0, 0, 0]))
    dilations = list(node.attrs.get("dilations", [1, 1]))
    column: dict[str, object] = {"strides": [strides[0], 1], "pads": [pads[0], 0, pads[2], 0],
                                 "dilations": [dilations[0], 1], "group": rank}  # fmt: skip
    row: dict[str, object] = {"strides": [1, strides[1]], "pads": [0, pads[1], 0, pads[3]],
                              "dilations": [1, dilations[1]], "group": rank}  # fmt: skip
    return [
        (b.T[:, :, None, None], None, {}, "in"),
        (ky.T[:, None, :, None], None, column, "h"),
        (kx.T[:, None, None, :], None, row, "w"),
        (a[:, :, None, None], bias, {}, "out"),
    ]
