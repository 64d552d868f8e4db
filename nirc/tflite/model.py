"""The emitter's result types: the model bytes plus how callers feed and read it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorIO:
    """One model input or output, and how it relates to the ONNX tensor.

    Attributes:
        name: the ONNX tensor name.
        onnx_shape: shape in the ONNX graph (NCHW for images).
        tflite_shape: shape of the TFLite tensor (NHWC for images).
        perm: ``onnx_array.transpose(perm)`` gives the TFLite layout; None if identical.
        dtype: ``"float32"`` or ``"int8"``.
        scale: int8 scale (None for float32 tensors).
        zero_point: int8 zero point (None for float32 tensors).
    """

    name: str
    onnx_shape: tuple[int, ...]
    tflite_shape: tuple[int, ...]
    perm: tuple[int, ...] | None
    dtype: str
    scale: float | None
    zero_point: int | None


@dataclass(frozen=True)
class TFLiteModel:
    """A serialised TFLite flatbuffer and its I/O description."""

    data: bytes
    inputs: tuple[TensorIO, ...]
    outputs: tuple[TensorIO, ...]
