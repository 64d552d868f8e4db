"""Which ONNX tensors may be emitted as int16 activations (16x8: int16 activations, int8 weights).

Why a list: a tensor is int16 only if the TFLite op that writes it has an int16 kernel in
LiteRT and TFLite Micro *and* Vela places that kernel on the NPU (Vela 5.2 takes int16
IFM/OFM for convolutions, FULLY_CONNECTED, elementwise ADD/SUB/MUL/MIN/MAX, pooling, MEAN,
PAD, CONCATENATION and the memory-only ops; convolution biases become int64, at most
40 bits; int16 LOGISTIC and TANH are the NPU's own activation functions, output in Q15).
HardSwish is emitted by its definition in elementwise ops (no int16 HARD_SWISH kernel
exists). Lowerings through int8-only kernels (GELU, SOFTMAX, RSQRT, EXP) stay int8, and so
does BATCH_MATMUL (Vela 5.2 leaves an int16 one on the CPU); their int16 neighbours reach
them through a QUANTIZE.
"""

from __future__ import annotations

from collections.abc import Collection, Set

import onnx

from nirc.errors import BackendError
from nirc.tflite.fusion import FusionPlan
from nirc.tflite.graph import GraphInfo, describe

WIDE_OPS = frozenset(
    {
        "Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "BatchNormalization", "Relu", "Clip",
        "LeakyRelu", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean",
        "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "Slice", "Pad",
        "Identity", "Dropout", "Max", "Min", "Pow", "Sigmoid", "Tanh", "HardSwish",
    }
)  # fmt: skip
"""ONNX ops whose nirc lowering has an int16 form on every runtime nirc validates with."""


def _why_not(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    from nirc.tflite import ops_math, ops_matmul

    if node.op_type not in WIDE_OPS or node.domain not in ("", "ai.onnx"):
        return f"{node.op_type} has no int16 lowering"
    if node.op_type == "MatMul" and ops_matmul.is_batch_matmul(info, node):
        return "MatMul of two activations (BATCH_MATMUL) stays int8"
    if node.op_type == "Pow" and ops_math.pow_exponent(info, node) != 2.0:
        return "Pow other than a square (RSQRT) stays int8"
    return None


def producers(info: GraphInfo, fusion: FusionPlan) -> dict[str, tuple[int, onnx.NodeProto]]:
    """Emitted tensor name -> the node that writes it (a fused activation's name -> its producer)."""
    found: dict[str, tuple[int, onnx.NodeProto]] = {}
    for idx, node in info.live_nodes():
        if idx in fusion.skipped:
            continue
        if idx in fusion.fused:  # the fused activation's output is the tensor the op writes
            found[fusion.fused[idx][1]] = (idx, node)
            continue
        for out in node.output:
            if out:
                found[out] = (idx, node)
    return found


def wide_blockers(
    info: GraphInfo, fusion: FusionPlan, names: Collection[str], lowered_apart: Set[int] = frozenset()
) -> dict[str, str]:
    """Why each of ``names`` cannot be int16 (names that can are absent).

    Graph inputs can: the model input stays int8 and a QUANTIZE widens it.
    """
    writers = producers(info, fusion)
    blocked: dict[str, str] = {}
    for name in names:
        hit = writers.get(name)
        if hit is None:
            if name not in info.inputs:
                blocked[name] = "not an emitted activation tensor"
            continue
        idx, node = hit
        reason = "lowered as part of a pattern" if idx in lowered_apart else _why_not(info, node)
        if reason is not None:
            blocked[name] = f"{describe(node, idx)}: {reason}"
    return blocked


def check_wide(
    info: GraphInfo, fusion: FusionPlan, names: Collection[str], source: str, lowered_apart: Set[int] = frozenset()
) -> None:
    """Raise BackendError naming every requested int16 tensor that cannot be int16."""
    blocked = wide_blockers(info, fusion, names, lowered_apart)
    if blocked:
        listed = "; ".join(f"'{name}' ({blocked[name]})" for name in sorted(blocked))
        raise BackendError(f"{source}: cannot emit as int16: {listed}")
