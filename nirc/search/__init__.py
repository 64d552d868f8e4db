"""Model search: which architecture, at which input size, meets a latency budget on a target.

Map of the package:

* :mod:`~nirc.search.graph` -- the torch-free seeded ONNX builder (also used by ``examples/``);
* :mod:`~nirc.search.families` -- parametric families (MobileNetV2, EfficientNet-lite, fused
  inverted bottlenecks, ResNet, RepVGG, GhostNet, YOLOv8-style n/s/m) and the candidate grid;
* :mod:`~nirc.search.evaluate` -- cost one candidate as nirc compiles it (cached), and fan many
  out serially, on a process pool or on Ray;
* :mod:`~nirc.search.search` -- :func:`search`: the Pareto table, recommendations, files;
* :mod:`~nirc.search.scale` -- "search from my model": width and resolution variants of an ONNX;
* :mod:`~nirc.search.plot` -- the Pareto plot.
"""

from __future__ import annotations

from nirc.search.evaluate import evaluate_all
from nirc.search.families import FAMILIES, Candidate, candidates
from nirc.search.rows import Budget, Row
from nirc.search.search import SearchResult, search

__all__ = ["FAMILIES", "Budget", "Candidate", "Row", "SearchResult", "candidates", "evaluate_all", "search"]
