"""Lossy block substitutions (opt-in: ``substitute-blocks`` with ``allow_lossy=True``).

None of these computes the same function; each replacement's weights are
*fitted by least squares* so that, on calibration activations, it reproduces
the original block's output as closely as its structure allows, and the pass
measures what is lost (relative error of the block's and the model's outputs on
held-out samples) before the oracle decides whether the speed is worth it.
The fitted weights are initial weights: fine-tuning is expected to recover
more, and the report says how much was lost without it.

* ``fuse-inverted-bottleneck``: MobileNetV2's ``1x1 expand -> act -> kxk
  depthwise -> act -> 1x1 project`` becomes EfficientNetV2's fused form ``kxk
  dense expand -> act -> 1x1 project`` (same hidden width). Fit: the dense kxk
  conv regresses the depthwise conv's pre-activation output on kxk input
  patches; the projection then regresses the block output on the new hidden
  activations. On Ethos-U the fused form can be faster at a few times the
  weights (measured: ``benchmarks/results/profile_blocks_ethos-u65-256.md``).
* ``unfuse-inverted-bottleneck``: the reverse. The 1x1 expand starts as the
  dense kernel's centre tap, each depthwise filter regresses its channel's
  pre-activation on kxk patches of the new expand output, and the projection
  is refit as above.
* ``factorize-kernel``: a kxk conv (k = 5 or 7, stride 1) becomes ``(k-1)/2``
  chained 3x3 convs with no nonlinearity between. The inner convs project 3x3
  patches onto their principal components (uncentred PCA of the calibration
  patches, width = output channels); the last one is fitted by least squares.
  When the width reaches ``9 * Cin`` the first projection loses nothing and
  the factorisation is exact up to the fit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from .._rewrite import Namer, const_value, input_at, scalar_value
from .base import (
    Build,
    Candidate,
    Match,
    Rule,
    RuleEnv,
    Writer,
    nchw,
    nodes_by_name,
    remove_block,
    single_reader,
)
from .kernels import conv_attrs

ACTIVATIONS = frozenset({"Relu", "Clip", "LeakyRelu", "HardSwish", "Sigmoid"})
MAX_ROWS = 40_000
RIDGE = 1e-4


# ----------------------------------------------------------------------------- numerics


def activate(node: gs.Node, x: np.ndarray) -> np.ndarray | None:
    """``node`` (a unary activation with constant parameters) applied to ``x`` in NumPy; None if unsupported."""
    if node.op == "Relu":
        return np.asarray(np.maximum(x, 0.0))
    if node.op == "LeakyRelu":
        return np.asarray(np.where(x >= 0, x, float(node.attrs.get("alpha", 0.01)) * x))
    if node.op == "Sigmoid":
        return np.asarray(1.0 / (1.0 + np.exp(-x)))
    if node.op == "HardSwish":
        return np.asarray(x * np.clip(x / 6.0 + 0.5, 0.0, 1.0))
    if node.op == "Clip":
        lo_t, hi_t = input_at(node, 1), input_at(node, 2)
        lo = scalar_value(lo_t) if lo_t is not None else -np.inf
        hi = scalar_value(hi_t) if hi_t is not None else np.inf
        if lo is None or hi is None:
            return None
        return np.asarray(np.clip(x, lo, hi))
    return None


def patches(x: np.ndarray, kernel: Sequence[int], strides: Sequence[int], pads: Sequence[int]) -> np.ndarray:
    """im2col: ``[N * Ho * Wo, C * kh * kw]`` in a conv weight's ``(c, kh, kw)`` order."""
    kh, kw = kernel
    sh, sw = strides
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    ho = (xp.shape[2] - kh) // sh + 1
    wo = (xp.shape[3] - kw) // sw + 1
    cols = [
        xp[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw] for i in range(kh) for j in range(kw)
    ]
    stacked = np.stack(cols, axis=2)  # N, C, kh*kw, Ho, Wo
    n, c = x.shape[:2]
    return stacked.transpose(0, 3, 4, 1, 2).reshape(n * ho * wo, c * kh * kw)


def pixels(y: np.ndarray) -> np.ndarray:
    """``[N, C, H, W]`` -> ``[N * H * W, C]`` (rows in :func:`patches` order)."""
    return np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])


def unpixels(rows: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    n, c, h, w = shape
    return np.moveaxis(rows.reshape(n, h, w, c), -1, 1)


def _rows(count: int, cols: int) -> np.ndarray | None:
    limit = max(4 * cols, MAX_ROWS)
    if count <= limit:
        return None
    return np.sort(np.random.default_rng(0).choice(count, limit, replace=False))


def lstsq(design: np.ndarray, targets: np.ndarray, ridge: float = RIDGE) -> tuple[np.ndarray, np.ndarray]:
    """Ridge least squares with an unregularised bias: ``targets ~ design @ W.T + b``; returns ``(W, b)``."""
    pick = _rows(design.shape[0], design.shape[1])
    if pick is not None:
        design, targets = design[pick], targets[pick]
    a = np.concatenate([design, np.ones((design.shape[0], 1))], axis=1)
    gram = a.T @ a
    lam = ridge * max(float(np.trace(gram[:-1, :-1])) / max(design.shape[1], 1), 1e-12)
    reg = np.eye(a.shape[1]) * lam
    reg[-1, -1] = 0.0
    solution = np.linalg.solve(gram + reg, a.T @ targets)
    return solution[:-1].T, solution[-1]


def conv_np(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, strides: Sequence[int], pads: Sequence[int],
            group: int = 1) -> np.ndarray:  # fmt: skip
    """A float64 reference conv (grouped through per-group im2col)."""
    n, _c, h, w = x.shape
    cout, cin_g, kh, kw = weight.shape
    ho = (h + pads[0] + pads[2] - kh) // strides[0] + 1
    wo = (w + pads[1] + pads[3] - kw) // strides[1] + 1
    og = cout // group
    parts = []
    for g in range(group):
        cols = patches(x[:, g * cin_g : (g + 1) * cin_g], (kh, kw), strides, pads)
        parts.append(cols @ weight[g * og : (g + 1) * og].reshape(og, -1).T)
    rows = np.concatenate(parts, axis=1)
    if bias is not None:
        rows = rows + bias
    return unpixels(rows, (n, cout, ho, wo))


def principal_directions(design: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` leading eigenvectors of ``design.T @ design`` as rows (uncentred PCA), zero rows beyond rank."""
    pick = _rows(design.shape[0], design.shape[1])
    if pick is not None:
        design = design[pick]
    values, vectors = np.linalg.eigh(design.T @ design)
    order = np.argsort(values)[::-1][:count]
    basis = vectors[:, order].T
    if basis.shape[0] < count:
        basis = np.concatenate([basis, np.zeros((count - basis.shape[0], basis.shape[1]))])
    return np.asarray(basis)


# ----------------------------------------------------------------------------- helpers


def _conv(node: gs.Node) -> tuple[np.ndarray, np.ndarray, tuple[int, int], tuple[int, int, int, int], int] | None:
    """``(weight, bias, strides, pads, group)`` of an undilated 2-D Conv with constant weights."""
    if node.op != "Conv":
        return None
    weight = const_value(input_at(node, 1))
    attrs = conv_attrs(node)
    if weight is None or weight.ndim != 4 or isinstance(attrs, str) or attrs[2] != (1, 1):
        return None
    bias_t = input_at(node, 2)
    bias = const_value(bias_t) if bias_t is not None else np.zeros(weight.shape[0])
    if bias is None:
        return None
    return np.asarray(weight, np.float64), np.asarray(bias, np.float64).reshape(-1), attrs[0], attrs[1], attrs[3]


def _next(graph: gs.Graph, node: gs.Node) -> gs.Node | None:
    return single_reader(graph, node.outputs[0]) if len(node.outputs) == 1 else None


def _is_pointwise(conv: tuple[np.ndarray, np.ndarray, tuple[int, int], tuple[int, int, int, int], int]) -> bool:
    weight, _, strides, pads, group = conv
    return weight.shape[2:] == (1, 1) and strides == (1, 1) and not any(pads) and group == 1


@dataclass(frozen=True)
class ActivationSpec:
    """An activation node's op, attributes and constant operands, as values (the node itself is replaced)."""

    op: str
    attrs: dict[str, Any]
    operands: tuple[np.ndarray | None, ...]

    @classmethod
    def of(cls, node: gs.Node) -> ActivationSpec:
        operands = tuple(const_value(input_at(node, i)) for i in range(1, len(node.inputs)))
        return cls(node.op, dict(node.attrs), operands)

    def emit(self, w: Writer, x: gs.Tensor) -> gs.Tensor:
        """A new node doing what the activation did, on ``x``."""
        inputs: list[gs.Tensor] = [x]
        for i, value in enumerate(self.operands):
            inputs.append(gs.Variable.empty() if value is None else w.const(f"act_arg{i}", value, value.dtype))
        return w.node(self.op, "act", inputs, None, dict(self.attrs))


def _measured(env: RuleEnv, match: Match, name: str, build: Build, note: str) -> Candidate:
    return Candidate(name, build, exact=False, note=note, accuracy=env.measure(match, build))


# ----------------------------------------------------------------------------- rules


class FuseInvertedBottleneckRule(Rule):
    """Depthwise inverted bottleneck (1x1 -> act -> dw kxk -> act -> 1x1) -> fused (kxk -> act -> 1x1), refit."""

    name = "fuse-inverted-bottleneck"
    exact = False
    ops = ("Conv",)

    def matches(self, graph: gs.Graph) -> Iterator[Match]:
        for expand in list(graph.nodes):
            chain = self._chain(graph, expand)
            if chain is not None:
                yield Match(
                    self.name, tuple(n.name for n in chain), (expand.inputs[0].name,), chain[-1].outputs[0].name
                )

    @staticmethod
    def _chain(graph: gs.Graph, expand: gs.Node) -> list[gs.Node] | None:
        e = _conv(expand)
        if e is None or not _is_pointwise(e):
            return None
        act1 = _next(graph, expand)
        dw = _next(graph, act1) if act1 is not None and act1.op in ACTIVATIONS else None
        d = _conv(dw) if dw is not None else None
        if d is None or dw is None or d[4] != d[0].shape[0] or d[0].shape[1] != 1 or d[4] != e[0].shape[0]:
            return None
        act2 = _next(graph, dw)
        project = _next(graph, act2) if act2 is not None and act2.op in ACTIVATIONS else None
        p = _conv(project) if project is not None else None
        if p is None or project is None or not _is_pointwise(p):
            return None
        assert act1 is not None and act2 is not None
        return [expand, act1, dw, act2, project]

    def check(self, graph: gs.Graph, match: Match) -> str | None:
        nodes = nodes_by_name(graph)
        for name in (match.nodes[1], match.nodes[3]):
            if activate(nodes[name], np.zeros(1)) is None:
                return f"{name}: activation {nodes[name].op} with non-constant parameters"
        if nchw(graph.tensors()[match.inputs[0]]) is None:
            return "input is not a static 4-D feature map"
        return None

    def candidates(self, graph: gs.Graph, match: Match, env: RuleEnv) -> list[Candidate]:
        nodes = nodes_by_name(graph)
        _expand, act1, dw, _act2, project = (nodes[n] for n in match.nodes)
        d = _conv(dw)
        p = _conv(project)
        assert d is not None and p is not None
        _, _, strides, pads, _ = d
        k = d[0].shape[2:]
        acts = env.activations([match.inputs[0], dw.outputs[0].name, match.output])
        x, u, y = (acts[n].astype(np.float64) for n in (match.inputs[0], dw.outputs[0].name, match.output))
        design = patches(x, k, strides, pads)
        wf, bf = lstsq(design, pixels(u))
        hidden = pixels(u).shape[1]
        weight_f = wf.reshape(hidden, x.shape[1], *k)
        g = activate(act1, conv_np(x, weight_f, bf, strides, pads))
        assert g is not None
        wp, bp = lstsq(pixels(g), pixels(y))
        weight_p = wp.reshape(wp.shape[0], hidden, 1, 1)
        act_spec = ActivationSpec.of(act1)
        fused_attrs = {
            "kernel_shape": list(k),
            "strides": list(strides),
            "pads": list(pads),
            "dilations": [1, 1],
            "group": 1,
        }
        base = match.output

        def build(gr: gs.Graph, namer: Namer) -> list[str]:
            (xt,), out = remove_block(gr, match)
            w = Writer(gr, namer, f"{base}_fused")
            h = w.conv("expand", xt, weight_f, bf, fused_attrs, None)
            h = act_spec.emit(w, h)
            w.conv("project", h, weight_p, bp, {"kernel_shape": [1, 1]}, None, output=out)
            return w.created

        note = f"fused {k[0]}x{k[1]} expand to {hidden} channels, refit by least squares"
        return [_measured(env, match, "fused", build, note)]


class UnfuseInvertedBottleneckRule(Rule):
    """Fused inverted bottleneck (kxk expand -> act -> 1x1) -> depthwise form (1x1 -> act -> dw kxk -> act -> 1x1)."""

    name = "unfuse-inverted-bottleneck"
    exact = False
    ops = ("Conv",)
    MIN_EXPANSION = 2

    def matches(self, graph: gs.Graph) -> Iterator[Match]:
        for conv in list(graph.nodes):
            f = _conv(conv)
            if f is None or f[4] != 1 or f[0].shape[2:] == (1, 1):
                continue
            if f[0].shape[0] < self.MIN_EXPANSION * f[0].shape[1]:
                continue
            act = _next(graph, conv)
            project = _next(graph, act) if act is not None and act.op in ACTIVATIONS else None
            p = _conv(project) if project is not None else None
            if p is None or project is None or act is None or not _is_pointwise(p):
                continue
            yield Match(self.name, (conv.name, act.name, project.name), (conv.inputs[0].name,), project.outputs[0].name)

    def check(self, graph: gs.Graph, match: Match) -> str | None:
        act = nodes_by_name(graph)[match.nodes[1]]
        if activate(act, np.zeros(1)) is None:
            return f"{act.name}: activation {act.op} with non-constant parameters"
        if nchw(graph.tensors()[match.inputs[0]]) is None:
            return "input is not a static 4-D feature map"
        return None

    def candidates(self, graph: gs.Graph, match: Match, env: RuleEnv) -> list[Candidate]:
        nodes = nodes_by_name(graph)
        conv, act, _ = (nodes[n] for n in match.nodes)
        f = _conv(conv)
        assert f is not None
        weight, bias, strides, pads, _ = f
        hidden, cin, kh, kw = weight.shape
        acts = env.activations([match.inputs[0], conv.outputs[0].name, match.output])
        x, u, y = (acts[n].astype(np.float64) for n in (match.inputs[0], conv.outputs[0].name, match.output))
        # 1x1 expand: the dense kernel's centre tap, the fused conv's bias.
        we = weight[:, :, kh // 2, kw // 2].reshape(hidden, cin, 1, 1)
        h1 = activate(act, conv_np(x, we, bias, (1, 1), (0, 0, 0, 0)))
        assert h1 is not None
        # Depthwise: per channel, regress the fused pre-activation on kxk patches of h1.
        cols = patches(h1, (kh, kw), strides, pads).reshape(-1, hidden, kh * kw)
        targets = pixels(u)
        pick = _rows(cols.shape[0], kh * kw + 1)
        if pick is not None:
            cols, targets = cols[pick], targets[pick]
        a = np.concatenate([cols, np.ones((*cols.shape[:2], 1))], axis=2).transpose(1, 0, 2)  # hidden, rows, k+1
        gram = a.transpose(0, 2, 1) @ a
        lam = RIDGE * np.maximum(np.trace(gram, axis1=1, axis2=2) / (kh * kw + 1), 1e-12)
        rhs = np.einsum("hrk,rh->hk", a, targets)[..., None]
        solution = np.linalg.solve(gram + lam[:, None, None] * np.eye(kh * kw + 1), rhs)[..., 0]
        wd = solution[:, :-1].reshape(hidden, 1, kh, kw)
        bd = solution[:, -1]
        g = activate(act, conv_np(h1, wd, bd, strides, pads, group=hidden))
        assert g is not None
        wp, bp = lstsq(pixels(g), pixels(y))
        weight_p = wp.reshape(wp.shape[0], hidden, 1, 1)
        act_spec = ActivationSpec.of(act)
        dw_attrs = {
            "kernel_shape": [kh, kw],
            "strides": list(strides),
            "pads": list(pads),
            "dilations": [1, 1],
            "group": hidden,
        }
        base = match.output

        def build(gr: gs.Graph, namer: Namer) -> list[str]:
            (xt,), out = remove_block(gr, match)
            w = Writer(gr, namer, f"{base}_dw")
            t = w.conv("expand", xt, we, bias, {"kernel_shape": [1, 1]}, None)
            t = act_spec.emit(w, t)
            t = w.conv("depthwise", t, wd, bd, dw_attrs, None)
            t = act_spec.emit(w, t)
            w.conv("project", t, weight_p, bp, {"kernel_shape": [1, 1]}, None, output=out)
            return w.created

        note = f"1x1 expand to {hidden}, depthwise {kh}x{kw}, refit by least squares"
        return [_measured(env, match, "depthwise", build, note)]


class FactorizeKernelRule(Rule):
    """A 5x5 or 7x7 stride-1 conv -> two or three chained 3x3 convs (PCA then least squares)."""

    name = "factorize-kernel"
    exact = False
    ops = ("Conv",)
    KERNELS = (5, 7)

    def matches(self, graph: gs.Graph) -> Iterator[Match]:
        for node in list(graph.nodes):
            c = _conv(node)
            if c is None or c[4] != 1 or c[2] != (1, 1) or len(node.outputs) != 1:
                continue
            kh, kw = c[0].shape[2:]
            if kh != kw or kh not in self.KERNELS:
                continue
            yield Match(self.name, (node.name,), (node.inputs[0].name,), node.outputs[0].name)

    def check(self, graph: gs.Graph, match: Match) -> str | None:
        node = nodes_by_name(graph)[match.nodes[0]]
        c = _conv(node)
        assert c is not None
        layers = (c[0].shape[2] - 1) // 2
        if max(c[3]) > layers:
            return f"padding {c[3]} exceeds one pixel per 3x3 layer"
        if nchw(node.inputs[0]) is None:
            return "input is not a static 4-D feature map"
        return None

    def candidates(self, graph: gs.Graph, match: Match, env: RuleEnv) -> list[Candidate]:
        node = nodes_by_name(graph)[match.nodes[0]]
        c = _conv(node)
        assert c is not None
        weight, _, _, pads, _ = c
        cout, cin, k, _ = weight.shape
        layers = (k - 1) // 2
        # Pads per layer: each side's padding spread over the first layers, at most 1 each.
        per_layer = [tuple(1 if i < p else 0 for p in pads) for i in range(layers)]
        acts = env.activations([match.inputs[0], match.output])
        x, y = acts[match.inputs[0]].astype(np.float64), acts[match.output].astype(np.float64)
        width = cout
        weights: list[tuple[np.ndarray, np.ndarray | None, tuple[int, ...]]] = []
        h = x
        for i in range(layers - 1):
            cols = patches(h, (3, 3), (1, 1), per_layer[i])
            basis = principal_directions(cols, width)
            wi = basis.reshape(width, h.shape[1], 3, 3)
            weights.append((wi, None, per_layer[i]))
            h = conv_np(h, wi, None, (1, 1), per_layer[i])
        wl, bl = lstsq(patches(h, (3, 3), (1, 1), per_layer[-1]), pixels(y))
        weights.append((wl.reshape(cout, h.shape[1], 3, 3), bl, per_layer[-1]))
        base = match.output

        def build(gr: gs.Graph, namer: Namer) -> list[str]:
            (xt,), out = remove_block(gr, match)
            w = Writer(gr, namer, f"{base}_3x3")
            t = xt
            for i, (wi, bi, pi) in enumerate(weights):
                attrs: dict[str, Any] = {
                    "kernel_shape": [3, 3],
                    "pads": list(pi),
                    "strides": [1, 1],
                    "dilations": [1, 1],
                }
                t = w.conv(f"conv{i}", t, wi, bi, attrs, None, output=out if i == layers - 1 else None)
            return w.created

        macs = 9 * (cin * width + width * width * (layers - 2) + width * cout)
        note = f"{layers} chained 3x3 convs, width {width} ({macs / (k * k * cin * cout):.2f}x the MACs)"
        return [_measured(env, match, f"{layers}x3x3", build, note)]
