"""Multi-node ONNX patterns with a better TFLite lowering than node by node: GELU, channel shuffle,
scaled softmax, guarded division.

Why at emission time and not as IR passes: the better form cannot be written in
nirc's IR (opset-18 ONNX, NCHW), only in TFLite's NHWC terms.

* **Exact GELU.** ONNX has no GELU op before opset 20, so an exported GELU stays
  spelled out as ``0.5 * x * (1 + Erf(x / sqrt(2)))``.  ``Erf`` has no TFLite
  builtin, but the whole expression is TFLite's ``GELU`` (``approximate=False``),
  which Vela runs on the NPU (a lookup table in int8).  The op computes the same
  function, so the lowering is exact.  When ``fuse-affine`` has folded the ``* 0.5``
  into the next conv, the chain left is ``2 * GELU(x)``: GELU then MUL by 2.
* **Channel shuffle.** ``Reshape [N, g, C/g, H, W] -> Transpose (0, 2, 1, 3, 4) ->
  Reshape [N, C, H, W]`` interleaves the g channel groups.  Node by node it costs
  three TRANSPOSEs (NHWC to NCHW, the 5-D one, back).  In NHWC it is one: view the
  map as ``[N, H*W, g, C/g]`` (a free RESHAPE), swap the last two axes, view the
  result as ``[N, H, W, C]``.  Only elements move, so it is exact, in int8 too
  (the chain's tensors share one set of int8 parameters, as for any RESHAPE).
  Measured with Vela 5.2 on ShuffleNetV2-style 8x8x48 and 4x4x96 shuffles (U65-256):
  the single TRANSPOSE costs 1,440 cycles for three shuffles, against 5,664 for the
  node-by-node form, 13,227 for 1x1 one-hot convolutions (the TRANSPOSE-free form
  the ``legalize-channel-shuffle`` pass produces) and 32,962 for a SPLIT +
  CONCATENATION interleave.
* **Scaled softmax.** Attention scales its scores before the softmax,
  ``Softmax(Mul(s, c))`` with ``c = 1/sqrt(d) > 0``.  TFLite's SOFTMAX computes
  ``softmax(beta * s)``, so ``beta = c`` absorbs the MUL: exact in float, and in int8
  it saves an N x N elementwise op per head and one rounding of the scores (the
  kernel folds ``beta`` into its input rescale).
* **Guarded division.** ``n / (d + eps)`` with a small positive constant ``eps`` (at most 1e-3; linear
  attention's normaliser, ``F.normalize``) divides on the CPU in a float island.  Node by
  node the ``+ eps`` is an int8 ADD whose result cannot hold ``eps`` (it rounds to the
  divisor's own zero), so ``0 / 0`` gives NaN and QUANTIZE(NaN) has no defined result.
  Moving the ADD into the island (DEQUANTIZE ``d``, float ADD, DIV) is the same
  arithmetic in float and keeps the guard in int8.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from nirc.tflite.builder import BuiltinOperator as Op
from nirc.tflite.builder import Options
from nirc.tflite.context import Emitter
from nirc.tflite.graph import GraphInfo, attr_ints

_SQRT2 = math.sqrt(2.0)
_RTOL = 1e-5
_MAX_SHUFFLE_ELEMENTS = 1 << 22
#: Largest ``eps`` taken as a division guard: a larger constant is an offset int8 can hold
#: and stays an NPU ADD.
_GUARD_MAX = 1e-3


@dataclass
class PatternPlan:
    """Nodes lowered as part of a pattern.

    Attributes:
        skipped: indices of nodes absorbed into a pattern (not lowered themselves).
        unplanned: the subset of ``skipped`` the int8 planner must not see either
            (ops with no lowering of their own, e.g. Erf); the others keep their
            quantization ties (a shuffle's RESHAPE/TRANSPOSE chain shares parameters).
        lower: index of each pattern's last node -> the lowering that emits the pattern.
    """

    skipped: set[int] = field(default_factory=set)
    unplanned: set[int] = field(default_factory=set)
    lower: dict[int, Callable[[Emitter, onnx.NodeProto], None]] = field(default_factory=dict)


def _close(value: np.ndarray | None, target: float) -> bool:
    return value is not None and value.size == 1 and bool(np.isclose(float(value.reshape(-1)[0]), target, rtol=_RTOL))


class _Matcher:
    def __init__(self, info: GraphInfo) -> None:
        self.info = info

    def only_user(self, name: str) -> tuple[int, onnx.NodeProto] | None:
        """The single live reader of an intermediate tensor (None if shared or a graph output)."""
        users = self.info.users(name)
        if len(users) != 1 or self.info.is_graph_output(name) or len({i for i, _ in users}) != 1:
            return None
        idx = users[0][0]
        return idx, self.info.nodes[idx]

    def other(self, node: onnx.NodeProto, name: str) -> str | None:
        """For a binary node reading ``name`` once, its other input."""
        if len(node.input) != 2 or list(node.input).count(name) != 1:
            return None
        other: str = node.input[1] if node.input[0] == name else node.input[0]
        return other

    def const(self, name: str | None) -> np.ndarray | None:
        return None if name is None else self.info.const(name)


def _match_gelu(m: _Matcher, erf_idx: int, erf: onnx.NodeProto) -> tuple[str, list[int], int] | None:
    """``(x, absorbed node indices, last node index)`` for an exact-erf GELU around ``erf``."""
    info = m.info
    scaled = erf.input[0]
    src_idx = info.producers.get(scaled)
    if src_idx is None or src_idx in info.folded or m.only_user(scaled) is None:
        return None
    src = info.nodes[src_idx]
    if src.op_type == "Div" and _close(info.const(src.input[1]), _SQRT2):
        x = src.input[0]
    elif src.op_type == "Mul":
        x = next((a for a, b in ((src.input[0], src.input[1]), (src.input[1], src.input[0]))
                  if _close(info.const(b), 1.0 / _SQRT2)), "")  # fmt: skip
        if not x:
            return None
    else:
        return None
    if info.is_const(x):
        return None
    hit = m.only_user(erf.output[0])
    if hit is None or hit[1].op_type != "Add" or not _close(m.const(m.other(hit[1], erf.output[0])), 1.0):
        return None
    add_idx, add = hit
    hit = m.only_user(add.output[0])
    if hit is None or hit[1].op_type != "Mul":
        return None
    mul_idx, mul = hit
    partner = m.other(mul, add.output[0])
    if partner is None:
        return None
    absorbed = [src_idx, erf_idx, add_idx]
    if partner == x:  # (x * (1 + erf)) * 0.5, or x * (1 + erf) = 2 * GELU once the 0.5 was folded away
        hit = m.only_user(mul.output[0])
        if hit is None or hit[1].op_type != "Mul" or not _close(m.const(m.other(hit[1], mul.output[0])), 0.5):
            return x, absorbed, mul_idx
        return x, [*absorbed, mul_idx], hit[0]
    if _close(m.const(partner), 0.5):  # x * ((1 + erf) * 0.5)
        hit = m.only_user(mul.output[0])
        if hit is None or hit[1].op_type != "Mul" or m.other(hit[1], mul.output[0]) != x:
            return None
        return x, [*absorbed, mul_idx], hit[0]
    half_idx = info.producers.get(partner)  # (x * 0.5) * (1 + erf)
    if half_idx is None or m.only_user(partner) is None:
        return None
    half = info.nodes[half_idx]
    if half.op_type != "Mul" or m.other(half, x) is None or not _close(m.const(m.other(half, x)), 0.5):
        return None
    return x, [*absorbed, half_idx], mul_idx


def _gelu_lowering(x_name: str, doubled: bool) -> Callable[[Emitter, onnx.NodeProto], None]:
    """GELU; ``doubled`` chains lack the final ``* 0.5`` (folded into a neighbour): GELU, then MUL by 2."""

    def lower(em: Emitter, node: onnx.NodeProto) -> None:
        x = em.stored(x_name)  # elementwise: any layout (tokens stay in ONNX order)
        gelu_opts = Options("GeluOptions", (("Approximate", False),))
        if not doubled:
            y = em.define(node.output[0], perm=x.perm)
            em.op(Op.GELU, [x.tensor], [y.tensor], gelu_opts)
            return
        y = em.define(node.output[0], perm=x.perm)
        out_q = em.quant_of(y)
        half_q = None
        if out_q is not None:
            lo, hi = em.real_range(out_q)
            half_q = em.range_qparams(lo / 2, hi / 2)
        gelu = em.new_tensor(f"{node.output[0]}/gelu", y.stored_shape, half_q)
        em.op(Op.GELU, [x.tensor], [gelu], gelu_opts)
        two = em.float_const(f"{node.output[0]}/two", np.asarray([2.0], np.float32))
        em.op(Op.MUL, [gelu, two], [y.tensor], Options("MulOptions", (("FusedActivationFunction", 0),)))

    return lower


def _shuffle_groups(info: GraphInfo, x: str, mid: str, y: str, perm: list[int]) -> int | None:
    """g when ``y = Reshape(Transpose(Reshape(x, mid), perm))`` interleaves x's g channel groups."""
    in_shape, mid_shape, out_shape = info.shape(x), info.shape(mid), info.shape(y)
    if len(in_shape) != 4 or in_shape != out_shape or int(np.prod(in_shape)) > _MAX_SHUFFLE_ELEMENTS:
        return None
    index = np.arange(int(np.prod(in_shape))).reshape(in_shape)
    moved = index.reshape(mid_shape).transpose(perm).reshape(in_shape)
    spatial = in_shape[2] * in_shape[3]
    channel_perm = (moved[0, :, 0, 0] // spatial) % in_shape[1]
    if not np.array_equal(moved, index[:, channel_perm]):
        return None
    c = in_shape[1]
    for g in range(2, c + 1):
        if c % g == 0 and np.array_equal(channel_perm, np.arange(c).reshape(g, c // g).T.reshape(-1)):
            return g
    return None


def _match_shuffle(m: _Matcher, t_idx: int, transpose: onnx.NodeProto) -> tuple[str, int, list[int], int] | None:
    """``(x, g, absorbed node indices, last node index)`` for a channel shuffle around ``transpose``."""
    info = m.info
    mid = transpose.input[0]
    first_idx = info.producers.get(mid)
    if first_idx is None or first_idx in info.folded or m.only_user(mid) is None:
        return None
    first = info.nodes[first_idx]
    hit = m.only_user(transpose.output[0])
    if first.op_type != "Reshape" or hit is None or hit[1].op_type != "Reshape":
        return None
    last_idx, last = hit
    x = first.input[0]
    if info.is_const(x) or not all(info.has_shape(n) for n in (x, mid, last.output[0])):
        return None
    rank = len(info.shape(mid))
    perm = attr_ints(transpose, "perm", range(rank - 1, -1, -1))
    groups = _shuffle_groups(info, x, mid, last.output[0], perm)
    if groups is None:
        return None
    return x, groups, [first_idx, t_idx], last_idx


def _shuffle_lowering(x_name: str, groups: int) -> Callable[[Emitter, onnx.NodeProto], None]:
    def lower(em: Emitter, node: onnx.NodeProto) -> None:
        name = node.output[0]
        out_q = em.qparams(name)
        n, c, h, w = em.shape(x_name)
        x = em.requant(em.value(x_name), out_q, name)
        grouped = em.new_tensor(f"{name}/groups", (n, h * w, groups, c // groups), out_q)
        em.reshape(x.tensor, grouped)
        interleaved = em.new_tensor(f"{name}/interleaved", (n, h * w, c // groups, groups), out_q)
        em.op(Op.TRANSPOSE, [grouped, em.int_const(f"{name}/perm", [0, 1, 3, 2])], [interleaved])
        y = em.define(name)
        em.reshape(interleaved, y.tensor)

    return lower


def _match_scaled_softmax(m: _Matcher, idx: int, softmax: onnx.NodeProto) -> tuple[str, float, int] | None:
    """``(x, beta, Mul index)`` when ``softmax``'s input is ``x * beta`` (beta a positive scalar) read only here."""
    info = m.info
    scaled = softmax.input[0]
    mul_idx = info.producers.get(scaled)
    if mul_idx is None or mul_idx in info.folded or m.only_user(scaled) is None:
        return None
    mul = info.nodes[mul_idx]
    if mul.op_type != "Mul" or len(mul.input) != 2:
        return None
    for x, c in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
        beta = info.const(c)
        positive = beta is not None and beta.size == 1 and float(beta.reshape(-1)[0]) > 0
        same_shape = info.has_shape(x) and info.has_shape(scaled) and info.shape(x) == info.shape(scaled)
        if positive and same_shape and beta is not None and not info.is_const(x):
            return x, float(beta.reshape(-1)[0]), mul_idx
    return None


def _scaled_softmax_lowering(x_name: str, beta: float) -> Callable[[Emitter, onnx.NodeProto], None]:
    def lower(em: Emitter, node: onnx.NodeProto) -> None:
        from nirc.tflite.ops_act import emit_softmax

        emit_softmax(em, node, x_name, beta)

    return lower


def _match_guarded_div(m: _Matcher, div: onnx.NodeProto) -> tuple[str, float, int] | None:
    """``(d, eps, Add index)`` when ``div``'s divisor is ``d + eps`` (0 < eps <= 1e-3) read only here."""
    info = m.info
    if len(div.input) != 2 or info.is_const(div.input[1]):
        return None
    guarded = div.input[1]
    add_idx = info.producers.get(guarded)
    if add_idx is None or add_idx in info.folded or m.only_user(guarded) is None:
        return None
    add = info.nodes[add_idx]
    if add.op_type != "Add" or len(add.input) != 2:
        return None
    for d, c in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        eps = info.const(c)
        if eps is None or eps.size != 1 or not 0 < float(eps.reshape(-1)[0]) <= _GUARD_MAX or info.is_const(d):
            continue
        if info.has_shape(d) and info.has_shape(guarded) and info.shape(d) == info.shape(guarded):
            return d, float(eps.reshape(-1)[0]), add_idx
    return None


def _guarded_div_lowering(d_name: str, eps: float) -> Callable[[Emitter, onnx.NodeProto], None]:
    def lower(em: Emitter, node: onnx.NodeProto) -> None:
        from nirc.tflite.ops_eltwise import emit_guarded_div

        emit_guarded_div(em, node, d_name, eps)

    return lower


def plan_patterns(info: GraphInfo) -> PatternPlan:
    """Find every GELU chain and channel shuffle whose intermediate results nothing else reads."""
    plan = PatternPlan()
    m = _Matcher(info)
    for idx, node in info.live_nodes():
        if idx in plan.skipped:
            continue
        if node.op_type == "Erf":
            found = _match_gelu(m, idx, node)
            if found is None:
                continue
            x, absorbed, last = found
            if plan.skipped & {*absorbed, last} or last in plan.lower:
                continue
            plan.skipped.update(absorbed)
            plan.unplanned.update(absorbed)
            plan.lower[last] = _gelu_lowering(x, doubled=len(absorbed) == 3)
        elif node.op_type == "Transpose":
            shuffle = _match_shuffle(m, idx, node)
            if shuffle is None:
                continue
            x, groups, absorbed, last = shuffle
            if plan.skipped & {*absorbed, last} or last in plan.lower:
                continue
            plan.skipped.update(absorbed)
            plan.lower[last] = _shuffle_lowering(x, groups)
        elif node.op_type == "Softmax":
            scaled = _match_scaled_softmax(m, idx, node)
            if scaled is None or scaled[2] in plan.skipped or idx in plan.lower:
                continue
            x, beta, mul_idx = scaled
            plan.skipped.add(mul_idx)
            plan.unplanned.add(mul_idx)
            plan.lower[idx] = _scaled_softmax_lowering(x, beta)
        elif node.op_type == "Div":
            guarded = _match_guarded_div(m, node)
            if guarded is None or guarded[2] in plan.skipped or idx in plan.lower:
                continue
            d, eps, add_idx = guarded
            plan.skipped.add(add_idx)
            plan.unplanned.add(add_idx)
            plan.lower[idx] = _guarded_div_lowering(d, eps)
    return plan
