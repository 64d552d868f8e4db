"""Hardware-aware structured compression of a float ONNX model to a latency or size budget (issue 18).

Map of the package:

* :mod:`~nirc.compress.linear` -- least-squares fitting of one Conv/Gemm layer to target activations;
* :mod:`~nirc.compress.prune` -- structured channel pruning of a channel space (L2, geometric median,
  activation-based importance);
* :mod:`~nirc.compress.lowrank` -- Tucker-2 for kxk convs, SVD for 1x1 convs and fully connected layers,
  ranks aligned to the NPU brick;
* :mod:`~nirc.compress.reconstruct` -- layer-wise reconstruction of the original activations (no labels);
* :mod:`~nirc.compress.plan` -- units (what can be compressed), levels, applying a configuration.
"""

from __future__ import annotations
