"""ONNX ops that TFLite has a builtin for but nirc does not lower yet, and how a rejection names them.

Why: "unsupported" means two different things to a user.  An op with no TFLite form
at all (Erf outside GELU, Det, GridSample, ...) can never run on an Ethos-U system
from a TFLite file: the model must change.  An op TFLite does have (TopK -> TOPK_V2)
could run on the Cortex-M, and only nirc's emitter lacks the lowering: that is nirc's
gap, not the model's.  The rejection line keeps them apart.
"""

from __future__ import annotations

from collections import Counter

#: ONNX op type -> the TFLite builtin it corresponds to, for ops the emitter does not lower.
TFLITE_BUILTINS: dict[str, str] = {
    "And": "LOGICAL_AND", "ArgMax": "ARG_MAX", "ArgMin": "ARG_MIN", "BitShift": "RIGHT_SHIFT",
    "ConvTranspose": "TRANSPOSE_CONV", "CumSum": "CUMSUM", "DepthToSpace": "DEPTH_TO_SPACE",
    "DequantizeLinear": "DEQUANTIZE", "Elu": "ELU", "Equal": "EQUAL", "Expand": "BROADCAST_TO",
    "GatherND": "GATHER_ND", "Gelu": "GELU", "Greater": "GREATER", "GreaterOrEqual": "GREATER_EQUAL",
    "LRN": "LOCAL_RESPONSE_NORMALIZATION", "LSTM": "UNIDIRECTIONAL_SEQUENCE_LSTM", "Less": "LESS",
    "LessOrEqual": "LESS_EQUAL", "Mod": "FLOOR_MOD",
    "NonMaxSuppression": "NON_MAX_SUPPRESSION_V5", "NonZero": "WHERE", "Not": "LOGICAL_NOT",
    "OneHot": "ONE_HOT", "Or": "LOGICAL_OR", "QuantizeLinear": "QUANTIZE", "Range": "RANGE",
    "Reciprocal": "DIV", "ReduceProd": "REDUCE_PROD", "ReverseSequence": "REVERSE_SEQUENCE",
    "ScatterND": "SCATTER_ND", "Sign": "SIGN", "SpaceToDepth": "SPACE_TO_DEPTH", "Sum": "ADD_N",
    "Tile": "TILE", "TopK": "TOPK_V2", "Unique": "UNIQUE", "Where": "SELECT_V2",
}  # fmt: skip


def format_unsupported(unsupported: Counter[str]) -> str:
    """One line: the op types with no TFLite form, then those nirc does not lower yet, with counts."""
    ranked = sorted(unsupported.items(), key=lambda kv: (-kv[1], kv[0]))
    no_form = [f"{op} x{n}" for op, n in ranked if op not in TFLITE_BUILTINS]
    not_yet = [f"{op} x{n} ({TFLITE_BUILTINS[op]})" for op, n in ranked if op in TFLITE_BUILTINS]
    parts = []
    if no_form:
        parts.append("ops with no TFLite form: " + ", ".join(no_form))
    if not_yet:
        parts.append("ops nirc does not lower yet (TFLite has them): " + ", ".join(not_yet))
    return "; ".join(parts)
