"""16-bit activations for the layers where int8 loses the most: which tensors, what it costs, what it buys.

Why: some layers cannot be represented well on an int8 grid (a normaliser's denominator, a
LayerNorm's centred input, a feature map with a few large outliers), and per-layer SNR shows
where (:func:`nirc.accuracy.worst_steps`). Ethos-U runs int16 activations against int8
weights (16x8) on the NPU at a cycle cost, so promoting only those layers buys accuracy
for a measured price. Opt-in: the int8 model is the default; this module reports both.

"Promoting layer T" keeps tensor T in int16 *and* lets its consumers read it in int16, i.e.
their outputs are int16 too (:func:`layer_group`): a consumer that read T back in int8 would
round it to the same int8 grid again and gain nothing. The int16 region ends where an int8
op reads it, through a QUANTIZE that Vela runs on the NPU.

Auto mode ranks layers by their per-layer SNR drop (then every other int16-capable tensor) and
tries the first 1, 2, 4, ... (all, last)
until every output reaches ``min_snr_db`` or Vela's estimate grows by more than ``max_cost_pct``
over the int8 model; it keeps the first prefix that meets the target, else the one with the
best output SNR (by at least ``MIN_GAIN_DB``) within the cost limit.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from nirc.errors import BackendError
from nirc.quant.calibration import CalibrationSet

if TYPE_CHECKING:
    from nirc.backend import EmitResult
    from nirc.options import OptimizeOptions
    from nirc.target import Target
    from nirc.tflite import TFLiteModel

logger = logging.getLogger(__name__)

AUTO = "auto"
DEFAULT_MIN_SNR_DB = 30.0
"""Auto mode's target when none is given: every output's int8 SNR at least this."""
DEFAULT_MAX_COST_PCT = 25.0
"""Auto mode stops before Vela's latency estimate grows by more than this over the int8 model."""
LAYER_SAMPLES = 4
"""Samples the per-layer ranking runs on (it keeps every intermediate tensor)."""
MAX_ROUNDS = 12
"""Auto mode's emit + validate + Vela rounds at most: prefixes of 1, 2, 4, ... 2048 layers, then all."""
MIN_GAIN_DB = 0.1
"""A prefix replaces a shorter one only if it raises the worst output SNR by at least this."""


@dataclass(frozen=True)
class Act16Request:
    """What the user asked for: explicit layers (ONNX tensor names) or ``auto`` under a target."""

    layers: tuple[str, ...] = ()
    auto: bool = False
    min_snr_db: float = DEFAULT_MIN_SNR_DB
    max_cost_pct: float = DEFAULT_MAX_COST_PCT

    @classmethod
    def parse(cls, spec: Sequence[str], min_snr_db: float | None, max_cost_pct: float | None) -> Act16Request | None:
        """From ``--activations-16 auto|T1,T2`` and ``--min-snr``; None when neither is given."""
        if isinstance(spec, str):  # the library's activations_16="auto"
            spec = (spec,)
        names = tuple(n.strip() for item in spec for n in item.split(",") if n.strip())
        auto = AUTO in names or (not names and min_snr_db is not None)
        if not names and not auto:
            return None
        return cls(
            layers=tuple(n for n in names if n != AUTO),
            auto=auto,
            min_snr_db=DEFAULT_MIN_SNR_DB if min_snr_db is None else float(min_snr_db),
            max_cost_pct=DEFAULT_MAX_COST_PCT if max_cost_pct is None else float(max_cost_pct),
        )


@dataclass(frozen=True)
class Cost:
    """Vela's estimate of one TFLite model: total and per op (keyed by output tensor name)."""

    ms: float
    cycles: int
    layer_cycles: dict[str, int] = field(default_factory=dict)

    def cycles_of(self, names: set[str]) -> int:
        """Cycles of the ops writing ``names`` and of the QUANTIZEs the emitter named after them."""
        prefixes = tuple(f"{n}/" for n in names)  # "<tensor>/requant", "<tensor>/pad"
        return sum(c for name, c in self.layer_cycles.items() if name in names or name.startswith(prefixes))


CostFn = Callable[["TFLiteModel"], Cost]


def vela_cost(target: Target) -> CostFn:
    """Vela's estimate on ``target`` (in a temporary directory) as a :data:`CostFn`."""

    def measure(model: TFLiteModel) -> Cost:
        from nirc.targets.ethos_u.vela_driver import compile_with_vela

        with tempfile.TemporaryDirectory(prefix="nirc-act16-") as tmp:
            path = Path(tmp) / "model.tflite"
            path.write_bytes(model.data)
            result = compile_with_vela(path, target, Path(tmp) / "vela")
        per_op: dict[str, int] = {}
        for layer in result.layers:
            per_op[layer.name] = per_op.get(layer.name, 0) + layer.op_cycles
        return Cost(result.inference_time_ms, result.cycles_total, per_op)

    return measure


def layer_group(proto: onnx.ModelProto, name: str, promotable: set[str], emitted: set[str] | None = None) -> set[str]:
    """Tensor ``name`` and the outputs of its consumers that can be int16 (see the module docstring).

    Consumers are followed through ops that only move data (a Reshape, a Transpose) so that the
    op that computes with the value reads it in int16, and through tensors the emitter does not
    write (a conv's output before the ReLU fused into it) to the tensor it does write.
    """
    written = promotable if emitted is None else emitted
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(node)
    group = {name}
    frontier = [name]
    while frontier:
        tensor = frontier.pop()
        for node in consumers.get(tensor, []):
            for out in node.output:
                if not out or out in group:
                    continue
                if out not in written:
                    group.add(out)  # not emitted: harmless in the set, and its consumer writes it
                    frontier.append(out)
                elif out in promotable:
                    group.add(out)
                    if node.op_type in _MOVES_DATA:
                        frontier.append(out)
    return group


_MOVES_DATA = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Dropout", "Pad"})


def promotable_tensors(proto: onnx.ModelProto) -> tuple[set[str], dict[str, str]]:
    """Tensors the emitter can hold in int16, and why each other activation cannot."""
    from nirc.tflite.emit import plan_lowering
    from nirc.tflite.graph import GraphInfo
    from nirc.tflite.ops import LOWERINGS
    from nirc.tflite.qplan import tie_groups
    from nirc.tflite.wide import producers, wide_blockers

    info = GraphInfo.build(proto)
    patterns, fusion = plan_lowering(info)
    names = set(producers(info, fusion))
    blocked = wide_blockers(info, fusion, names, patterns.skipped | set(patterns.lower))
    # A tied group (a Reshape's input and output, a Concat's inputs) is one width: one member
    # that cannot be int16 keeps the whole group int8.
    for group in tie_groups(info, fusion, LOWERINGS):
        stuck = next((m for m in sorted(group) if m in blocked), None)
        if stuck is None:
            continue
        for member in group:
            if member not in blocked and member in names:
                blocked[member] = f"shares its int8 parameters with '{stuck}' ({blocked[stuck]})"
    return names - set(blocked), blocked


@dataclass(frozen=True)
class _Search:
    """What every trial emission needs: the model, what may be int16, how to emit and cost it."""

    proto: onnx.ModelProto
    promotable: set[str]
    blocked: dict[str, str]
    emit: Callable[[set[str]], EmitResult]
    cost: CostFn
    samples: list[dict[str, Any]]
    reference: list[list[Any]]  # the float model's outputs on ``samples`` (ORT), shared by every trial

    def trial(self, layers: list[str]) -> _Trial:
        emitted_names = self.promotable | set(self.blocked)
        wide: set[str] = set()
        for name in layers:
            wide |= layer_group(self.proto, name, self.promotable, emitted_names)
        wide &= emitted_names
        emitted = self.emit(wide)
        snr = _worst_output_snr(self.reference, emitted, self.samples)
        return _Trial(layers, wide, emitted, snr, self.cost(emitted.tflite))


@dataclass
class _Trial:
    layers: list[str]
    wide: set[str]
    emitted: EmitResult
    snr_db: float
    cost: Cost


def promote(
    proto: onnx.ModelProto,
    calib: CalibrationSet,
    base: EmitResult,
    request: Act16Request,
    emit: Callable[[set[str]], EmitResult],
    cost: CostFn,
    label: str = "<model>",
    progress: Callable[[str], None] | None = None,
) -> tuple[EmitResult, dict[str, Any]]:
    """The mixed int8/int16 emission ``request`` asks for, and the report section that explains it.

    Args:
        base: the int8 emission (the reference for cost and accuracy).
        emit: emits ``proto`` with the given tensors as int16 (same calibration and options as ``base``).
        cost: Vela's estimate of a TFLite model.

    Raises:
        BackendError: an explicitly named layer is not a tensor of the model or cannot be int16.
    """
    from nirc.accuracy import layer_errors, worst_steps
    from nirc.verify import run_onnx

    say = progress or (lambda _message: None)
    promotable, blocked = promotable_tensors(proto)
    if request.layers:  # before any measurement: a misspelt name fails at once
        _check_named(proto, request.layers, promotable, blocked, label)
    samples = list(calib.samples)
    reference = run_onnx(proto, samples)
    base_snr = _worst_output_snr(reference, base, samples)
    say("16-bit activations: Vela estimate of the int8 model")
    base_cost = cost(base.tflite)
    say("16-bit activations: per-layer int8 error")
    errors = layer_errors(proto, base.tflite, samples[:LAYER_SAMPLES])
    ranked = worst_steps(proto, errors, count=len(errors))
    drops = {r["tensor"]: r for r in ranked}
    before_snr = {e.tensor: e.snr_db for e in errors}

    base_trial = _Trial([], set(), base, base_snr, base_cost)
    search = _Search(proto, promotable, blocked, emit, cost, samples, reference)
    steps: list[dict[str, Any]] = []
    refused: dict[str, str] = {}
    chosen = _Trial(list(request.layers), set(), base, base_snr, base_cost)
    if request.layers:
        chosen = search.trial(list(request.layers))
        steps.append(_step_json(chosen, base_trial, accepted=True))
    if request.auto:
        candidates, refused = _candidates(search, [r["tensor"] for r in ranked if r["tensor"] not in chosen.layers])
        # Then the rest, in graph order: the last prefix is every tensor that can be int16 (the ceiling).
        listed = set(candidates) | set(chosen.layers)
        candidates += [e.tensor for e in errors if e.tensor in promotable and e.tensor not in listed]
        chosen = _auto(search, chosen, base_trial, candidates, request, steps, say)

    layers = []
    if chosen.layers:
        after = {e.tensor: e.snr_db for e in layer_errors(proto, chosen.emitted.tflite, samples[:LAYER_SAMPLES])}
        for name in chosen.layers:
            group = layer_group(proto, name, promotable, promotable | set(blocked)) & chosen.wide
            ranked_row = drops.get(name, {})
            layers.append(
                {
                    "tensor": name,
                    "op": ranked_row.get("op"),
                    "int16_tensors": sorted(group),
                    "int8_drop_db": ranked_row.get("drop_db"),
                    "snr_db_int8": _db(before_snr.get(name)),
                    "snr_db_mixed": _db(after.get(name)),
                    "snr_gain_db": _gain(before_snr.get(name), after.get(name)),
                    "cycles_int8": base_cost.cycles_of(group),
                    "cycles_mixed": chosen.cost.cycles_of(group),
                }
            )
    section = {
        "mode": "auto" if request.auto else "layers",
        "min_snr_db": request.min_snr_db if request.auto else None,
        "max_cost_pct": request.max_cost_pct if request.auto else None,
        "int8": {"snr_db": _db(base_snr), "inference_time_ms": round(base_cost.ms, 4), "cycles": base_cost.cycles},
        "mixed": {
            "snr_db": _db(chosen.snr_db),
            "inference_time_ms": round(chosen.cost.ms, 4),
            "cycles": chosen.cost.cycles,
        },
        "cost_pct": round(_pct(chosen.cost, base_cost), 2),
        "snr_gain_db": _gain(base_snr, chosen.snr_db),
        "target_met": chosen.snr_db >= request.min_snr_db if request.auto else None,
        "int16_tensors": len(chosen.wide),
        "layers": layers,
        "steps": steps,
        "not_promotable": refused,
    }
    return chosen.emitted, section


def _auto(
    search: _Search,
    current: _Trial,
    base: _Trial,
    candidates: list[str],
    request: Act16Request,
    steps: list[dict[str, Any]],
    say: Callable[[str], None],
) -> _Trial:
    """Prefixes of the ranked candidates, 1, 2, 4, ... all: the first to meet the target, else the best.

    Prefixes, not separate batches: one layer's gain is often below the run-to-run spread of the
    output SNR, so batches judged alone are kept or dropped at random; a prefix only grows. The
    last prefix is every candidate, so the search also finds what int16 can do at most.
    """
    best = current
    size = 1
    for _ in range(MAX_ROUNDS):
        if best.snr_db >= request.min_snr_db or not candidates:
            break
        layers = [*current.layers, *candidates[:size]]
        say(f"16-bit activations: trying {len(layers)} layer(s)")
        trial = search.trial(layers)
        over = _pct(trial.cost, base.cost) > request.max_cost_pct
        better = not over and trial.snr_db >= best.snr_db + MIN_GAIN_DB
        steps.append(_step_json(trial, base, accepted=better, added=candidates[:size]))
        if over:
            break
        if better:
            best = trial
        if size >= len(candidates):
            break
        size = min(2 * size, len(candidates))
    for step in steps:  # only the prefix kept in the end is marked
        step["accepted"] = step["layers"] == len(best.layers) and best is not current
    return best


def _candidates(search: _Search, ranked: list[str], shown: int = 10) -> tuple[list[str], dict[str, str]]:
    """The ranked layers worth promoting, and why the worst others are not.

    A layer whose every reader stays int8 (a HardSwish, a Sigmoid) would be rounded to the same
    int8 grid again at its readers' QUANTIZE: promoting it buys nothing, so it is not tried.
    """
    emitted = search.promotable | set(search.blocked)
    useful: list[str] = []
    refused: dict[str, str] = {}
    for name in ranked:
        if name in search.blocked:
            reason = search.blocked[name]
        elif len(layer_group(search.proto, name, search.promotable, emitted) & emitted) > 1:
            useful.append(name)
            continue
        else:
            reason = "every op reading it stays int8"
        if len(refused) < shown:
            refused[name] = reason
    return useful, refused


def _check_named(
    proto: onnx.ModelProto, names: Sequence[str], promotable: set[str], blocked: dict[str, str], label: str
) -> None:
    for name in names:
        if name in promotable:
            continue
        if name in blocked:
            raise BackendError(f"{label}: --activations-16 {name}: {blocked[name]}")
        raise BackendError(f"{label}: --activations-16 {name}: no such activation tensor in the optimized model")


def _worst_output_snr(reference: list[list[Any]], emitted: EmitResult, samples: list[dict[str, Any]]) -> float:
    from nirc.validate import compare_to_reference

    return min(float(c.snr_db) for c in compare_to_reference(reference, emitted.tflite, samples))


def _step_json(trial: _Trial, base: _Trial, accepted: bool, added: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "layers": len(trial.layers),
        "added": list(added),
        "int16_tensors": len(trial.wide),
        "snr_db": _db(trial.snr_db),
        "inference_time_ms": round(trial.cost.ms, 4),
        "cost_pct": round(_pct(trial.cost, base.cost), 2),
        "accepted": accepted,
    }


def _pct(cost: Cost, base: Cost) -> float:
    return 100.0 * (cost.ms - base.ms) / base.ms if base.ms > 0 else 0.0


def _db(value: float | None) -> float | str | None:
    if value is None:
        return None
    return round(value, 3) if math.isfinite(value) else "inf"


def _gain(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or not (math.isfinite(before) and math.isfinite(after)):
        return None
    return round(after - before, 3)


def promote_in_pipeline(
    proto: onnx.ModelProto,
    calib: CalibrationSet,
    base: EmitResult,
    options: OptimizeOptions,
    target: Target,
    label: str,
    progress: Callable[[str], None],
) -> tuple[EmitResult, dict[str, Any]]:
    """:func:`promote` with the pipeline's emission options and Vela on ``target``."""
    from nirc.backend import emit

    request = Act16Request.parse(options.activations_16, options.min_snr, options.act16_max_cost)
    if request is None:
        return base, {}
    cal = options.calibration

    def emit_wide(wide: set[str]) -> EmitResult:
        return emit(
            proto, dtype="int8", calib=calib, method=cal.method, io_dtype=options.io_dtype, label=label,
            weights=cal.weights, bias_correction=cal.bias_correction, wide=wide, ranges=base.ranges,
        )  # fmt: skip

    return promote(proto, calib, base, request, emit_wide, vela_cost(target), label, progress)
