"""Activation ranges of every float tensor, measured by running the float model.

Why two streamed passes over ONNX Runtime: every intermediate tensor is made a
graph output of a copy of the model so one run per sample sees them all, and
samples are processed one at a time so memory holds one sample's activations
plus a fixed-size histogram per tensor (the second pass, only for percentile
and MSE, bins values into each tensor's min/max measured by the first).
ORT runs single-threaded with graph optimisations off: the ranges belong to
exactly the graph nirc will emit, and repeated runs give identical numbers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort

from nirc.errors import CalibrationError
from nirc.quant.calibration import CalibrationSet
from nirc.quant.histogram import Histogram, mse_range, percentile_range

RangeMethod = Literal["minmax", "percentile", "mse"]
Range = tuple[float, float]

_FLOAT_TYPES = {"tensor(float)", "tensor(float16)", "tensor(double)", "tensor(bfloat16)"}
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def collect_ranges(
    model: onnx.ModelProto,
    samples: CalibrationSet | Sequence[Mapping[str, np.ndarray]],
    *,
    method: RangeMethod = "minmax",
    percentile: float = 99.99,
    bins: int = 2048,
    threads: int = 1,
) -> dict[str, Range]:
    """``(lo, hi)`` with ``lo <= 0 <= hi`` for every float graph input and node output.

    Args:
        model: float ONNX model with static shapes.
        samples: the calibration samples (input name -> array).
        method: ``minmax`` (the default, as the TFLite converter does: no
            value is clipped), ``percentile`` (drop ``100 - percentile`` percent
            of each tail), or ``mse`` (least int8 quantization error).
        percentile: for ``percentile``, in (50, 100].
        bins: histogram bins per tensor for ``percentile`` and ``mse``.
        threads: ORT intra-op threads; results do not depend on it.

    Keys follow graph order: inputs, then node outputs. Initializers are
    weights, not activations, and are not included.
    """
    if method not in ("minmax", "percentile", "mse"):
        raise CalibrationError(f"unknown range method {method!r}; expected minmax, percentile or mse")
    if method == "percentile" and not 50.0 < percentile <= 100.0:
        raise CalibrationError(f"percentile must be in (50, 100], got {percentile}")
    batch = samples.samples if isinstance(samples, CalibrationSet) else tuple(samples)
    if not batch:
        raise CalibrationError("no calibration samples")
    runner = _Runner(model, threads)

    extremes: dict[str, list[float]] = {}
    for name, values in runner.tensors(batch):
        if not np.isfinite(values).all():
            raise CalibrationError(f"tensor {name!r} has NaN or infinite values on the calibration data")
        if values.size == 0:
            continue
        lo, hi = float(values.min()), float(values.max())
        current = extremes.setdefault(name, [lo, hi])
        current[0], current[1] = min(current[0], lo), max(current[1], hi)
    missing = [name for name in runner.float_tensors if name not in extremes]
    for name in missing:  # empty tensors: a zero range, as there is nothing to quantize
        extremes[name] = [0.0, 0.0]

    if method == "minmax":
        return {name: (min(extremes[name][0], 0.0), max(extremes[name][1], 0.0)) for name in runner.float_tensors}

    hists = {name: Histogram(lo, hi, bins) for name, (lo, hi) in extremes.items()}
    for name, values in runner.tensors(batch):
        hists[name].add(values)
    if method == "percentile":
        return {name: percentile_range(hists[name], percentile) for name in runner.float_tensors}
    return {name: mse_range(hists[name]) for name in runner.float_tensors}


#: How tile-activations names a region tensor's copy in tile (i) or (i, j): ``<tensor>/tile<i>[_<j>]``.
_TILE_COPY = re.compile(r"^(?P<base>.+)/tile\d+(?:_\d+)?$")


def share_tile_ranges(ranges: Mapping[str, Range]) -> dict[str, Range]:
    """Give every tile's copy of a tensor the range of all its copies together.

    Each copy holds part of one tensor of the untiled model (tile-activations), so the
    union of their ranges is that tensor's range (min/max: exactly; the other methods:
    the union of per-tile results). With one range per tensor the tiles compute the
    untiled model's int8 codes, and the Concat that joins them does not requantize:
    tiling stays exact in int8, instead of each tile rounding on its own scale.
    """
    groups: dict[str, list[str]] = {}
    for name in ranges:
        match = _TILE_COPY.match(name)
        if match:
            groups.setdefault(match["base"], []).append(name)
    shared = dict(ranges)
    for names in groups.values():
        if len(names) > 1:
            lo = min(ranges[n][0] for n in names)
            hi = max(ranges[n][1] for n in names)
            shared.update(dict.fromkeys(names, (lo, hi)))
    return shared


class _Runner:
    """An ORT session over a copy of ``model`` that exposes every float tensor."""

    def __init__(self, model: onnx.ModelProto, threads: int) -> None:
        exposed = onnx.ModelProto()
        exposed.CopyFrom(model)
        graph = exposed.graph
        weights = {init.name for init in graph.initializer}
        present = {out.name for out in graph.output}
        for node in graph.node:
            for name in node.output:
                if name and name not in present:
                    # Untyped outputs are fine: ORT infers the type and reports it below.
                    graph.output.append(onnx.ValueInfoProto(name=name))
                    present.add(name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.use_deterministic_compute = True
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                exposed.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise CalibrationError(f"ONNX Runtime cannot run the model for calibration: {_one_line(exc)}") from None
        self.inputs = {i.name: i.type for i in self.session.get_inputs() if i.name not in weights}
        self.outputs = [o.name for o in self.session.get_outputs() if o.type in _FLOAT_TYPES]
        order = {name: i for i, name in enumerate(_graph_order(graph))}
        self.outputs.sort(key=lambda name: order.get(name, len(order)))
        float_inputs = [name for name, kind in self.inputs.items() if kind in _FLOAT_TYPES]
        self.float_tensors = [*float_inputs, *self.outputs]

    def tensors(self, samples: Sequence[Mapping[str, np.ndarray]]) -> Iterator[tuple[str, np.ndarray]]:
        """``(name, values)`` of every float tensor, one sample at a time."""
        for index, sample in enumerate(samples):
            feed = self._feed(sample, index)
            try:
                values = self.session.run(self.outputs, feed)
            except Exception as exc:
                raise CalibrationError(f"calibration sample {index}: {_one_line(exc)}") from None
            for name, array in feed.items():
                if self.inputs[name] in _FLOAT_TYPES:
                    yield name, array
            yield from zip(self.outputs, values, strict=True)

    def _feed(self, sample: Mapping[str, np.ndarray], index: int) -> dict[str, np.ndarray]:
        missing = [name for name in self.inputs if name not in sample]
        if missing:
            raise CalibrationError(
                f"calibration sample {index} has no data for input {missing[0]!r} (has {sorted(sample)})"
            )
        return {name: np.asarray(sample[name], dtype=_NUMPY_TYPES.get(kind)) for name, kind in self.inputs.items()}


def _graph_order(graph: onnx.GraphProto) -> Iterator[str]:
    for node in graph.node:
        yield from node.output


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
