"""The per-op contract every lowering registers (see :mod:`nirc.tflite.ops`).

A rule bundles what the planning passes need to know about an ONNX op *before*
any tensor is emitted: whether its attributes are supported, whether the TFLite op
it becomes can absorb a following activation, which tensors TFLite requires to share
one quantization, and whether its output quantization is fixed by the runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import onnx

from nirc.tflite.builder import QParams
from nirc.tflite.graph import GraphInfo

EmitterT = TypeVar("EmitterT")
"""The emitter a lowering writes into (:class:`nirc.tflite.context.Emitter`). A type parameter, so
this module, which the planners (fusion, qplan) import, need not import the emitter that imports them."""


def _no_problem(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    return None


def _never(info: GraphInfo, node: onnx.NodeProto) -> bool:
    return False


def _no_ties(info: GraphInfo, node: onnx.NodeProto) -> list[str]:
    return []


def _no_fixed(info: GraphInfo, node: onnx.NodeProto) -> QParams | None:
    return None


def tie_input_outputs(info: GraphInfo, node: onnx.NodeProto) -> list[str]:
    """Data input and every output share quantization (data-movement ops)."""
    return [node.input[0], *[o for o in node.output if o]]


@dataclass(frozen=True)
class OpRule(Generic[EmitterT]):
    """How one ONNX op type is checked, planned and lowered.

    Attributes:
        lower: emits the TFLite ops for one node.
        check: returns why a node's attributes/shapes are unsupported, or None.
        fusable: whether the lowering can take a fused activation for this node.
        ties: tensors TFLite requires to share int8 parameters (e.g. CONCATENATION
            and RESHAPE do not rescale); the planner unifies their ranges.
        fixed: output parameters imposed by TFLite (LOGISTIC, SOFTMAX, TANH).
        alias: the output is the input (Identity): no calibration range required.
    """

    lower: Callable[[EmitterT, onnx.NodeProto], None]
    check: Callable[[GraphInfo, onnx.NodeProto], str | None] = _no_problem
    fusable: Callable[[GraphInfo, onnx.NodeProto], bool] = _never
    ties: Callable[[GraphInfo, onnx.NodeProto], list[str]] = _no_ties
    fixed: Callable[[GraphInfo, onnx.NodeProto], QParams | None] = _no_fixed
    alias: bool = False


def always(info: GraphInfo, node: onnx.NodeProto) -> bool:
    return True
