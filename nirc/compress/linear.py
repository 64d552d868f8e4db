"""Least-squares fitting of one linear layer (Conv with ``group=1``, Gemm, MatMul) to target activations.

Why normal equations: a layer's refit is ``min ||X W - Y||`` with ``X`` the im2col
of its input on the calibration samples. ``X`` has tens of thousands of rows and
up to ``C*k*k`` (4,608 for a 512-channel 3x3 conv) columns; accumulating
``X^T X`` and ``X^T Y`` in row chunks keeps memory at ``cols^2`` instead of
``rows * cols`` and lets every row be used. A ridge term scaled to the data
(unit-free) keeps the system well posed when fewer distinct rows than columns
exist (late layers at 2x2 resolution).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from nirc.passes._rewrite import const_value, input_at
from nirc.passes.prune_channels import _patches as im2col

CHUNK_ROWS = 8192


def weight_of(node: gs.Node) -> np.ndarray:
    """The node's weight as ``[out, in, *kernel]`` (Gemm/MatMul: ``[out, in]``)."""
    weight = const_value(input_at(node, 1))
    if weight is None:
        raise ValueError(f"{node.name}: weight is not a constant")
    if node.op == "Gemm":
        return np.asarray(weight if node.attrs.get("transB", 0) else weight.T, dtype=np.float64)
    if node.op == "MatMul":
        return np.asarray(weight.T, dtype=np.float64)
    return np.asarray(weight, dtype=np.float64)


def bias_of(node: gs.Node, out_channels: int) -> np.ndarray:
    """The node's bias (zeros when it has none); Gemm's ``beta`` and ``alpha`` are not modelled."""
    if node.op == "MatMul":
        return np.zeros(out_channels)
    bias = const_value(input_at(node, 2))
    if bias is None:
        return np.zeros(out_channels)
    return np.broadcast_to(np.asarray(bias, dtype=np.float64).reshape(-1), (out_channels,)).copy()


def is_linear(node: gs.Node) -> bool:
    """A layer this module can fit: constant weights, Conv with group 1 and explicit pads, plain Gemm/MatMul."""
    if node.op == "Conv":
        weight = const_value(input_at(node, 1))
        return (
            weight is not None
            and weight.ndim == 4
            and int(node.attrs.get("group", 1)) == 1
            and node.attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")
        )
    if node.op == "Gemm":
        return (
            const_value(input_at(node, 1)) is not None
            and not node.attrs.get("transA", 0)
            and float(node.attrs.get("alpha", 1.0)) == 1.0
            and float(node.attrs.get("beta", 1.0)) == 1.0
        )
    if node.op == "MatMul":
        weight = const_value(input_at(node, 1))
        return weight is not None and weight.ndim == 2
    return False


def design(node: gs.Node, x: np.ndarray, weight_shape: Sequence[int]) -> np.ndarray:
    """Rows = output positions, columns = the weight's input elements (im2col for a Conv)."""
    if node.op == "Conv":
        cols = im2col(node, x, weight_shape)
        if cols is None:
            raise ValueError(f"{node.name}: unsupported Conv geometry")
        return np.asarray(cols)
    return np.asarray(x.reshape(-1, x.shape[-1]))


def targets(node: gs.Node, y: np.ndarray) -> np.ndarray:
    """Output activations as rows matching :func:`design` (channels last)."""
    if node.op == "Conv":
        return np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])
    return np.asarray(y.reshape(-1, y.shape[-1]))


def apply(node: gs.Node, x: np.ndarray, weight: np.ndarray, bias: np.ndarray, out_shape: Sequence[int]) -> np.ndarray:
    """The layer's output for input ``x`` with the given weight ``[out, in, ...]`` and bias."""
    flat = design(node, x.astype(np.float64), weight.shape) @ weight.reshape(weight.shape[0], -1).T + bias
    if node.op == "Conv":
        n, o, *spatial = out_shape
        return np.moveaxis(flat.reshape(n, *spatial, o), -1, 1)
    return np.asarray(flat.reshape(out_shape))


def solve(a: np.ndarray, y: np.ndarray, ridge: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Weights ``[out, cols]`` and bias ``[out]`` minimising ``||a W^T + b - y||^2 + ridge-term``."""
    cols = a.shape[1]
    gram = np.zeros((cols + 1, cols + 1))
    cross = np.zeros((cols + 1, y.shape[1]))
    for start in range(0, a.shape[0], CHUNK_ROWS):
        block = np.concatenate([a[start : start + CHUNK_ROWS], np.ones((min(CHUNK_ROWS, a.shape[0] - start), 1))], 1)
        gram += block.T @ block
        cross += block.T @ y[start : start + CHUNK_ROWS]
    scale = max(float(np.trace(gram[:cols, :cols])) / max(cols, 1), 1e-12)
    gram[np.arange(cols), np.arange(cols)] += ridge * scale  # bias column unregularised
    try:
        solution = np.linalg.solve(gram, cross)
    except np.linalg.LinAlgError:
        solution = np.linalg.lstsq(gram, cross, rcond=None)[0]
    return solution[:-1].T, solution[-1]


def fit(
    node: gs.Node, x: np.ndarray, y: np.ndarray, ridge: float = 1e-4, max_rows: int = 20_000
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares weight (in the node's ``[out, in, *kernel]`` shape) and bias mapping ``x`` to ``y``.

    At most ``max_rows`` output positions (a seeded random subset, at least four per unknown) are used.
    """
    shape = list(weight_of(node).shape)
    shape[0] = y.shape[1] if node.op == "Conv" else y.shape[-1]
    shape[1] = x.shape[1] if node.op == "Conv" else x.shape[-1]
    a = design(node, x.astype(np.float64), shape)
    b = targets(node, y.astype(np.float64))
    limit = max(max_rows, 4 * a.shape[1])
    if a.shape[0] > limit:
        pick = np.sort(np.random.default_rng(0).choice(a.shape[0], limit, replace=False))
        a, b = a[pick], b[pick]
    weight, bias = solve(a, b, ridge)
    return weight.reshape(shape), bias


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """``sum (got - want)^2 / sum want^2`` (0 when both vanish)."""
    den = float(np.sum(np.square(want, dtype=np.float64)))
    num = float(np.sum(np.square(got.astype(np.float64) - want)))
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))
