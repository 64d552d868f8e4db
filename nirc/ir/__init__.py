"""nirc's IR: canonical ONNX (opset 18, static shapes) held as a graphsurgeon graph."""

from __future__ import annotations

from nirc.ir.load import CANONICAL_OPSET, canonicalize
from nirc.ir.model import IRModel
from nirc.ir.view import GraphView

__all__ = ["CANONICAL_OPSET", "GraphView", "IRModel", "canonicalize", "load_model"]


def load_model(source, input_shapes=None):  # type: ignore[no-untyped-def]
    """Shorthand for :meth:`IRModel.load`."""
    return IRModel.load(source, input_shapes)
