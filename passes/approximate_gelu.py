"""Opt-in, lossy: rewrite exact (erf) GELU as its tanh or sigmoid approximation, measuring the error."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from nirc.passes._legalize import Emit
from nirc.passes._rewrite import Namer, consumers, detach, has_any_op, other_operand, producer, scalar_value, single_use

from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext

logger = logging.getLogger(__name__)

_SQRT2 = math.sqrt(2.0)
_TANH_SCALE = math.sqrt(2.0 / math.pi)
_TANH_CUBIC = 0.044715
_SIGMOID_SCALE = 1.702


@dataclass(frozen=True)
class ApproximateGeluPass(Pass):
    """Rewrite ``0.5 * x * (1 + erf(x / sqrt(2)))`` as a GELU approximation built from NPU ops (lossy).

    Not exact, so not in any default pipeline: nirc's emitter already lowers the exact
    erf form to TFLite's GELU, which Vela 5 runs on the NPU. This pass is for
    toolchains without that op (older Vela, other runtimes): ``form="tanh"`` gives
    ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))`` (MUL, ADD, TANH; max
    error about 5e-4), ``form="sigmoid"`` gives ``x * sigmoid(1.702 x)`` (MUL,
    LOGISTIC; max error about 2e-2, cheaper).

    The error is measured, not assumed: the model runs in ONNX Runtime on ``samples``
    seeded standard-normal inputs (what nirc calibrates with when given no data),
    and the largest ``|approx(x) - gelu(x)|`` over every value reaching a rewritten
    GELU is logged and recorded in the pass stats as ``max_abs_error_x1e6``.
    """

    name = "approximate-gelu"
    exact = False
    form: Literal["tanh", "sigmoid"] = "tanh"
    samples: int = 4

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        graph = model.graph
        if not has_any_op(graph, ["Erf"]):
            return False
        matches = [m for node in graph.nodes if node.op == "Erf" and (m := _match(graph, node)) is not None]
        if not matches:
            return False
        error = _measured_error(model, [x.name for x, _, _ in matches], self.form, self.samples)
        namer = Namer(graph)
        for x, absorbed, out in matches:
            detach(*absorbed)
            _emit(graph, namer, x, out, self.form, absorbed[-1].name)
            ctx.count(f"gelu_{self.form}")
        graph.cleanup()
        ctx.count("max_abs_error_x1e6", round(error * 1e6))
        logger.info("approximate-gelu (%s): %d GELUs, max abs error %.3g on calibration-like inputs",
                    self.form, len(matches), error)  # fmt: skip
        return True


def _scalar_operand(node: gs.Node, tensor: gs.Tensor, value: float) -> bool:
    other = other_operand(node, tensor)
    v = scalar_value(other) if other is not None else None
    return v is not None and math.isclose(v, value, rel_tol=1e-5)


def _only_reader(graph: gs.Graph, tensor: gs.Tensor, op: str) -> gs.Node | None:
    if not single_use(graph, tensor):
        return None
    (node,) = consumers(tensor)
    return node if node.op == op else None


def _match(graph: gs.Graph, erf: gs.Node) -> tuple[gs.Tensor, list[gs.Node], gs.Tensor] | None:
    """``(x, nodes of the pattern, output)`` for an exact GELU around ``erf``."""
    src = producer(erf.inputs[0])
    if src is None or not single_use(graph, erf.inputs[0]) or len(src.inputs) != 2:
        return None
    if src.op == "Div" and _scalar_operand(src, src.inputs[0], _SQRT2) and src.inputs[1] is not src.inputs[0]:
        x = src.inputs[0]
    elif src.op == "Mul":
        x = next((t for t in src.inputs if _scalar_operand(src, t, 1.0 / _SQRT2)), None)
        if x is None:
            return None
    else:
        return None
    add = _only_reader(graph, erf.outputs[0], "Add")
    if add is None or not _scalar_operand(add, erf.outputs[0], 1.0):
        return None
    mul = _only_reader(graph, add.outputs[0], "Mul")
    if mul is None:
        return None
    partner = other_operand(mul, add.outputs[0])
    if partner is x:  # (x * (1 + erf)) * 0.5
        last = _only_reader(graph, mul.outputs[0], "Mul")
        if last is None or not _scalar_operand(last, mul.outputs[0], 0.5):
            return None
        return x, [src, erf, add, mul, last], last.outputs[0]
    if partner is not None and scalar_value(partner) is not None and math.isclose(scalar_value(partner) or 0, 0.5):
        last = _only_reader(graph, mul.outputs[0], "Mul")  # x * ((1 + erf) * 0.5)
        if last is None or other_operand(last, mul.outputs[0]) is not x:
            return None
        return x, [src, erf, add, mul, last], last.outputs[0]
    half = producer(partner) if partner is not None else None  # (x * 0.5) * (1 + erf)
    if half is None or half.op != "Mul" or other_operand(half, x) is None or not _scalar_operand(half, x, 0.5):
        return None
    if partner is None or not single_use(graph, partner):
        return None
    return x, [src, erf, add, half, mul], mul.outputs[0]


def _emit(graph: gs.Graph, namer: Namer, x: gs.Tensor, out: gs.Tensor, form: str, base: str) -> None:
    shape = list(x.shape or [])
    e = Emit(graph, namer, base, x.dtype)
    if form == "sigmoid":
        s = e.node("Mul", "scaled", [x, e.const("k", _SIGMOID_SCALE)], shape)
        e.node("Mul", "gelu", [x, e.node("Sigmoid", "sigmoid", [s], shape)], shape, output=out)
        return
    x2 = e.node("Mul", "x2", [x, x], shape)
    x3 = e.node("Mul", "x3", [x2, x], shape)
    inner = e.node("Add", "inner", [x, e.node("Mul", "cubic", [x3, e.const("c", _TANH_CUBIC)], shape)], shape)
    t = e.node("Tanh", "tanh", [e.node("Mul", "scaled", [inner, e.const("k", _TANH_SCALE)], shape)], shape)
    half_x = e.node("Mul", "half_x", [x, e.const("half", 0.5)], shape)
    e.node("Mul", "gelu", [half_x, e.node("Add", "one_plus", [t, e.const("one", 1.0)], shape)], shape, output=out)


def approximation(x: np.ndarray, form: str) -> np.ndarray:
    """The approximation the rewrite computes, in float64."""
    x = np.asarray(x, np.float64)
    if form == "sigmoid":
        return x / (1.0 + np.exp(-_SIGMOID_SCALE * x))
    return 0.5 * x * (1.0 + np.tanh(_TANH_SCALE * (x + _TANH_CUBIC * x**3)))


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU in float64."""
    x = np.asarray(x, np.float64)
    erf = np.vectorize(math.erf, otypes=[np.float64])
    result: np.ndarray = 0.5 * x * (1.0 + erf(x / _SQRT2))
    return result


def _measured_error(model: IRModel, inputs: list[str], form: str, samples: int) -> float:
    """Max |approx - exact| over the values the GELUs see on seeded standard-normal model inputs."""
    from nirc.verify import random_inputs, run_onnx

    proto = model.to_proto(check=False)
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    known = {o.name for o in probe.graph.output}
    for name in inputs:
        if name not in known:
            probe.graph.output.add().name = name
    names = [o.name for o in probe.graph.output]
    worst = 0.0
    for outputs in run_onnx(probe, random_inputs(proto, samples)):
        by_name = dict(zip(names, outputs, strict=True))
        for name in inputs:
            values = np.asarray(by_name[name], np.float64).reshape(-1)
            worst = max(worst, float(np.max(np.abs(approximation(values, form) - gelu(values)), initial=0.0)))
    return worst
