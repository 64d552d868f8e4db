"""Per-channel affine maps folded into the constant weights of Conv, ConvTranspose and Gemm.

Shared by ``fuse-batchnorm``, ``fuse-affine`` and ``eliminate-channel-shuffle``.
Weights are never modified in place: a weight may be shared by several nodes,
so every fold writes new constants. Arithmetic is done in float64 and rounded
once to the weight's dtype.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from nirc.passes._rewrite import Namer, const_value, input_at

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm")


def _float_const(tensor: gs.Tensor | None) -> np.ndarray | None:
    value = const_value(tensor)
    if value is None or value.dtype.kind != "f":
        return None
    return np.asarray(value)


def _group(node: gs.Node) -> int:
    return int(node.attrs.get("group", 1))


def output_channels(node: gs.Node) -> int | None:
    """Output channels of a linear node with a constant weight (None when not foldable)."""
    weight = _float_const(input_at(node, 1))
    if weight is None or node.op not in LINEAR_OPS:
        return None
    if node.op == "Conv":
        return int(weight.shape[0])
    if node.op == "ConvTranspose":
        return int(weight.shape[1]) * _group(node)
    if weight.ndim != 2:
        return None
    return int(weight.shape[0] if node.attrs.get("transB", 0) else weight.shape[1])


def _bias_slot_ok(node: gs.Node) -> bool:
    """Bias/C must be absent or a float constant."""
    slot = input_at(node, 2)
    return slot is None or _float_const(slot) is not None


def can_fold_output_affine(node: gs.Node) -> bool:
    """A Conv/ConvTranspose/Gemm with constant float weight and constant or absent bias."""
    return output_channels(node) is not None and _bias_slot_ok(node)


def fold_output_affine(node: gs.Node, scale: np.ndarray, shift: np.ndarray, namer: Namer) -> None:
    """Rewrite ``node`` so that it computes ``node(x) * scale + shift`` per output channel.

    Conv: ``W[o] *= s[o]``, ``b = b * s + t``. ConvTranspose stores its weight
    as (Cin, Cout/group, k...), output channel ``o = g * Cout/group + j`` lives
    at ``W[g * Cin/group : (g+1) * Cin/group, j]``. Gemm: the columns of
    ``B' = transB ? B^T : B`` are the output channels, and ``beta * C`` becomes
    ``beta * C * s + t`` (then ``beta = 1``).

    The caller has checked :func:`can_fold_output_affine`.
    """
    weight_t = node.inputs[1]
    weight = np.asarray(const_value(weight_t), dtype=np.float64)
    dtype = np.asarray(const_value(weight_t)).dtype
    s = np.asarray(scale, dtype=np.float64)
    t = np.asarray(shift, dtype=np.float64)
    bias_t = input_at(node, 2)
    bias = np.asarray(const_value(bias_t), dtype=np.float64) if bias_t is not None else None
    spatial = (1,) * (weight.ndim - 2)
    if node.op == "Conv":
        new_w = weight * s.reshape(-1, 1, *spatial)
    elif node.op == "ConvTranspose":
        g = _group(node)
        cin, cout_g = weight.shape[0], weight.shape[1]
        grouped = weight.reshape(g, cin // g, cout_g, *weight.shape[2:])
        new_w = (grouped * s.reshape(g, 1, cout_g, *spatial)).reshape(weight.shape)
    elif node.attrs.get("transB", 0):
        new_w = weight * s.reshape(-1, 1)
    else:
        new_w = weight * s.reshape(1, -1)
    if node.op == "Gemm":
        beta = float(node.attrs.get("beta", 1.0))
        base = beta * bias if bias is not None else np.zeros(1)
        new_b = base * s + t
        node.attrs["beta"] = 1.0
    else:
        new_b = (bias if bias is not None else np.zeros_like(s)) * s + t
    node.inputs[1] = namer.constant(f"{weight_t.name}_scaled", new_w.astype(dtype))
    new_bias = namer.constant(f"{node.name}_bias", new_b.astype(dtype))
    _set_bias(node, new_bias)


def _set_bias(node: gs.Node, bias: gs.Constant) -> None:
    if len(node.inputs) > 2:
        node.inputs[2] = bias
    else:
        node.inputs.append(bias)


def conv_input_channel_index(node: gs.Node, weight_shape: tuple[int, ...]) -> np.ndarray:
    """For ``W[o, j]`` of a (grouped) Conv, the input channel it multiplies: shape (Cout, Cin/group)."""
    cout, cin_g = weight_shape[0], weight_shape[1]
    g = _group(node)
    groups = np.arange(cout) // (cout // g)
    return groups[:, None] * cin_g + np.arange(cin_g)[None, :]


def fold_input_scale(node: gs.Node, scale: np.ndarray, namer: Namer) -> None:
    """Rewrite a Conv (input 0) or Gemm (input A, transA=0) to compute ``node(x * scale)``.

    ``scale`` is per input channel (Conv: Cin; Gemm: K, the columns of A).
    """
    weight_t = node.inputs[1]
    raw = np.asarray(const_value(weight_t))
    weight = raw.astype(np.float64)
    s = np.asarray(scale, dtype=np.float64)
    if node.op == "Conv":
        idx = conv_input_channel_index(node, weight.shape)
        new_w = weight * s[idx].reshape(*idx.shape, *(1,) * (weight.ndim - 2))
    elif node.attrs.get("transB", 0):
        new_w = weight * s.reshape(1, -1)
    else:
        new_w = weight * s.reshape(-1, 1)
    node.inputs[1] = namer.constant(f"{weight_t.name}_scaled", new_w.astype(raw.dtype))


def fold_input_shift(node: gs.Node, shift: np.ndarray, namer: Namer) -> None:
    """Rewrite a Conv without padding, or a Gemm, to compute ``node(x + shift)``.

    Conv: every output sums ``W[o, j, k] * (x + t)[c(o, j)]`` over a full
    window, so ``b[o] += sum_{j,k} W[o, j, k] * t[c(o, j)]``; exact only when no
    window reads padding (the caller checks). Gemm: ``C += alpha * t @ B'``.
    """
    weight_t = node.inputs[1]
    raw = np.asarray(const_value(weight_t))
    weight = raw.astype(np.float64)
    t = np.asarray(shift, dtype=np.float64)
    bias_t = input_at(node, 2)
    bias = np.asarray(const_value(bias_t), dtype=np.float64) if bias_t is not None else None
    if node.op == "Conv":
        idx = conv_input_channel_index(node, weight.shape)
        per_tap = weight.reshape(*weight.shape[:2], -1).sum(axis=2)
        delta = (per_tap * t[idx]).sum(axis=1)
        new_b = (bias if bias is not None else np.zeros_like(delta)) + delta
    else:
        b_prime = weight.T if node.attrs.get("transB", 0) else weight
        delta = float(node.attrs.get("alpha", 1.0)) * (t @ b_prime)
        beta = float(node.attrs.get("beta", 1.0))
        new_b = (beta * bias if bias is not None else np.zeros(1)) + delta
        node.attrs["beta"] = 1.0
    _set_bias(node, namer.constant(f"{node.name}_bias", new_b.astype(raw.dtype)))
