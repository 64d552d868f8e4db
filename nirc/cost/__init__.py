"""Hardware cost of (sub)graphs on a target: Vela as an oracle, cached, plus a fast analytical model.

Map of the package:

* :mod:`~nirc.cost.oracle` -- :func:`estimate`: emit int8 TFLite, compile with Vela in-process, :class:`Cost`;
* :mod:`~nirc.cost.signature` / :mod:`~nirc.cost.cache` -- the structural cache key and the on-disk cache
  (``$NIRC_CACHE_DIR``, else ``$XDG_CACHE_HOME/nirc``, else ``~/.cache/nirc``);
* :mod:`~nirc.cost.parallel` -- :func:`evaluate_many` over a process pool;
* :mod:`~nirc.cost.subgraph` -- :func:`extract_subgraph` makes a node set a standalone model;
* :mod:`~nirc.cost.layers` -- :func:`per_layer_costs` maps Vela's per-layer table to IR nodes;
* :mod:`~nirc.cost.analytical` -- a calibrated closed-form model for search loops;
* :mod:`~nirc.cost.blocks` / :mod:`~nirc.cost.profile` -- block characterization (``nirc profile-blocks``).
"""

from __future__ import annotations

from nirc.cost.analytical import AnalyticalCost, analytical_is_trusted, predict
from nirc.cost.cache import CacheInfo, cache_info, cache_root, clear_cache
from nirc.cost.layers import LayerCost, per_layer_costs
from nirc.cost.oracle import estimate
from nirc.cost.parallel import evaluate_many
from nirc.cost.signature import signature
from nirc.cost.subgraph import extract_subgraph
from nirc.cost.types import Cost, LayerRow

__all__ = [
    "AnalyticalCost",
    "CacheInfo",
    "Cost",
    "LayerCost",
    "LayerRow",
    "analytical_is_trusted",
    "cache_info",
    "cache_root",
    "clear_cache",
    "estimate",
    "evaluate_many",
    "extract_subgraph",
    "per_layer_costs",
    "predict",
    "signature",
]
