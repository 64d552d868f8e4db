"""Compare the simulated Vela model with the pre-Vela int8 model run in TFLite Micro (or LiteRT).

Why TFLite Micro's reference kernels: Ethos-U is designed to be bit-exact with the
TFLite reference kernels that TFLite Micro runs beside the NPU on the device.
LiteRT's ``BUILTIN_REF`` FULLY_CONNECTED resolves rounding ties differently
(measured: 1 LSB in a logit of MobileNetV2/ResNet18 heads, where TFLite Micro and
this model agree), so LiteRT is only the fallback when TFLite Micro cannot run the
model; LiteRT's optimised kernels (ruy) round the final shift half *up* and are
kept (``kernels="optimized"``) for measuring exactly that.

Zero tolerance: ``bit_exact`` means no element of any compared tensor differs, on
any input.  Besides the outputs, every NPU operation whose result is a whole
tensor of the int8 model is compared with that tensor, so a corruption that a
later layer masks (a 1-LSB bias error under a ReLU, a LUT entry no output reaches)
still fails.  A difference is either *explained* (a named rule of a named op, e.g.
LiteRT's FULLY_CONNECTED ties) or *unexplained*; only unexplained ones fail.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from nirc.targets.ethos_u.sim import cmdstream, container, known
from nirc.targets.ethos_u.sim.engine import OpTrace
from nirc.targets.ethos_u.sim.reference import (
    LiteRTModel,
    MicroModel,
    PerOpMicro,
    Reference,
    ReferenceRun,
    model_bytes,
    runs_ahead,
)
from nirc.targets.ethos_u.sim.runner import SimulationResult, decoded, run

CPU_CHECK = "reference only"
"""How CPU-fallback ops are checked: they run in the same reference kernels as the reference itself."""


@dataclass(frozen=True)
class NpuValidation:
    """Outcome of validating the compiled NPU artifact (the report's ``validation.npu``).

    Attributes:
        method: ``"sim"`` (this functional model) or ``"fvp"`` (Arm's Corstone FVP).
        bit_exact: every compared element (outputs and mapped intermediates) equals the reference.
        max_abs_diff_lsb: largest absolute difference, in quantisation steps of the tensor's type.
        first_divergence: the first differing element (sample, op, tensor, LSB), or None.
        details: reference used, per-output and per-sample counts, intermediates, CPU ops.
        unexplained: some difference is not covered by a known rule (validation fails).
        explained: the known differences, by op and rule.
    """

    method: str
    bit_exact: bool
    max_abs_diff_lsb: float
    first_divergence: str | None
    details: dict[str, Any]
    unexplained: bool = False
    explained: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_reference(
    int8_tflite: Path | bytes,
    inputs: Mapping[str, np.ndarray],
    *,
    kernels: Literal["reference", "optimized"] = "reference",
) -> dict[str, np.ndarray]:
    """Run the pre-Vela model in LiteRT; inputs/outputs by tensor name in TFLite layout."""
    outputs: dict[str, np.ndarray] = LiteRTModel(model_bytes(int8_tflite), kernels, keep=False).run(inputs).outputs
    return outputs


def run_micro(int8_tflite: Path | bytes, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """Run the pre-Vela model in TFLite Micro; None when tflite-micro is missing or cannot run it whole."""
    try:
        outputs: dict[str, np.ndarray] = MicroModel(model_bytes(int8_tflite), keep=False).run(inputs).outputs
    except (ImportError, RuntimeError):
        return None
    return outputs


def reference_outputs(
    int8_tflite: Path | bytes,
    inputs: Mapping[str, np.ndarray],
    kernels: Literal["reference", "optimized"] = "reference",
) -> tuple[dict[str, np.ndarray], str]:
    """What the compiled artifact must reproduce, and which runtime computed it (for the report)."""
    reference = Reference(int8_tflite, kernels, keep=False)
    outputs = reference.run(inputs).outputs
    return outputs, reference.description


def _coords(shape: tuple[int, ...], flat: int) -> str:
    return "[" + ",".join(str(int(c)) for c in np.unravel_index(flat, shape)) + "]"


def _lsb_diff(out: np.ndarray, ref: np.ndarray, scale: float | None) -> np.ndarray:
    """Per-element difference; for float tensors equal values count as equal, NaN and infinities included.

    A float CPU op (a DIV of a linear attention dividing 0 by 0) gives NaN on both sides when the
    sim and the reference agree; NaN - NaN would call that a difference. A NaN or infinity on one
    side only is an infinite difference, so it still fails.
    """
    if np.issubdtype(ref.dtype, np.integer):
        return np.abs(out.astype(np.int64) - ref.astype(np.int64)).astype(np.float64)
    a, b = out.astype(np.float64), ref.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a - b) / (scale or 1.0)
    diff[(a == b) | (np.isnan(a) & np.isnan(b))] = 0.0
    diff[np.isnan(diff)] = np.inf
    return diff


def compare_outputs(
    produced: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    scales: Mapping[str, float | None],
    method: str,
    details: dict[str, Any] | None = None,
) -> NpuValidation:
    """Element-wise comparison of two output dicts (one input), differences in LSB of each output's type."""
    info: dict[str, Any] = dict(details or {})
    per_output: dict[str, Any] = {}
    worst = 0.0
    first: str | None = None
    for name, ref in reference.items():
        if name not in produced:
            raise KeyError(f"output {name!r} missing from the {method} result")
        out = np.asarray(produced[name]).reshape(ref.shape)
        diff = _lsb_diff(out, ref, scales.get(name))
        count = int(np.count_nonzero(diff))
        max_diff = float(diff.max()) if diff.size else 0.0
        per_output[name] = {"elements": int(diff.size), "differing": count, "max_abs_diff_lsb": max_diff}
        worst = max(worst, max_diff)
        if count and first is None:
            flat = int(np.flatnonzero(diff)[0])
            first = (
                f"output {name!r} element {_coords(ref.shape, flat)}: {method} {out.ravel()[flat]} vs "
                f"reference {ref.ravel()[flat]} ({count} of {diff.size} elements differ)"
            )
    info["outputs"] = per_output
    return NpuValidation(method, first is None, worst, first, info, unexplained=first is not None)


# -- intermediates ---------------------------------------------------------------


_NUMPY = {(True, 8): np.int8, (False, 8): np.uint8, (True, 16): np.int16, (True, 32): np.int32}


@dataclass(frozen=True)
class _Check:
    """One produced tensor to compare: where it came from and which reference tensors it may be."""

    op: str  # readable: "ethos-u op 0, NPU op 7 CONV (word 123)" or "CPU op 2 QUANTIZE"
    values: np.ndarray
    candidates: tuple[int, ...]  # int8-model tensor indices it may equal
    part: bool  # a depth/width slice of a larger tensor: compared only when a candidate matches
    stripes: int = 1  # cascade stripes stacked into this result
    slices: int = 1  # depth slices joined into this result
    block: cmdstream.BlockOp | None = None  # the (last) NPU operation that produced it
    pieces: tuple[_Check, ...] = ()  # stacked stripes that may instead be whole tensors each (tiles)
    reshaped: tuple[int, ...] = ()  # tensors of the same bytes in another H x W: a match, never a report
    reordered: tuple[np.ndarray, ...] = ()  # the stripes stacked by OFM address, when that order differs


def _shape3(shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """(H, W, C) of a tensor the NPU sees as NHWC (Vela's Shape4D pads at the front).

    A batch folds into the height, the same bytes: Vela runs MobileViT-XXS's (4, 4, 256, 16)
    attention MUL as one 16x256x16 operation.
    """
    if len(shape) > 4:
        return None
    full = (1,) * (4 - len(shape)) + tuple(shape)
    return (full[0] * full[1], full[2], full[3])


_Signature = tuple[tuple[int, int, int], str]


def _signatures(model: container.VelaModel) -> dict[_Signature, list[int]]:
    """int8-model activations by (H, W, C) and dtype: what an NPU OFM can be.

    Not by zero point: Vela rewrites it where the result does not depend on it (an
    average pool between equal quantisations runs with zero point 0 on both sides).
    """
    groups: dict[_Signature, list[int]] = {}
    inputs = set(model.inputs)
    for t in model.tensors:
        shape = _shape3(t.shape)
        if t.data is not None or t.index in inputs or shape is None:
            continue
        groups.setdefault((shape, np.dtype(t.dtype).name), []).append(t.index)
        flat = (1, shape[0] * shape[1], shape[2])  # the same bytes as any H x W with this H * W
        groups.setdefault((flat, f"{np.dtype(t.dtype).name}/rows"), []).append(t.index)
        size = (1, 1, flat[1] * flat[2])  # any shape of this many elements, for elementwise operations
        groups.setdefault((size, f"{np.dtype(t.dtype).name}/size"), []).append(t.index)
    return groups


def _layer_ids(stream: cmdstream.CommandStream) -> dict[int, tuple[Any, ...]]:
    """Which NPU operations are pieces of one layer (cascade stripes), by block-op index.

    A layer with weights is identified by where its bias/scale stream comes from in the
    read-only region (following the DMA that brought it to fast memory): every stripe of
    a cascaded layer reads the same one, and no two layers share one.  Operations without
    weights are keyed by everything but their height and addresses.
    """
    ids: dict[int, tuple[Any, ...]] = {}
    sources: dict[tuple[int, int], tuple[int, int]] = {}  # (region, address) -> where its bytes came from
    for op in stream.ops:
        if isinstance(op, cmdstream.DmaOp):
            if not op.dst_internal:
                sources[(op.dst.region, op.dst.address)] = (op.src.region, op.src.address)
            continue
        if op.scales is not None:
            origin = (op.scales.region, op.scales.address)
            ids[op.index] = ("scales", sources.get(origin, origin), op.ofm.width, op.ofm.depth)
        else:
            ids[op.index] = (op.name, op.kernel, op.ifm.zero_point, op.ofm.zero_point, op.ofm.width, op.ofm.depth,
                             op.activation, op.ofm.dtype, op.ofm_scale, op.opa_scale, op.opb_scale)  # fmt: skip
    return ids


def _whole_rows(fm: cmdstream.FeatureMap) -> bool:
    """The feature map's rows hold all of its buffer's width and depth (not a slice of a wider tensor).

    A depth slice (an OFM written in several parts, or into a concatenation) has row
    strides larger than its own width and depth: such a result is compared only where it
    equals a tensor, never reported as a difference.
    """
    size: int = fm.dtype.size
    if fm.layout is cmdstream.Layout.NHWC:
        return bool(fm.stride_x == fm.depth * size and fm.stride_y == fm.width * fm.stride_x)
    return bool(fm.stride_c == 16 * size * fm.width and fm.stride_y == -(-fm.depth // 16) * fm.stride_c)


def _signature(values: np.ndarray, block: cmdstream.BlockOp) -> _Signature:
    dtype = _NUMPY.get((block.ofm.dtype.signed, block.ofm.dtype.bits))
    shape = (int(values.shape[0]), int(values.shape[1]), int(values.shape[2]))
    return (shape, np.dtype(dtype).name if dtype else "")


def _reshaped(groups: dict[_Signature, list[int]], values: np.ndarray, block: cmdstream.BlockOp) -> tuple[int, ...]:
    """Tensors with the result's bytes in another H x W (same H * W and C), not already exact candidates.

    Vela runs a FULLY_CONNECTED over 256 rows as a 16x16 map (EdgeNeXt's attention
    projection), and an elementwise operation in any shape of the same size (MobileViT's
    LayerNorm square, 80x64x4, as 80x16x16). Such a tensor can match the result; it is never
    reported as a difference, since unrelated tensors share a size far more often than a shape.
    """
    shape, dtype = _signature(values, block)
    exact = set(groups.get((shape, dtype), ()))
    flat = list(groups.get(((1, shape[0] * shape[1], shape[2]), f"{dtype}/rows"), ()))
    if block.kind is cmdstream.OpKind.ELEMENTWISE:
        flat += groups.get(((1, 1, shape[0] * shape[1] * shape[2]), f"{dtype}/size"), ())
    return tuple(dict.fromkeys(i for i in flat if i not in exact))


def _npu_checks(
    call: container.NpuCall, trace: list[OpTrace], groups: dict[_Signature, list[int]], label: str
) -> list[_Check]:
    """One check per layer: a whole-tensor result as it is, a cascaded layer's stripes stacked top to bottom."""
    stream = decoded(call.command_stream)
    blocks = {b.index: b for b in stream.ops if isinstance(b, cmdstream.BlockOp)}
    ids = _layer_ids(stream)
    pieces: dict[tuple[Any, ...], list[tuple[cmdstream.BlockOp, np.ndarray]]] = {}
    for step in trace:
        block = blocks.get(step.index)
        if block is not None and step.values is not None:
            pieces.setdefault(ids[block.index], []).append((block, step.values))
    checks: list[_Check] = []
    layers = sorted(pieces.values(), key=lambda parts: parts[-1][0].index)
    for chain in _depth_chains(layers):
        if len(chain) > 1:  # depth slices of one OFM, written one after the other: joined along C
            block, values = chain[-1][0][0], np.concatenate([parts[0][1] for parts in chain], axis=2)
            where = f"{label}, NPU op {block.index} {block.name} (word {block.offset}) (with {len(chain) - 1} " \
                "earlier depth slices)"  # fmt: skip
            candidates = tuple(groups.get(_signature(values, block), ()))
            joined = _Check(where, values, candidates, False, slices=len(chain), block=block)
            checks.append(dataclasses.replace(joined, reshaped=_reshaped(groups, values, block)))
            continue
        parts = chain[0]
        block = parts[-1][0]
        where = f"{label}, NPU op {block.index} {block.name} (word {block.offset})"
        if len(parts) > 1:
            where += f" (with {len(parts) - 1} earlier stripes)"
        values = np.concatenate([v for _, v in parts], axis=0)
        by_address = _top_to_bottom(parts)
        reordered = (np.concatenate([v for _, v in by_address], axis=0),) if by_address != parts else ()
        whole = all(_whole_rows(piece.ofm) for piece, _ in parts)
        candidates = tuple(groups.get(_signature(values, block), ()))
        tiles = tuple(
            _Check(where, v, tuple(groups.get(_signature(v, piece), ())), True, block=piece) for piece, v in parts
        ) if len(parts) > 1 else ()  # fmt: skip
        check = _Check(where, values, candidates, not whole, len(parts), block=block, pieces=tiles)
        checks.append(dataclasses.replace(check, reordered=reordered, reshaped=_reshaped(groups, values, block)))
        for last, merged, whole_depth, count in _depth_sliced(parts):  # a layer written a few channels per operation
            label_joined = f"{label}, NPU op {last.index} {last.name} (word {last.offset}) (joined depth slices)"
            merged_check = _Check(label_joined, merged, tuple(groups.get(_signature(merged, last), ())),
                                  not whole_depth, slices=count, block=last)  # fmt: skip
            checks.append(dataclasses.replace(merged_check, reshaped=_reshaped(groups, merged, last)))
    return checks


def _depth_sliced(parts: _Layer) -> list[tuple[cmdstream.BlockOp, np.ndarray, bool, int]]:
    """Operations of one layer key that each write the next channels of one NHWC buffer, joined along C.

    Vela lowers BATCH_MATMUL on U55/U65 to an elementwise MUL and one REDUCE_SUM per output
    column (EfficientFormerV2's talking-heads attention: 49 one-channel slices of an 8x49x49
    result). Parts are grouped by buffer geometry (two matmuls with equal scales share a key);
    each group that chains by address gives ``(its last operation, the joined result, whether it
    spans the buffer's whole depth, how many slices)``.
    """
    if len(parts) < 2:
        return []
    buffers: dict[tuple[Any, ...], _Layer] = {}
    for part in parts:
        fm = part[0].ofm
        if fm.layout is cmdstream.Layout.NHWC:
            key = (fm.region, fm.height, fm.width, fm.stride_x, fm.stride_y, fm.depth)
            buffers.setdefault(key, []).append(part)
    found = []
    for group in buffers.values():
        ordered = sorted(group, key=lambda part: part[0].ofm.bases[0])
        if len(ordered) < 2 or not all(_continues(a.ofm, b.ofm) for (a, _), (b, _) in itertools.pairwise(ordered)):
            continue
        joined = np.concatenate([v for _, v in ordered], axis=2)
        first = ordered[0][0].ofm
        last = max((op for op, _ in ordered), key=lambda op: op.index)
        found.append((last, joined, int(joined.shape[2]) * first.dtype.size == first.stride_x, len(ordered)))
    return found


#: TFLite ops that only move or select values: any NPU operation may be the one Vela ran for them.
_MOVES = frozenset(
    ("RESHAPE", "CONCATENATION", "TRANSPOSE", "PAD", "PADV2", "SLICE", "STRIDED_SLICE", "SPLIT", "SPLIT_V", "PACK",
     "UNPACK", "SQUEEZE", "EXPAND_DIMS", "GATHER", "DEPTH_TO_SPACE", "SPACE_TO_DEPTH", "RESIZE_NEAREST_NEIGHBOR")
)  # fmt: skip
#: What an NPU operation of this kind can compute besides moving values (absent: no restriction).
_COMPUTES = {"POOL.MAX": frozenset(("MAX_POOL_2D", "REDUCE_MAX", "MAXIMUM"))}


def _can_compute(block: cmdstream.BlockOp | None, producer: str) -> bool:
    """Whether a tensor made by ``producer`` ("MEAN #360") can be what ``block`` wrote, before reporting it.

    Small results share their shape with many tensors: MobileViTv2's 4-element POOL.MAX (a
    part of Vela's own lowering) was compared with a MEAN of four elements, a false 48 LSB.
    A maximum cannot be a mean; it is not reported against one.
    """
    if block is None or block.name not in _COMPUTES:
        return True
    opcode = producer.split(" #")[0]
    return opcode in _MOVES or opcode in _COMPUTES[block.name]


def _tiles_match(check: _Check, ref: ReferenceRun) -> bool:
    """Every stacked piece equals a whole int8 tensor of its own: tiles, not stripes of one layer.

    ``tile-activations`` splits a layer into row tiles that share their weights, so their
    operations read the same scales and group like a cascade's stripes; stacked, they may
    be compared with an unrelated tensor of the full shape (the tiles' concatenation after
    their activation).
    """
    if not check.pieces:
        return False
    for piece in check.pieces:
        flat = piece.values.reshape(-1)
        found = [ref.tensors[c].reshape(-1) for c in piece.candidates if c in ref.tensors]
        if not any(v.size == flat.size and np.array_equal(v, flat) for v in found):
            return False
    return True


_Layer = list[tuple[cmdstream.BlockOp, np.ndarray]]


def _top_to_bottom(parts: _Layer) -> _Layer:
    """A cascaded layer's stripes ordered by where each writes in its OFM buffer.

    Vela may run a cascade bottom-up (ShuffleNetV2 after the staged image: the stripes of
    one concatenation copy write rows 19-27, then 10-18, then 0-9). Not always the row
    order: a rolling buffer's slots can be anywhere, so this is a second stacking tried
    beside the execution order, never a replacement. All at one address: unchanged.
    """
    bases = [(piece.ofm.region, piece.ofm.bases[0]) for piece, _ in parts]
    if len(set(bases)) != len(bases) or len({region for region, _ in bases}) != 1:
        return parts
    return [part for _, part in sorted(zip(bases, parts, strict=True), key=lambda item: item[0][1])]


def _continues(prev: cmdstream.FeatureMap, nxt: cmdstream.FeatureMap) -> bool:
    """``nxt`` writes the channels right after ``prev``'s in the same OFM buffer."""
    same = ("region", "height", "width", "height0", "height1", "width0", "stride_x", "stride_y", "stride_c",
            "dtype", "layout")  # fmt: skip
    if any(getattr(prev, name) != getattr(nxt, name) for name in same):
        return False
    if prev.layout is cmdstream.Layout.NHWC:
        step = prev.depth * prev.dtype.size
    elif prev.depth % 16 == 0:
        step = prev.depth // 16 * prev.stride_c
    else:
        return False
    return bool(nxt.bases[0] == prev.bases[0] + step)


def _depth_chains(layers: list[_Layer]) -> list[list[_Layer]]:
    """Runs of consecutive single-operation layers that together fill one OFM buffer's depth (else alone)."""
    chains: list[list[_Layer]] = []
    i = 0
    while i < len(layers):
        run = [layers[i]]
        while (
            len(run[-1]) == 1 and i + len(run) < len(layers) and len(layers[i + len(run)]) == 1
            and not _whole_rows(run[-1][0][0].ofm)
            and _continues(run[-1][0][0].ofm, layers[i + len(run)][0][0].ofm)
        ):  # fmt: skip
            run.append(layers[i + len(run)])
        first = run[0][0][0].ofm
        depth = sum(layer[0][0].ofm.depth for layer in run)
        if len(run) > 1 and _whole_rows(replace(first, depth=depth)):
            chains.append(run)
        else:
            chains.extend([layer] for layer in run)
        i += len(run)
    return chains


def _checks(
    vela: container.VelaModel, int8: container.VelaModel, result: SimulationResult, groups: dict[_Signature, list[int]]
) -> list[_Check]:
    """Every tensor the artifact produced that can be matched with the int8 model, in execution order."""
    by_name = {t.name: t.index for t in int8.tensors if t.data is None}
    checks: list[_Check] = []
    traces = iter(result.traces)
    for op in vela.ops:
        call = vela.npu_calls.get(op.index)
        if call is not None:
            checks.extend(_npu_checks(call, next(traces), groups, f"ethos-u op {op.index}"))
        for index in op.outputs:  # the custom op's OFMs and CPU ops' outputs keep their int8 names
            name = vela.tensors[index].name
            if name in by_name and name in result.tensors:
                where = f"ethos-u op {op.index}" if call is not None else f"CPU op {op.index} {op.opcode}"
                checks.append(_Check(f"{where} -> {name!r}", result.tensors[name], (by_name[name],), False))
    return checks


@dataclass
class _Divergence:
    sample: int
    op: str
    tensor: str
    producer: str
    element: str
    produced: int | float
    reference: int | float
    lsb: float
    differing: int
    elements: int
    output: bool
    explained: str | None = None

    def text(self) -> str:
        kind = "output" if self.output else "tensor"
        rule = f"; explained: {self.explained}" if self.explained else ""
        return (
            f"sample {self.sample}: {self.op}: {kind} {self.tensor!r} ({self.producer}) element {self.element}: "
            f"sim {self.produced} vs reference {self.reference}, {self.lsb:g} LSB "
            f"({self.differing} of {self.elements} elements differ){rule}"
        )


def _producers(model: container.VelaModel) -> dict[int, str]:
    return {out: f"{op.opcode} #{op.index}" for op in model.ops for out in op.outputs}


def _divergence(
    sample: int, op: str, tensor: container.TensorInfo, producer: str, out: np.ndarray, ref: np.ndarray, output: bool
) -> _Divergence | None:
    diff = _lsb_diff(out, ref, tensor.scale)
    count = int(np.count_nonzero(diff))
    if not count:
        return None
    flat = int(np.argmax(diff))
    return _Divergence(
        sample, op, tensor.name, producer, _coords(ref.shape, flat), out.ravel()[flat].item(),
        ref.ravel()[flat].item(), float(diff.max()), count, int(diff.size), output,
    )  # fmt: skip


class _Tally:
    """Per-sample and per-output bookkeeping, so the report never mixes one input's counts with another's."""

    def __init__(self, names: Sequence[str]) -> None:
        self.outputs: dict[str, dict[str, Any]] = {
            n: {"elements": 0, "samples_differing": 0, "differing": 0, "max_abs_diff_lsb": 0.0} for n in names
        }
        self.samples: list[dict[str, Any]] = []
        self.divergences: list[_Divergence] = []
        self.intermediates = {"compared": 0, "matched": 0, "differing": 0, "from_stripes": 0, "from_slices": 0,
                              "slices_matched": 0, "slices_unchecked": 0, "unmapped": 0}  # fmt: skip


def _compare_sample(
    sample: int,
    checks: list[_Check],
    produced: Mapping[str, np.ndarray],
    ref: ReferenceRun,
    int8: container.VelaModel,
    producers: dict[int, str],
    tally: _Tally,
    micro: ReferenceRun | None = None,
    rule: str | None = None,
    produced_values: dict[str, np.ndarray] | None = None,
) -> list[_Divergence]:
    """Divergences of one input; with ``micro`` (TFLite Micro op by op) and its ``rule``, a difference from
    a LiteRT reference that TFLite Micro does not have is explained by that rule."""
    found: list[_Divergence] = []
    counts = tally.intermediates
    for check in checks:
        candidates = [c for c in check.candidates if c in ref.tensors]
        flat = check.values.reshape(-1)
        other = [ref.tensors[c].reshape(-1) for c in check.reshaped if c in ref.tensors]
        if any(v.size == flat.size and np.array_equal(v, flat) for v in other):
            counts["slices_matched" if check.part else "matched"] += 1
            counts["compared"] += not check.part
            continue
        if not candidates:
            counts["slices_unchecked" if check.part else "unmapped"] += 1
            continue
        values = [ref.tensors[c].reshape(-1) for c in candidates]
        stackings = [flat, *(r.reshape(-1) for r in check.reordered)]
        same = any(v.size == f.size and np.array_equal(v, f) for v in values for f in stackings)
        if same or _tiles_match(check, ref):
            counts["slices_matched" if check.part else "matched"] += 1
            counts["compared"] += not check.part
            counts["from_stripes"] += check.stripes > 1 and not check.part
            counts["from_slices"] += check.slices > 1
            continue
        if check.part:
            counts["slices_unchecked"] += 1  # a slice of a larger tensor: its consumers are compared
            continue
        candidates = [c for c in candidates if _can_compute(check.block, producers.get(c, "?"))]
        if not candidates:  # only same-shape tensors the operation cannot have computed: Vela's own result
            counts["unmapped"] += 1
            continue
        counts["compared"] += 1
        counts["differing"] += 1
        counts["from_stripes"] += check.stripes > 1
        counts["from_slices"] += check.slices > 1
        # Report against the same-shape tensor it differs least from (the layer it most likely is).
        best = min(candidates, key=lambda c: float(_lsb_diff(flat, ref.tensors[c].reshape(-1), None).max()))
        expected = ref.tensors[best]
        tensor, producer = int8.tensors[best], producers.get(best, "?")
        d = _divergence(sample, check.op, tensor, producer, flat.reshape(expected.shape), expected, False)
        if d is not None:
            if micro is not None and best in micro.tensors and np.array_equal(micro.tensors[best].reshape(-1), flat):
                d.explained = rule
            else:
                d.explained = _known(check, best, int8, ref, flat, expected)
            if produced_values is not None:
                produced_values.setdefault(d.tensor, flat)
            found.append(d)
    by_name = {t.name: t for t in int8.tensors}
    for name, expected in ref.outputs.items():
        out = np.asarray(produced[name]).reshape(expected.shape)
        t = by_name[name]
        diff = _lsb_diff(out, expected, t.scale)
        record = tally.outputs[name]
        count = int(np.count_nonzero(diff))
        record["elements"] = int(diff.size)
        record["differing"] += count
        record["samples_differing"] += bool(count)
        record["max_abs_diff_lsb"] = max(record["max_abs_diff_lsb"], float(diff.max()) if diff.size else 0.0)
        d = _divergence(sample, "output", t, producers.get(t.index, "?"), out, expected, True)
        if d is not None:
            if micro is not None and np.array_equal(micro.outputs[name].reshape(out.shape), out):
                d.explained = rule
            found.append(d)
    return _first_per_tensor(found)


def _known(
    check: _Check, index: int, int8: container.VelaModel, ref: ReferenceRun, flat: np.ndarray, expected: np.ndarray
) -> str | None:
    """A rule of :mod:`.known` that accounts for this tensor's difference, checked on the reference's inputs."""
    producer = next((op for op in int8.ops if index in op.outputs), None)
    if producer is None:
        return None
    inputs: dict[int, np.ndarray] = {}
    for i in producer.inputs:
        t = int8.tensors[i] if i >= 0 else None
        if t is not None and i in ref.tensors:
            inputs[i] = ref.tensors[i]
        elif t is not None and t.data is not None:
            inputs[i] = np.frombuffer(t.data, dtype=t.dtype).reshape(t.shape)
    rule: str | None = known.explain(check.block, int8, producer, inputs, flat, expected)
    return rule


def _continue_past_known(
    reference: Reference,
    feed: Mapping[str, np.ndarray],
    ref: ReferenceRun,
    checks: list[_Check],
    produced: Mapping[str, np.ndarray],
    int8: container.VelaModel,
    producers: dict[int, str],
    sample: int,
) -> tuple[ReferenceRun, list[_Divergence]]:
    """While the first difference is a known rule's, rerun the reference from the NPU's value of that tensor.

    Why: downstream of an explained 1-LSB difference every tensor may differ; continuing the
    reference (TFLite Micro op by op) from the NPU's value compares the rest of the network
    on equal inputs, so a second, unexplained difference is still found and fails.
    """
    if reference.is_litert:
        return ref, []
    explained: list[_Divergence] = []
    overrides: dict[int, np.ndarray] = {}
    index = {t.name: t.index for t in int8.tensors}
    per_op: PerOpMicro | None = None
    while True:
        values: dict[str, np.ndarray] = {}
        scratch = _Tally(list(ref.outputs))
        found = _compare_sample(sample, checks, produced, ref, int8, producers, scratch, None, None, values)
        first = found[0] if found else None
        if first is None or not first.explained or first.explained.split(":")[0] not in known.RULES:
            return ref, explained
        if index[first.tensor] in overrides or first.tensor not in values:
            return ref, explained
        overrides[index[first.tensor]] = values[first.tensor]
        explained.append(first)
        per_op = per_op or PerOpMicro(reference.data)
        ref = per_op.run(feed, overrides)


def _first_per_tensor(found: list[_Divergence]) -> list[_Divergence]:
    """One divergence per tensor (its first producer: an NPU op before the custom op's OFM before the output)."""
    kept: dict[str, _Divergence] = {}
    for d in found:
        if d.tensor in kept:
            kept[d.tensor].output = kept[d.tensor].output or d.output
        else:
            kept[d.tensor] = d
    return list(kept.values())


def validate_artifact(
    vela_tflite: Path | bytes,
    int8_tflite: Path | bytes,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    kernels: Literal["reference", "optimized"] = "reference",
    intermediates: bool = True,
    reference_runtime: Literal["micro", "litert"] = "micro",
) -> NpuValidation:
    """Simulate ``vela_tflite`` on every feed and compare outputs and intermediates with the int8 model.

    ``reference_runtime="litert"`` compares with LiteRT's reference kernels instead (the second
    opinion); a difference there that TFLite Micro, run op by op, does not have is *explained*:
    the rule names the ops whose LiteRT kernel differs from TFLite Micro's on the same inputs.

    Raises the simulator's errors (:class:`~nirc.errors.BackendError` subclasses) when the
    artifact cannot be executed; the message names the command word.
    """
    vela = container.load(vela_tflite)
    reference = Reference(int8_tflite, kernels, keep=intermediates, runtime=reference_runtime)
    micro = _second_reference(reference)
    int8 = reference.model
    groups = _signatures(int8) if intermediates else {}
    producers = _producers(int8)
    tally = _Tally([int8.tensors[i].name for i in int8.outputs])
    refs = runs_ahead(reference, feeds)
    try:
        for sample, (feed, ref) in enumerate(zip(feeds, refs, strict=True)):
            result = run(vela, feed, cpu_kernels=kernels, capture=intermediates, keep_tensors=intermediates)
            checks = _checks(vela, int8, result, groups) if intermediates else []
            micro_run, rule = _kernel_rule(micro, ref, feed)
            ref, known_first = _continue_past_known(
                reference, feed, ref, checks, result.outputs, int8, producers, sample
            )
            found = _compare_sample(sample, checks, result.outputs, ref, int8, producers, tally, micro_run, rule)
            found = known_first + found
            first = found[0].text() if found else None
            worst = max((d.lsb for d in found), default=0.0)
            tally.samples.append({"sample": sample, "bit_exact": not found, "max_abs_diff_lsb": worst,
                                  "first_divergence": first, "differing_tensors": len(found),
                                  "differing_outputs": {d.tensor: d.differing for d in found if d.output}})  # fmt: skip
            tally.divergences.extend(found)
    finally:
        refs.close()
    cpu = [
        {"op": op.index, "opcode": op.opcode, "checked": CPU_CHECK} for op in vela.ops if op.index not in vela.npu_calls
    ]
    explained: dict[tuple[str, str], dict[str, Any]] = {}
    for d in tally.divergences:
        if d.explained:
            entry = explained.setdefault((d.tensor, d.explained), {"op": d.producer, "tensor": d.tensor,
                                                                   "rule": d.explained, "samples": []})  # fmt: skip
            if d.sample not in entry["samples"]:
                entry["samples"].append(d.sample)
    details: dict[str, Any] = {
        "reference": reference.description,
        "reference_litert_ops": reference.litert_ops,
        "samples": len(feeds),
        "npu_ops": len(vela.npu_calls),
        "cpu_ops": len(cpu),
        "cpu_op_list": cpu,
        "outputs": tally.outputs,
        "per_sample": tally.samples,
        "intermediates": tally.intermediates if intermediates else None,
        "divergences": [asdict(d) for d in tally.divergences[:20]],
    }
    first_div = tally.divergences[0] if tally.divergences else None
    return NpuValidation(
        method="sim",
        bit_exact=first_div is None,
        max_abs_diff_lsb=max((d.lsb for d in tally.divergences), default=0.0),
        first_divergence=first_div.text() if first_div else None,
        details=details,
        unexplained=any(d.explained is None for d in tally.divergences),
        explained=list(explained.values()),
    )


def _second_reference(reference: Reference) -> PerOpMicro | None:
    """TFLite Micro op by op beside a LiteRT reference (for the kernel-difference rule), when it is installed."""
    if not reference.is_litert or reference.kernels != "reference":
        return None
    try:
        return PerOpMicro(reference.data)
    except ImportError:
        return None


def _kernel_rule(
    micro: PerOpMicro | None, ref: ReferenceRun, feed: Mapping[str, np.ndarray]
) -> tuple[ReferenceRun | None, str | None]:
    """TFLite Micro's run of this input and the rule that explains LiteRT's differences from it, if any."""
    if micro is None:
        return None, None
    ops = micro.kernel_differences(ref)
    if not ops:
        return None, None
    named = ", ".join(ops[:3]) + (f" and {len(ops) - 3} more" if len(ops) > 3 else "")
    rule = (
        f"LiteRT's reference kernel differs from TFLite Micro's on the same inputs at {named}; "
        "the NPU result equals TFLite Micro's"
    )
    return micro.run(feed), rule


def compare_with_reference(
    vela_tflite: Path | bytes,
    int8_tflite: Path | bytes,
    inputs: Mapping[str, np.ndarray],
    *,
    kernels: Literal["reference", "optimized"] = "reference",
    intermediates: bool = True,
) -> NpuValidation:
    """Simulate ``vela_tflite`` on one input; see :func:`validate_artifact` for several."""
    return validate_artifact(vela_tflite, int8_tflite, [inputs], kernels=kernels, intermediates=intermediates)
