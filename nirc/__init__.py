"""nirc: a hardware-aware compiler for Arm Ethos-U NPUs.

``nirc.optimize(...)`` is the embedding API (see :func:`nirc.pipeline.optimize`);
it is imported lazily so that ``import nirc.<submodule>`` stays cheap and free of cycles.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "optimize"]


def __getattr__(name: str) -> Any:
    if name == "optimize":
        from nirc.pipeline import optimize

        return optimize
    raise AttributeError(f"module 'nirc' has no attribute {name!r}")
