"""Numerical equivalence with ONNX Runtime: the evidence behind ``exact = True``.

Inputs are random but seeded, so a failure reproduces; tolerances are relative
to each output's magnitude because float reassociation (folding a BN scale into
conv weights) changes results at the level of float32 rounding, not more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

_NP_DTYPES = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.BOOL: np.bool_,
}


def random_inputs(model: onnx.ModelProto, count: int = 3, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Seeded standard-normal inputs for each graph input (static shapes assumed)."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds: list[dict[str, np.ndarray]] = []
    for _ in range(count):
        feed: dict[str, np.ndarray] = {}
        for value in model.graph.input:
            if value.name in inits:
                continue
            tensor_type = value.type.tensor_type
            shape = [d.dim_value for d in tensor_type.shape.dim]
            dtype = _NP_DTYPES.get(tensor_type.elem_type, np.float32)
            if np.issubdtype(dtype, np.floating):
                feed[value.name] = rng.standard_normal(shape).astype(dtype)
            else:
                feed[value.name] = rng.integers(0, 4, size=shape).astype(dtype)
        feeds.append(feed)
    return feeds


def run_onnx(model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Run ORT with graph optimisations off, so we test the model and not ORT's rewrites."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return [[np.asarray(a) for a in session.run(names, feed)] for feed in feeds]


@dataclass(frozen=True)
class Mismatch:
    output: str
    max_abs_error: float
    scale: float

    def __str__(self) -> str:
        return f"output '{self.output}' differs by {self.max_abs_error:.3g} (output magnitude {self.scale:.3g})"


def compare_outputs(
    before: onnx.ModelProto,
    after: onnx.ModelProto,
    feeds: Sequence[dict[str, np.ndarray]],
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    reference: list[list[np.ndarray]] | None = None,
    produced: list[list[np.ndarray]] | None = None,
) -> Mismatch | None:
    """First output whose error exceeds ``atol * scale + rtol * |ref|``; None if all match.

    ``scale`` is the output's max magnitude (at least 1), so tolerance follows the
    output's dynamic range.
    """
    ref_runs = reference if reference is not None else run_onnx(before, feeds)
    new_runs = produced if produced is not None else run_onnx(after, feeds)
    names = [o.name for o in after.graph.output]
    for ref_outs, new_outs in zip(ref_runs, new_runs, strict=True):
        if len(ref_outs) != len(new_outs):
            return Mismatch("<outputs>", float("inf"), 0.0)
        for name, ref, new in zip(names, ref_outs, new_outs, strict=True):
            if ref.shape != new.shape:
                return Mismatch(name, float("inf"), 0.0)
            ref64 = ref.astype(np.float64)
            err = np.abs(new.astype(np.float64) - ref64)
            scale = max(1.0, float(np.max(np.abs(ref64))) if ref64.size else 1.0)
            if np.any(err > atol * scale + rtol * np.abs(ref64)):
                return Mismatch(name, float(err.max()), scale)
    return None


def run_tensors(
    proto: onnx.ModelProto, samples: Sequence[Mapping[str, np.ndarray]], names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Values of any tensors ``names`` on every sample, concatenated along axis 0.

    Passes that fit weights to activations (pruning, lossy block rules) read
    intermediate tensors this way: each named tensor becomes an extra graph output
    of a copy, run with ORT's optimisations off.
    """
    wanted = list(dict.fromkeys(names))
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    existing = {o.name for o in probe.graph.output}
    for name in wanted:
        if name not in existing:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    results: dict[str, list[np.ndarray]] = {n: [] for n in wanted}
    for sample in samples:
        for name, value in zip(wanted, session.run(wanted, dict(sample)), strict=True):
            results[name].append(np.asarray(value))
    return {n: np.concatenate(v, axis=0) for n, v in results.items()}

