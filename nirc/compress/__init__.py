"""Hardware-aware structured compression of a float ONNX model to a latency or size budget (issue 18).

Map of the package:

* :mod:`~nirc.compress.linear` -- least-squares fitting of one Conv/Gemm layer to target activations;
* :mod:`~nirc.compress.prune` -- structured channel pruning of a channel space (L2, geometric median,
  activation-based importance);
* :mod:`~nirc.compress.lowrank` -- Tucker-2 for kxk convs, SVD for 1x1 convs and fully connected layers,
  ranks aligned to the NPU brick;
* :mod:`~nirc.compress.reconstruct` -- layer-wise reconstruction of the original activations (no labels);
* :mod:`~nirc.compress.plan` -- units (what can be compressed), levels, applying a configuration;
* :mod:`~nirc.compress.search` -- Vela cost tables, sensitivities, the greedy budgeted search;
* :mod:`~nirc.compress.api` -- :func:`compress` and :func:`write` (``nirc compress``, :mod:`.cli`).

``nirc.compress.compress(model, target, speedup=5, calib="data.npz")`` returns a
:class:`~nirc.compress.api.CompressResult` or raises
:class:`~nirc.compress.api.BudgetNotMetError` (exit code 9) carrying the closest result.
Names are imported lazily so that ``nirc compress --help`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["BudgetNotMetError", "CompressResult", "compress", "write"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(import_module("nirc.compress.api"), name)
    raise AttributeError(f"module 'nirc.compress' has no attribute {name!r}")
