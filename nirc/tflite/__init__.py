"""Direct ONNX -> TFLite emitter for Ethos-U (NHWC, int8, Vela-friendly op choices).

Public API: :class:`TensorIO`, :class:`TFLiteModel`, :func:`supported_ops`,
:func:`check_supported` and :func:`emit_tflite`.

Why a direct emitter rather than ONNX -> TF -> converter: the result must be what
Vela places on the NPU, so every lowering is chosen against Vela's constraints (NHWC
feature maps with no TRANSPOSE, grouped convs split into NPU convs, GlobalAveragePool
as a rescaling MEAN, ...), and the output must be byte-for-byte reproducible.

Pipeline (one module each):

* :mod:`~nirc.tflite.graph` -- shapes, constants (with constant folding), use lists;
* :mod:`~nirc.tflite.fusion` -- which Relu/Clip fold into their producer;
* :mod:`~nirc.tflite.qplan` / :mod:`~nirc.tflite.quantize` -- int8 parameters;
* :mod:`~nirc.tflite.ops` -- registry of per-op lowerings (``ops_*`` modules), using
  :mod:`~nirc.tflite.context` (layouts via :mod:`~nirc.tflite.layout`, padding via
  :mod:`~nirc.tflite.padding`);
* :mod:`~nirc.tflite.builder` -- deterministic flatbuffer serialisation.
"""

from __future__ import annotations

from nirc.tflite.emit import check_supported, emit_tflite, supported_ops, unsupported_ops
from nirc.tflite.model import TensorIO, TFLiteModel
from nirc.tflite.unlowered import format_unsupported

__all__ = [
    "TFLiteModel",
    "TensorIO",
    "check_supported",
    "emit_tflite",
    "format_unsupported",
    "supported_ops",
    "unsupported_ops",
]
