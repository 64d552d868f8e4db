"""Direct ONNX -> TFLite emitter for Ethos-U (NHWC, int8, Vela-friendly op choices).

Public API: :class:`TensorIO`, :class:`TFLiteModel`, :func:`supported_ops`,
:func:`check_supported` and :func:`emit_tflite`.  See :mod:`nirc.tflite.emit`.
"""

from __future__ import annotations

from nirc.tflite.emit import check_supported, emit_tflite, supported_ops
from nirc.tflite.model import TensorIO, TFLiteModel

__all__ = ["TFLiteModel", "TensorIO", "check_supported", "emit_tflite", "supported_ops"]
