"""Node-building helpers shared by the NPU legalization passes (no pass lives here).

The legalizations replace one ONNX node by a few simpler ones; :class:`Emit`
appends those with fresh names, static shapes and the right dtype so the result
passes the ONNX checker without a shape-inference round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs
from nirc.passes._rewrite import Namer


class Emit:
    """Appends nodes to ``graph`` named after ``base`` (the node being replaced)."""

    def __init__(self, graph: gs.Graph, namer: Namer, base: str, dtype: Any) -> None:
        self.graph = graph
        self.namer = namer
        self.base = base
        self.dtype = np.dtype(dtype)

    def const(self, suffix: str, values: Any, dtype: Any = None) -> gs.Constant:
        array = np.asarray(values, dtype=self.dtype if dtype is None else dtype)
        return self.namer.constant(f"{self.base}_{suffix}", array)

    def ints(self, suffix: str, values: Sequence[int]) -> gs.Constant:
        return self.const(suffix, np.asarray(values, np.int64), np.int64)

    def node(
        self,
        op: str,
        suffix: str,
        inputs: Sequence[gs.Tensor],
        shape: Sequence[int],
        attrs: dict[str, Any] | None = None,
        output: gs.Tensor | None = None,
    ) -> gs.Tensor:
        """Append ``op``; its output is ``output`` if given (rewiring a replaced node's result)."""
        out = output or gs.Variable(self.namer.fresh(f"{self.base}_{suffix}"), dtype=self.dtype, shape=list(shape))
        name = self.namer.fresh(f"{self.base}_{suffix}")
        node = gs.Node(op, name, attrs=dict(attrs or {}), inputs=list(inputs), outputs=[out])
        self.graph.nodes.append(node)
        return out

    def reduce_mean(self, x: gs.Tensor, shape: Sequence[int], axes: Sequence[int], suffix: str) -> gs.Tensor:
        """``ReduceMean(x, axes, keepdims=1)``, in two stages over a 4-D map's spatial axes then channels.

        Vela reduces over the channel axis of an NHWC map only when H, W or C is 1,
        so a mean over C plus space is taken as the mean over space, then over
        channels: with equal counts per channel the mean of means is the mean.
        """
        rank = len(shape)
        norm = sorted({a % rank for a in axes})
        spatial = [a for a in norm if a >= 2]
        if rank == 4 and 1 in norm and spatial:
            inner_shape = [1 if i in spatial else d for i, d in enumerate(shape)]
            x = self.node("ReduceMean", f"{suffix}_hw", [x, self.ints(f"{suffix}_hw_axes", spatial)],
                          inner_shape, {"keepdims": 1})  # fmt: skip
            shape, norm = inner_shape, [a for a in norm if a < 2]
        out_shape = [1 if i in norm else d for i, d in enumerate(shape)]
        return self.node("ReduceMean", suffix, [x, self.ints(f"{suffix}_axes", norm)], out_shape, {"keepdims": 1})
