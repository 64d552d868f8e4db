"""How much int8 costs a model, measured the way the report measures it, cheaply enough to steer passes.

Why here: a rewrite that is exact in float (re-parameterising a RepVGG block, splitting a feature map
into tiles) can still change what int8 can represent -- a merged kernel whose centre tap absorbed an
identity branch has a wider per-channel range, a tile has its own activation range -- so the hardware
passes ask this module, not only Vela, before keeping a rewrite. It reuses the backend's own
calibration, emitter and LiteRT-vs-ORT comparison (:func:`nirc.backend.emit`,
:func:`nirc.validate.compare`): the number a pass is judged by is the number the report prints.

Layer-wise error (:func:`layer_errors`) compares every int8 tensor of the emitted TFLite (TFLite
tensors carry their ONNX names) with the float model's tensor of the same name, so a user sees
where int8 error enters.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from nirc.options import DEFAULT_MAX_SNR_DROP_DB as DEFAULT_MAX_SNR_DROP_DB
from nirc.quant import CalibrationSet, RangeMethod, snr_db
from nirc.tflite.quantize import WeightRange

logger = logging.getLogger(__name__)

GUARD_SAMPLES = 16
"""Calibration samples the guard emits and compares on: the default --calib-count, so the guard judges by
the same numbers the report prints."""


def output_snr(
    proto: onnx.ModelProto,
    calib: CalibrationSet,
    method: RangeMethod = "minmax",
    weights: WeightRange = "max",
    bias_correction: bool = False,
) -> dict[str, float]:
    """int8 SNR (dB) of every output of ``proto``: calibrate on ``calib``, emit, LiteRT vs ORT on ``calib``."""
    from nirc.backend import emit, validate

    emitted = emit(
        proto,
        dtype="int8",
        calib=calib,
        method=method,
        weights=weights,
        bias_correction=bias_correction,
    )
    return {check.name: float(check.snr_db) for check in validate(proto, emitted.tflite, calib)}


def _digest(proto: onnx.ModelProto) -> str:
    return hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()


def _feeds_digest(samples: Sequence[Mapping[str, np.ndarray]]) -> str:
    """Part of the guard's cache key: the same model measured on re-laid-out inputs is another measurement."""
    h = hashlib.sha256()
    for sample in samples:
        for name in sorted(sample):
            array = np.ascontiguousarray(sample[name])
            h.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
            h.update(array.tobytes())
    return h.hexdigest()


def _json_db(value: float) -> float | str:
    return round(value, 3) if math.isfinite(value) else ("inf" if value > 0 else "-inf")


@dataclass(frozen=True)
class Verdict:
    """The int8 error of a model before and after a rewrite, and whether the rewrite may stay.

    Attributes:
        before, after: int8 SNR (dB) per output of each model, each against its own float outputs
            (the rewrite is exact in float, so both floats agree).
        drop: the largest SNR loss over the outputs (negative: the rewrite helped).
        ok: ``drop <= max_drop``.
    """

    before: Mapping[str, float]
    after: Mapping[str, float]
    drop: float
    max_drop: float

    @property
    def ok(self) -> bool:
        return self.drop <= self.max_drop

    def to_json(self) -> dict[str, Any]:
        return {
            "int8_snr_db_before": {k: _json_db(v) for k, v in self.before.items()},
            "int8_snr_db_after": {k: _json_db(v) for k, v in self.after.items()},
            "snr_drop_db": _json_db(self.drop),
            "max_snr_drop_db": self.max_drop,
            "within_tolerance": self.ok,
        }


@dataclass
class AccuracyGuard:
    """Judges rewrites by int8 output SNR on the calibration data, with a cache keyed by model and input content.

    Attributes:
        calibration: the samples (the first ``samples`` are used).
        max_snr_drop: tolerance in dB on every output.
        method: the range method the backend will use, so the guard sees the same int8 model.
        measurements: models emitted and compared so far; ``seconds`` the time they took.
    """

    calibration: CalibrationSet
    max_snr_drop: float = DEFAULT_MAX_SNR_DROP_DB
    method: RangeMethod = "minmax"
    weights: WeightRange = "max"
    bias_correction: bool = False
    samples: int = GUARD_SAMPLES
    measurements: int = 0
    seconds: float = 0.0
    _cache: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not math.isfinite(self.max_snr_drop) or self.max_snr_drop < 0:
            raise ValueError(f"max SNR drop must be a finite number of dB >= 0, got {self.max_snr_drop}")
        if self.samples < 1:
            raise ValueError(f"accuracy guard needs at least one sample, got {self.samples}")

    def snr(self, proto: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]] | None = None) -> dict[str, float]:
        """Per-output int8 SNR of ``proto``; ``feeds`` replaces the samples when a pass re-laid out inputs."""
        samples = tuple(dict(f) for f in (feeds if feeds is not None else self.calibration.samples))[: self.samples]
        key = _digest(proto) + _feeds_digest(samples)
        if key not in self._cache:
            start = time.perf_counter()
            subset = CalibrationSet(samples, self.calibration.synthetic, self.calibration.source)
            self._cache[key] = output_snr(proto, subset, self.method, self.weights, self.bias_correction)
            self.measurements += 1
            self.seconds += time.perf_counter() - start
        return dict(self._cache[key])

    def follow(self, pass_: Any) -> None:
        """Re-lay out the samples as ``pass_`` changed the model's inputs (identity for almost every pass)."""
        samples = tuple(pass_.adapt_inputs(dict(s)) for s in self.calibration.samples)
        self.calibration = CalibrationSet(samples, self.calibration.synthetic, self.calibration.source)

    def judge(
        self,
        before: onnx.ModelProto,
        after: onnx.ModelProto,
        after_feeds: Sequence[Mapping[str, np.ndarray]] | None = None,
    ) -> Verdict:
        """Whether ``after`` loses at most ``max_snr_drop`` dB int8 SNR on every output against ``before``."""
        b = self.snr(before)
        a = self.snr(after, after_feeds)
        drops = [_drop(b[name], a.get(name, -math.inf)) for name in b]
        return Verdict(b, a, max(drops, default=0.0), self.max_snr_drop)

    def stats(self) -> dict[str, Any]:
        return {
            "max_snr_drop_db": self.max_snr_drop,
            "samples": min(self.samples, len(self.calibration)),
            "measurements": self.measurements,
            "seconds": round(self.seconds, 3),
        }


def judge_outputs(before: Sequence[Any], after: Sequence[Any], max_drop: float) -> Verdict:
    """The guard's verdict on two int8 forms of one model from their output checks (``.name``, ``.snr_db``).

    Why: ``--npu-format auto`` keeps the TOSA form only when it is faster *and* within the
    tolerance of the TFLite form's int8 accuracy, the rule every rewrite follows.
    """
    b = {c.name: float(c.snr_db) for c in before}
    a = {c.name: float(c.snr_db) for c in after}
    drops = [_drop(b[name], a.get(name, -math.inf)) for name in b]
    return Verdict(b, a, max(drops, default=0.0), max_drop)


def _drop(before: float, after: float) -> float:
    """SNR lost, with infinities handled (an exact int8 model has infinite SNR)."""
    if before == after:
        return 0.0
    if math.isinf(before) and before > 0:
        return math.inf if math.isfinite(after) or after < 0 else 0.0
    if math.isinf(after):
        return -math.inf if after > 0 else math.inf
    return before - after


@dataclass(frozen=True)
class LayerError:
    """int8 error of one intermediate tensor against the float model's tensor of the same name.

    Attributes:
        tensor: the ONNX (and TFLite) tensor name.
        op: the ONNX op that produces it.
        index: its position in the float model's execution order.
        snr_db: SNR of the dequantized int8 tensor against the float one, over all samples.
        scale: the tensor's int8 quantization step.
    """

    tensor: str
    op: str
    index: int
    snr_db: float
    scale: float

    def to_json(self) -> dict[str, Any]:
        return {
            "tensor": self.tensor,
            "op": self.op,
            "index": self.index,
            "snr_db": _json_db(self.snr_db),
            "scale": float(np.float32(self.scale)),
        }


def layer_errors(
    proto: onnx.ModelProto, tflite: Any, samples: Sequence[Mapping[str, np.ndarray]]
) -> list[LayerError]:
    """SNR of every int8 activation tensor of ``tflite`` that is also a tensor of ``proto``, in graph order.

    The error is cumulative: a tensor's SNR includes what every layer before it lost, so the layer
    where the SNR falls most is the one that adds the error. Tensors the emitter fused away (a ReLU
    folded into its conv) are compared under the name the TFLite model keeps.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from nirc.validate import to_tflite_layout
    from nirc.verify import run_tensors

    inits = {i.name for i in proto.graph.initializer}
    # Graph inputs are quantized too (index -1): their SNR is the reference of the first layers.
    producers: dict[str, tuple[int, str]] = {i.name: (-1, "input") for i in proto.graph.input if i.name not in inits}
    for index, node in enumerate(proto.graph.node):
        for out in node.output:
            producers[out] = (index, node.op_type)
    interpreter = Interpreter(
        model_content=tflite.data,
        num_threads=1,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        experimental_preserve_all_tensors=True,
    )
    interpreter.allocate_tensors()
    details = [
        d
        for d in interpreter.get_tensor_details()
        if d["name"] in producers and d["dtype"] in (np.int8, np.int16) and d["quantization"][0] > 0
    ]
    if not details:
        return []
    names = [d["name"] for d in details]
    feeds = [dict(s) for s in samples]
    reference = run_tensors(proto, feeds, names)
    got: dict[str, list[np.ndarray]] = {n: [] for n in names}
    in_details = interpreter.get_input_details()
    for feed in feeds:
        for io, detail in zip(tflite.inputs, in_details, strict=True):
            interpreter.set_tensor(detail["index"], to_tflite_layout(io, feed[io.name]))
        interpreter.invoke()
        for d in details:
            scale, zero = d["quantization"]
            got[d["name"]].append((interpreter.get_tensor(d["index"]).astype(np.float32) - zero) * scale)
    errors = []
    for d in details:
        name = d["name"]
        ref = reference[name]
        out = np.concatenate(got[name], axis=0)
        if out.ndim == 4 and ref.ndim == 4 and out.transpose(0, 3, 1, 2).shape == ref.shape:
            out = out.transpose(0, 3, 1, 2)  # the emitter lays 4-D feature maps out NHWC
        if out.shape != ref.shape:
            if out.size != ref.size:
                continue
            out = out.reshape(ref.shape)
        index, op = producers[name]
        errors.append(LayerError(name, op, index, snr_db(ref, out), float(d["quantization"][0])))
    return sorted(errors, key=lambda e: e.index)


def worst_steps(proto: onnx.ModelProto, errors: Sequence[LayerError], count: int = 5) -> list[dict[str, Any]]:
    """The layers whose output SNR falls most below their inputs': where int8 error enters.

    A layer's input SNR is the lowest SNR of the measured tensors it reads, looking through tensors
    the emitter fused away (their producer's inputs stand in); layers reading only the graph input
    are ranked by their own SNR against a perfect input.
    """
    measured = {e.tensor: e.snr_db for e in errors}
    producer = {out: node for node in proto.graph.node for out in node.output}
    memo: dict[str, float | None] = {}

    def seen(tensor: str, depth: int = 0) -> float | None:
        if tensor in measured:
            return measured[tensor]
        if tensor in memo:
            return memo[tensor]
        node = producer.get(tensor)
        found = [] if node is None or depth > 64 else [seen(t, depth + 1) for t in node.input if t]
        values = [v for v in found if v is not None]
        memo[tensor] = min(values) if values else None
        return memo[tensor]

    ranked: list[tuple[float, LayerError, float | None]] = []
    for err in errors:
        node = producer.get(err.tensor)
        inputs = [seen(t) for t in node.input if t] if node is not None else []
        known = [v for v in inputs if v is not None]
        source = min(known) if known else None
        if not math.isfinite(err.snr_db):
            continue
        if err.index < 0:
            continue  # a graph input: the reference, not a layer
        if source is None:
            drop = max(0.0, 60.0 - err.snr_db)  # against a 60 dB input: a conservative "perfect" reference
        elif math.isfinite(source):
            drop = source - err.snr_db
        else:
            drop = 60.0 - err.snr_db
        ranked.append((drop, err, source))
    ranked.sort(key=lambda item: (-item[0], item[1].index))
    return [
        {**err.to_json(), "input_snr_db": None if src is None else _json_db(src), "drop_db": round(drop, 3)}
        for drop, err, src in ranked[:count]
        if drop > 0
    ]
