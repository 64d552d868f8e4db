"""nirc: a hardware-aware compiler for Arm Ethos-U NPUs.

The embedding API: ``nirc.optimize(model, options=nirc.OptimizeOptions(...))`` takes a path, ONNX
bytes or a ModelProto and returns an :class:`OptimizeResult` holding the optimized ONNX, the int8
and Vela TFLite files and the report, writing files only when given ``outdir`` (see
:func:`nirc.pipeline.optimize`). Names are imported lazily so that ``import nirc.<submodule>``
stays cheap and free of cycles.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"
__all__ = ["CalibrationOptions", "OptimizeOptions", "OptimizeResult", "__version__", "optimize"]

_LAZY = {
    "optimize": "nirc.pipeline",
    "OptimizeResult": "nirc.pipeline",
    "OptimizeOptions": "nirc.options",
    "CalibrationOptions": "nirc.options",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nirc' has no attribute {name!r}")
