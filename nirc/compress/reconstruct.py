"""Recovery without labels: refit compressed layers so they reproduce the original model's activations.

Layer-wise reconstruction: walking the compressed model in execution order,
each linear layer whose output tensor also exists in the original model (a
conv or fully connected layer, the last factor of a decomposition, the reader
of a pruned space) is refit by least squares so that, fed with the
*compressed* model's activations, it reproduces the *original* model's output
at that tensor (restricted to the channels kept there). Walking in order lets
each refit absorb the error of every layer before it.

Refits are fitted on one part of the calibration samples and kept only if the
layer's error on the other part falls, so a refit never makes a layer worse
on data it has not seen (late layers at 2x2 resolution have few rows per unknown).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from nirc.compress import linear
from nirc.ir import IRModel
from nirc.passes._rewrite import Namer
from nirc.verify import run_tensors

logger = logging.getLogger(__name__)

Samples = Sequence[Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class Refit:
    """One layer's reconstruction: relative output error (held-out samples) before and after."""

    node: str
    error_before: float
    error_after: float
    kept: bool


class Reference:
    """The original model's activations on the fit and held-out samples, computed once per tensor."""

    def __init__(self, proto: onnx.ModelProto, fit: Samples, held: Samples) -> None:
        self.proto = proto
        self.fit = list(fit)
        self.held = list(held)
        self._fit: dict[str, np.ndarray] = {}
        self._held: dict[str, np.ndarray] = {}

    def prefetch(self, names: Iterable[str]) -> None:
        missing = [n for n in names if n not in self._fit]
        if missing:
            self._fit.update(run_tensors(self.proto, self.fit, missing))
            self._held.update(run_tensors(self.proto, self.held, missing))

    def get(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        self.prefetch([name])
        return self._fit[name], self._held[name]


def set_weights(graph: gs.Graph, node: gs.Node, weight: np.ndarray, bias: np.ndarray) -> None:
    """Write a fitted ``[out, in, ...]`` weight and bias: Conv as is, Gemm as ``transB=1, alpha=beta=1``."""
    namer = Namer(graph)
    base = node.name or node.op
    node.inputs[1] = namer.constant(f"{base}_fit_w", weight.astype(np.float32))
    b = namer.constant(f"{base}_fit_b", bias.astype(np.float32))
    if len(node.inputs) > 2:
        node.inputs[2] = b
    else:
        node.inputs.append(b)
    if node.op == "Gemm":
        node.attrs.update(transB=1, alpha=1.0, beta=1.0)


def anchors(model: IRModel, reference: onnx.ModelProto) -> list[gs.Node]:
    """Refittable layers of ``model`` (execution order) whose output tensor the original model also has."""
    known = {out for node in reference.graph.node for out in node.output}
    return [
        node
        for node in model.graph.nodes
        if node.op in ("Conv", "Gemm") and linear.is_linear(node) and node.outputs[0].name in known
    ]


def refit_layers(
    model: IRModel,
    nodes: Sequence[str],
    ref: Reference,
    layout_of: Callable[[str], Sequence[int] | None],
    *,
    ridge: float = 1e-4,
    max_rows: int = 20_000,
) -> list[Refit]:
    """Refit ``nodes`` (names, refit in model order) one after the other; see the module docstring.

    ``layout_of(tensor)`` gives the original channel indices a pruned tensor keeps (None: all).
    """
    wanted = set(nodes)
    order = [n for n in anchors(model, ref.proto) if n.name in wanted]
    ref.prefetch(n.outputs[0].name for n in order)
    results: list[Refit] = []
    for node in order:
        proto = model.to_proto(check=False)
        x_name, y_name = node.inputs[0].name, node.outputs[0].name
        acts = run_tensors(proto, ref.fit + ref.held, [x_name, y_name])
        n_fit = len(ref.fit)
        x_fit, x_held = acts[x_name][:n_fit], acts[x_name][n_fit:]
        now_held = acts[y_name][n_fit:]
        y_fit, y_held = ref.get(y_name)
        keep = layout_of(y_name)
        if keep is not None:
            y_fit, y_held = y_fit[:, list(keep)], y_held[:, list(keep)]
        if y_fit.shape[1:] != acts[y_name].shape[1:]:
            logger.debug("refit %s: output shape %s vs reference %s", node.name, acts[y_name].shape, y_fit.shape)
            continue
        weight, bias = linear.fit(node, x_fit, y_fit, ridge=ridge, max_rows=max_rows)
        before = linear.relative_error(now_held, y_held)
        after = linear.relative_error(linear.apply(node, x_held, weight, bias, now_held.shape), y_held)
        kept = after < before
        if kept:
            set_weights(model.graph, node, weight, bias)
        results.append(Refit(node.name, before, after if kept else before, kept))
    return results
