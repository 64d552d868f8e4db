"""The lowering registry: one :class:`~nirc.tflite.rules.OpRule` per ONNX op type.

``supported_ops()`` is exactly this dict's keys, so the public list can never drift
from what the emitter implements.
"""

from __future__ import annotations

import onnx

from nirc.tflite import (
    ops_act,
    ops_conv,
    ops_cpu,
    ops_eltwise,
    ops_fc,
    ops_gather,
    ops_math,
    ops_matmul,
    ops_pool,
    ops_resize,
    ops_shape,
)
from nirc.tflite.builder import QParams
from nirc.tflite.context import Emitter
from nirc.tflite.graph import GraphInfo
from nirc.tflite.rules import OpRule, always, tie_input_outputs


def _tie_all(info: GraphInfo, node: onnx.NodeProto) -> list[str]:
    return [*[n for n in node.input if n], node.output[0]]


def _softmax_fixed(info: GraphInfo, node: onnx.NodeProto) -> QParams | None:
    return ops_act.sigmoid_fixed(info, node)


def _pool_ties(info: GraphInfo, node: onnx.NodeProto) -> list[str]:
    return ops_pool.pool_ties(info, node)


def _global_ties(info: GraphInfo, node: onnx.NodeProto) -> list[str]:
    # Ties only matter in int8, where GlobalAveragePool is a (rescaling) MEAN.
    is_max_pool = node.op_type == "GlobalMaxPool" and ops_pool.global_as_pool(info, node)
    return tie_input_outputs(info, node) if is_max_pool else []


def _check_matmul(info: GraphInfo, node: onnx.NodeProto) -> str | None:
    if ops_matmul.is_batch_matmul(info, node):
        return ops_matmul.check_batch_matmul(info, node)
    return ops_fc.check_matmul(info, node)


def _lower_matmul(em: Emitter, node: onnx.NodeProto) -> None:
    """Constant B: a layer (FULLY_CONNECTED); computed B: attention's BATCH_MATMUL."""
    if ops_matmul.is_batch_matmul(em.info, node):
        ops_matmul.lower_batch_matmul(em, node)
    else:
        ops_fc.lower_matmul(em, node)


def _matmul_fusable(info: GraphInfo, node: onnx.NodeProto) -> bool:
    return not ops_matmul.is_batch_matmul(info, node)  # BATCH_MATMUL has no fused activation


def _dropout_ties(info: GraphInfo, node: onnx.NodeProto) -> list[str]:
    return [node.input[0], node.output[0]]


_RESHAPE = OpRule(ops_shape.lower_reshape, ties=tie_input_outputs)
_BINARY = OpRule(ops_eltwise.lower_binary, fusable=always)

LOWERINGS: dict[str, OpRule[Emitter]] = {
    "Conv": OpRule(ops_conv.lower_conv, check=ops_conv.check_conv, fusable=always),
    "Gemm": OpRule(ops_fc.lower_gemm, check=ops_fc.check_gemm, fusable=always),
    "MatMul": OpRule(_lower_matmul, check=_check_matmul, fusable=_matmul_fusable),
    "Add": _BINARY,
    "Sub": _BINARY,
    "Mul": _BINARY,
    "Div": OpRule(ops_eltwise.lower_binary, check=ops_eltwise.check_div, fusable=always),
    "BatchNormalization": OpRule(ops_eltwise.lower_batchnorm, check=ops_eltwise.check_batchnorm,
                                 fusable=always),
    "PRelu": OpRule(ops_eltwise.lower_prelu, check=ops_eltwise.check_prelu),
    "MaxPool": OpRule(ops_pool.lower_pool, check=ops_pool.check_pool, fusable=ops_pool.pool_fusable,
                      ties=_pool_ties),
    "AveragePool": OpRule(ops_pool.lower_pool, check=ops_pool.check_pool, fusable=ops_pool.pool_fusable,
                          ties=_pool_ties),
    "GlobalAveragePool": OpRule(ops_pool.lower_global_pool, check=ops_pool.check_global,
                                fusable=ops_pool.global_as_pool, ties=_global_ties),
    "GlobalMaxPool": OpRule(ops_pool.lower_global_pool, check=ops_pool.check_global,
                            fusable=ops_pool.global_as_pool, ties=_global_ties),
    "ReduceMean": OpRule(ops_pool.lower_reduce_mean, check=ops_pool.check_reduce_mean),
    "Relu": OpRule(ops_act.lower_relu),
    "Clip": OpRule(ops_act.lower_clip, check=ops_act.check_clip, ties=ops_act.clip_ties),
    "LeakyRelu": OpRule(ops_act.lower_leaky_relu, ties=ops_act.leaky_ties),
    "Sigmoid": OpRule(ops_act.lower_sigmoid, fixed=ops_act.sigmoid_fixed),
    "Tanh": OpRule(ops_act.lower_tanh, fixed=ops_act.tanh_fixed),
    "HardSwish": OpRule(ops_act.lower_hard_swish),
    "HardSigmoid": OpRule(ops_act.lower_hard_sigmoid),
    "Elu": OpRule(ops_act.lower_elu, check=ops_act.check_elu),
    "Exp": OpRule(ops_act.lower_exp),
    "Log": OpRule(ops_act.lower_log),
    "Softplus": OpRule(ops_act.lower_softplus),
    "Mish": OpRule(ops_act.lower_mish),
    "Softmax": OpRule(ops_act.lower_softmax, check=ops_act.check_softmax, fixed=_softmax_fixed),
    "LogSoftmax": OpRule(ops_act.lower_log_softmax, check=ops_act.check_softmax),
    "Identity": OpRule(ops_act.lower_identity, ties=tie_input_outputs, alias=True),
    "Dropout": OpRule(ops_act.lower_identity, check=ops_act.check_dropout, ties=_dropout_ties, alias=True),
    "Reshape": _RESHAPE,
    "Flatten": _RESHAPE,
    "Squeeze": _RESHAPE,
    "Unsqueeze": _RESHAPE,
    "Transpose": OpRule(ops_shape.lower_transpose, ties=tie_input_outputs, alias=True),
    "Concat": OpRule(ops_shape.lower_concat, check=ops_shape.check_concat, ties=_tie_all),
    "Split": OpRule(ops_shape.lower_split, check=ops_shape.check_split, ties=tie_input_outputs),
    "Slice": OpRule(ops_shape.lower_slice, check=ops_shape.check_slice, ties=tie_input_outputs),
    "Pad": OpRule(ops_shape.lower_pad, check=ops_shape.check_pad, ties=tie_input_outputs),
    "Resize": OpRule(ops_resize.lower_resize, check=ops_resize.check_resize, ties=tie_input_outputs),
    "Max": OpRule(ops_eltwise.lower_minmax, ties=ops_eltwise.minmax_ties),
    "Min": OpRule(ops_eltwise.lower_minmax, ties=ops_eltwise.minmax_ties),
    "Einsum": OpRule(ops_matmul.lower_einsum, check=ops_matmul.check_einsum, ties=ops_matmul.einsum_ties),
    "Gather": OpRule(ops_gather.lower_gather, check=ops_gather.check_gather, ties=tie_input_outputs),
    **{op: OpRule(ops_cpu.lower_unary) for op in (*ops_cpu.INT8_UNARY, *ops_cpu.FLOAT_UNARY)},
    **{op: OpRule(ops_cpu.lower_reduce, check=ops_cpu.check_reduce, ties=ops_cpu.reducer_ties)
       for op in ops_cpu.REDUCERS},
    "ReduceL2": OpRule(ops_cpu.lower_reduce_l2, check=ops_cpu.check_reduce),
    "Cast": OpRule(ops_cpu.lower_cast, check=ops_cpu.check_cast, ties=tie_input_outputs, alias=True),
    "Pow": OpRule(ops_math.lower_pow, check=ops_math.check_pow),
}  # fmt: skip
