"""A fast analytical latency model for search loops, calibrated against the Vela oracle.

Why: the oracle takes 10 ms - 1 s per uncached candidate; a search that scores
thousands of candidates per step needs microseconds. This model evaluates the
IR directly, per op:

* **compute** -- cycles of the MAC array with its granularity: output height,
  width and depth round up to the output micro-block, input depth to the
  8-channel step. A standard conv uses the whole array (one step per micro-block,
  8 input channels and kernel element); a depthwise conv or a pool has one input
  channel per output channel, so it takes one step per micro-block and kernel
  element with the kernel rounded up to 4 (a much lower MAC efficiency, fitted
  separately); elementwise ops cost per output element.
* **traffic** -- feature maps in brick storage (channels rounded up to 16) and
  weights, over the target's bandwidths (vela.ini). Graph inputs and outputs
  live in the arena, which is DRAM in the Dedicated_Sram modes; intermediate
  tensors stay in the SRAM cache unless they exceed it, except that a tensor
  read by a single conv/pool is cascaded in row stripes (only a stripe must
  fit). DRAM accesses to maps deeper than 16 channels go brick by brick (16
  bytes per burst instead of ``dram_burst``), except a standard conv's input,
  which streams whole-depth but is read again for every 16-channel output block
  beyond 32 output channels. Concat/Split/Slice copy their data. Weights larger
  than a quarter of the cache are streamed again for every 8x8 output block.
  (These access patterns were measured on Vela 5.2's estimates, not derived.)

An op costs ``max(compute, SRAM time, DRAM time) + overhead``, the coefficients
of the terms being fitted (:mod:`nirc.cost.fit`) in log space against the oracle.
``analytical_is_trusted`` reports whether the fit's held-out rank correlation,
as measured and stored by ``benchmarks/profile_blocks.py``, reaches the goal.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from nirc.cost.hardware import IFM_UBLOCK_DEPTH, Hardware, hardware
from nirc.cost.oracle import ModelLike
from nirc.ir import IRModel
from nirc.target import Target

logger = logging.getLogger(__name__)

CALIBRATION_FILE = Path(__file__).with_name("data") / "analytical.json"
"""Fitted coefficients and measured rank correlations per target, written by benchmarks/profile_blocks.py."""

TRUST_SPEARMAN = 0.95
"""Held-out Spearman rank correlation with Vela at or above which the model is trusted."""

_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "PRelu",
                          "LeakyRelu", "Softmax", "Resize", "Transpose", "Pad"})  # fmt: skip
_ACTIVATIONS = frozenset({"Relu", "Clip"})
_FREE = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Constant", "Shape"})
_MOVES = frozenset({"Concat", "Split", "Slice"})
_POOLS = frozenset({"AveragePool", "MaxPool"})
_GLOBAL_POOLS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "ReduceMean"})
_CASCADE_CONSUMERS = frozenset({"Conv", *_POOLS})


@dataclass(frozen=True)
class Coefficients:
    """The fitted scalars: multipliers of each term (1.0 = the raw physical estimate) and a per-op overhead."""

    conv: float = 1.0
    depthwise: float = 1.0
    elementwise: float = 1.0
    sram: float = 1.0
    dram: float = 1.0
    weights: float = 1.0
    overhead: float = 500.0

    def vector(self) -> np.ndarray:
        return np.array([getattr(self, n) for n in COEFFICIENT_NAMES], dtype=np.float64)

    @classmethod
    def from_vector(cls, values: Sequence[float]) -> Coefficients:
        return cls(**{n: float(v) for n, v in zip(COEFFICIENT_NAMES, values, strict=True)})


COEFFICIENT_NAMES: tuple[str, ...] = ("conv", "depthwise", "elementwise", "sram", "dram", "weights", "overhead")


@dataclass(frozen=True)
class OpTerms:
    """Raw (uncalibrated) cost terms of one IR node, in cycles.

    ``conv``, ``depthwise`` and ``elementwise`` are compute cycles of the
    corresponding engine use; ``sram``/``dram`` feature-map transfer cycles;
    ``weights`` weight-transfer cycles (over the weight memory's bandwidth).
    """

    name: str
    op: str
    conv: float = 0.0
    depthwise: float = 0.0
    elementwise: float = 0.0
    sram: float = 0.0
    dram: float = 0.0
    weights: float = 0.0
    counted: bool = True


def _ceil(value: int, granule: int) -> int:
    return -(-value // granule) * granule


def _dims(tensor: gs.Tensor) -> list[int]:
    return [int(d) for d in tensor.shape] if tensor.shape is not None else []


def _nhwc(tensor: gs.Tensor) -> tuple[int, int, int]:
    """(H, W, C) of an NCHW tensor; other ranks count as 1 x 1 x elements-in-last-dim rows."""
    dims = _dims(tensor)
    if len(dims) == 4:
        return dims[2], dims[3], dims[1]
    if len(dims) >= 2:
        return 1, int(math.prod(dims[:-1])), dims[-1]
    return 1, 1, int(math.prod(dims)) if dims else 1


class _Context:
    """Per-model facts the op terms need: tensor placement and consumers."""

    def __init__(self, model: IRModel, hw: Hardware) -> None:
        self.hw = hw
        self.graph_io = {t.name for t in (*model.graph.inputs, *model.graph.outputs)}
        self.consumers: dict[str, list[gs.Node]] = {}
        for node in model.graph.nodes:
            for tensor in node.inputs:
                self.consumers.setdefault(tensor.name, []).append(node)

    def written(self, tensor: gs.Tensor) -> gs.Tensor:
        """The tensor an op really writes: a fused activation's output rather than its input."""
        readers = self.consumers.get(tensor.name, [])
        if len(readers) == 1 and _is_fused_activation(readers[0], self):
            return readers[0].outputs[0]
        return tensor

    def fm_bytes(self, tensor: gs.Tensor) -> int:
        h, w, c = _nhwc(tensor)
        return h * w * _ceil(c, self.hw.brick)

    def in_dram(self, tensor: gs.Tensor) -> bool:
        """Whether Vela would keep the tensor in DRAM (arena) rather than the SRAM cache."""
        if not self.hw.fm_in_dram:
            return False
        if tensor.name in self.graph_io:
            return True
        size = self.fm_bytes(tensor)
        readers = self.consumers.get(tensor.name, [])
        if len(readers) == 1 and readers[0].op in _CASCADE_CONSUMERS:
            _, w, c = _nhwc(tensor)
            kernel = int(readers[0].attrs.get("kernel_shape", [1])[0]) if readers[0].attrs else 1
            size = w * _ceil(c, self.hw.brick) * (kernel + 2 * self.hw.ublock[0])
        return size > self.hw.cache_bytes

    def dram_factor(self, depth: int, sliced: bool) -> float:
        """Burst inefficiency of DRAM accesses to a feature map read or written ``depth`` channels at a time.

        Measured with Vela 5.2 on the U65: up to one brick (16 channels) deep the
        accesses stream; deeper maps go brick by brick, 16 bytes per burst of
        ``dram_burst`` (x8 for 128-byte bursts); channel slices of a deeper tensor
        that do not tile the brick (a grouped conv's 4-, 10- or 20-channel groups)
        cost twice that.
        """
        brick = self.hw.brick
        aligned = depth % brick == 0 or (brick % depth == 0 and depth >= IFM_UBLOCK_DEPTH)
        if sliced and not aligned:
            return 2 * self.hw.dram_burst / brick
        return self.hw.dram_burst / brick if depth > brick else 1.0

    def traffic(self, tensor: gs.Tensor, depth: int | None = None) -> tuple[float, float]:
        """(SRAM cycles, DRAM cycles) to move ``tensor`` once, accessed ``depth`` channels at a time."""
        size = self.fm_bytes(tensor)
        full = _nhwc(tensor)[2]
        if self.in_dram(tensor):
            factor = self.dram_factor(depth or full, sliced=depth is not None and depth != full)
            return 0.0, size * factor / self.hw.dram_bw
        return size / self.hw.sram_bw, 0.0

    def streamed(self, tensor: gs.Tensor, rereads: int) -> tuple[float, float]:
        """(SRAM cycles, DRAM cycles) of a standard conv's input: read whole-depth (no burst
        penalty, measured) but once per output-depth block."""
        size = self.fm_bytes(tensor) * rereads
        if self.in_dram(tensor):
            return 0.0, size / self.hw.dram_bw
        return size / self.hw.sram_bw, 0.0


def _is_fused_activation(node: gs.Node, ctx: _Context) -> bool:
    """Relu/Clip folded into the producer's output stage (single consumer, not a graph output)."""
    if node.op not in _ACTIVATIONS or not node.inputs:
        return False
    source = node.inputs[0]
    producers = source.inputs if hasattr(source, "inputs") else []
    return bool(producers) and len(ctx.consumers.get(source.name, [])) == 1 and source.name not in ctx.graph_io


def _conv_terms(node: gs.Node, ctx: _Context) -> OpTerms:
    hw = ctx.hw
    x, weight, y = node.inputs[0], node.inputs[1], node.outputs[0]
    _, _, cin = _nhwc(x)
    ho, wo, cout = _nhwc(y)
    wdims = _dims(weight)
    kh, kw = (wdims[2], wdims[3]) if len(wdims) == 4 else (1, 1)
    group = int(node.attrs.get("group", 1))
    ub_h, ub_w, ub_d = hw.ublock
    spatial = _ceil(ho, ub_h) * _ceil(wo, ub_w) / (ub_h * ub_w)
    depthwise = group > 1 and group == cin and cout % cin == 0
    w_bytes = weight_bytes(node)
    refetch = math.ceil(ho / 8) * math.ceil(wo / 8) if w_bytes > hw.cache_bytes // 4 else 1
    weights = w_bytes * refetch / hw.const_bw
    if depthwise:
        steps = spatial * _ceil(cout, ub_d) / ub_d * _ceil(kh * kw, 4)
        r_sram, r_dram = ctx.traffic(x)
        w_sram, w_dram = ctx.traffic(ctx.written(y))
        return OpTerms(node.name, "DepthwiseConv", depthwise=steps, sram=r_sram + w_sram, dram=r_dram + w_dram,
                       weights=weights)  # fmt: skip
    per_group_in, per_group_out = cin // group, cout // group
    in_steps = _ceil(per_group_in, IFM_UBLOCK_DEPTH) / IFM_UBLOCK_DEPTH
    steps = group * spatial * _ceil(per_group_out, ub_d) / ub_d * in_steps * kh * kw
    if group == 1:
        # Measured: up to 32 output channels one block covers the depth; beyond, one block per brick.
        rereads = math.ceil(cout / hw.brick) if cout > 2 * hw.brick else 1
        r_sram, r_dram = ctx.streamed(x, rereads)
    else:  # lowered to one conv per group, each reading a channel slice
        r_sram, r_dram = ctx.traffic(x, per_group_in)
    w_sram, w_dram = ctx.traffic(ctx.written(y), per_group_out)
    return OpTerms(node.name, "Conv", conv=steps, sram=r_sram + w_sram, dram=r_dram + w_dram, weights=weights)


def _pool_terms(node: gs.Node, ctx: _Context) -> OpTerms:
    hw = ctx.hw
    x, y = node.inputs[0], node.outputs[0]
    ho, wo, c = _nhwc(y)
    if node.op in _GLOBAL_POOLS:
        kh, kw, _ = _nhwc(x)
    else:
        kh, kw = (int(k) for k in node.attrs.get("kernel_shape", [1, 1]))
    ub_h, ub_w, ub_d = hw.ublock
    steps = _ceil(ho, ub_h) * _ceil(wo, ub_w) / (ub_h * ub_w) * _ceil(c, ub_d) / ub_d * max(4, _ceil(kh * kw, 4))
    r_sram, r_dram = ctx.traffic(x)
    w_sram, w_dram = ctx.traffic(ctx.written(y))
    return OpTerms(node.name, node.op, depthwise=steps, sram=r_sram + w_sram, dram=r_dram + w_dram)


def _elementwise_terms(node: gs.Node, ctx: _Context, passes: int = 1) -> OpTerms:
    y = node.outputs[0]
    sram = dram = 0.0
    for tensor in [*node.inputs, ctx.written(y)]:
        if isinstance(tensor, gs.Constant) or tensor.shape is None:
            continue
        s, d = ctx.traffic(tensor)
        sram, dram = sram + s, dram + d
    elements = ctx.fm_bytes(y)
    return OpTerms(node.name, node.op, elementwise=passes * elements, sram=passes * sram, dram=passes * dram)


def _move_terms(node: gs.Node, ctx: _Context) -> OpTerms:
    """Concat/Split/Slice: no compute, but the data is copied (e.g. from SRAM into a DRAM output)."""
    sram = dram = 0.0
    for tensor in [*node.inputs, *node.outputs]:
        if isinstance(tensor, gs.Constant) or tensor.shape is None:
            continue
        s, d = ctx.traffic(tensor)
        sram, dram = sram + s, dram + d
    return OpTerms(node.name, node.op, sram=sram, dram=dram)


def weight_bytes(node: gs.Node) -> int:
    """int8 weights plus Vela's 10 bytes of bias and scale per output channel."""
    if len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
        return 0
    count = int(np.asarray(node.inputs[1].values).size)
    out_channels = _dims(node.inputs[1])[0] if _dims(node.inputs[1]) else 1
    if node.op in ("Gemm", "MatMul") and len(_dims(node.inputs[1])) == 2:
        out_channels = _dims(node.outputs[0])[-1]
    return count + 10 * out_channels


def _fc_terms(node: gs.Node, ctx: _Context) -> OpTerms:
    hw = ctx.hw
    x, y = node.inputs[0], node.outputs[0]
    _, rows, cin = _nhwc(x)
    _, _, cout = _nhwc(y)
    blocks = math.ceil(rows / (hw.ublock[0] * hw.ublock[1]))
    steps = blocks * _ceil(cout, hw.ublock[2]) / hw.ublock[2] * _ceil(cin, IFM_UBLOCK_DEPTH) / IFM_UBLOCK_DEPTH
    r_sram, r_dram = ctx.traffic(x)
    w_sram, w_dram = ctx.traffic(ctx.written(y))
    return OpTerms(node.name, node.op, conv=steps, sram=r_sram + w_sram, dram=r_dram + w_dram,
                   weights=weight_bytes(node) / hw.const_bw)  # fmt: skip


def op_terms(model: ModelLike, target: Target) -> list[OpTerms]:
    """Raw cost terms of every node, in topological order (shape-inferred models only)."""
    ir = model if isinstance(model, IRModel) else IRModel.load(model)
    hw = hardware(target)
    ctx = _Context(ir, hw)
    terms = []
    for node in ir.view().topological_order():
        if node.op == "Conv" and len(node.inputs) >= 2 and node.inputs[1].shape is not None:
            terms.append(_conv_terms(node, ctx))
        elif node.op in _POOLS or node.op in _GLOBAL_POOLS:
            terms.append(_pool_terms(node, ctx))
        elif node.op in ("Gemm", "MatMul") and isinstance(node.inputs[1], gs.Constant):
            terms.append(_fc_terms(node, ctx))
        elif node.op in _MOVES:
            terms.append(_move_terms(node, ctx))
        elif node.op == "BatchNormalization":
            terms.append(_elementwise_terms(node, ctx, passes=2))  # lowered as Mul + Add
        elif node.op in _ELEMENTWISE or (node.op in _ACTIVATIONS and not _is_fused_activation(node, ctx)):
            terms.append(_elementwise_terms(node, ctx))
        else:
            counted = node.op not in _FREE and node.op not in _ACTIVATIONS
            if counted:
                logger.debug("analytical: no cost model for %s (%s), counted as overhead only", node.name, node.op)
            terms.append(OpTerms(node.name, node.op, counted=counted))
    return terms


def term_matrix(terms: Sequence[OpTerms]) -> np.ndarray:
    """(ops x 7) array of the raw terms in :data:`COEFFICIENT_NAMES` order (overhead column: 1 per counted op)."""
    rows = [[t.conv, t.depthwise, t.elementwise, t.sram, t.dram, t.weights, 1.0 if t.counted else 0.0] for t in terms]
    return np.array(rows, dtype=np.float64).reshape(-1, len(COEFFICIENT_NAMES))


def op_cycles(matrix: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """Per-op cycles: the slowest of compute, SRAM, and DRAM (feature maps + weights), plus overhead."""
    compute = matrix[:, 0] * coef[0] + matrix[:, 1] * coef[1] + matrix[:, 2] * coef[2]
    sram = matrix[:, 3] * coef[3]
    dram = matrix[:, 4] * coef[4] + matrix[:, 5] * coef[5]
    result: np.ndarray = np.maximum(np.maximum(compute, sram), dram) + matrix[:, 6] * coef[6]
    return result


@dataclass(frozen=True)
class Calibration:
    """A target's fitted coefficients and how well the fit ranks blocks against Vela."""

    target: str
    coefficients: Coefficients
    spearman_heldout: float
    spearman_train: float
    spearman_same_size: float
    n_train: int
    n_heldout: int
    vela_version: str

    @property
    def trusted(self) -> bool:
        return self.spearman_heldout >= TRUST_SPEARMAN

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["coefficients"] = asdict(self.coefficients)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        values = dict(data)
        values["coefficients"] = Coefficients(**data["coefficients"])
        return cls(**values)


def load_calibrations(path: Path = CALIBRATION_FILE) -> dict[str, Calibration]:
    """Stored calibrations by target name ({} when none were produced yet)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("cannot read analytical calibration %s (%s)", path, exc)
        return {}
    return {name: Calibration.from_json(entry) for name, entry in data.get("targets", {}).items()}


def save_calibration(calibration: Calibration, path: Path = CALIBRATION_FILE) -> None:
    existing = load_calibrations(path)
    existing[calibration.target] = calibration
    payload = {
        "comment": "written by benchmarks/profile_blocks.py; do not edit by hand",
        "targets": {name: c.to_json() for name, c in sorted(existing.items())},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def calibration_for(target: Target) -> Calibration | None:
    return load_calibrations().get(target.name)


def analytical_is_trusted(target: Target) -> bool:
    """Whether the analytical model's held-out Spearman correlation with Vela, as measured by the
    calibration benchmark for this target, reaches :data:`TRUST_SPEARMAN`. Uncalibrated targets are untrusted."""
    calibration = calibration_for(target)
    return calibration is not None and calibration.trusted


@dataclass(frozen=True)
class AnalyticalCost:
    """The analytical estimate: total and per-node cycles."""

    cycles: float
    clock_hz: float
    per_op: dict[str, float]
    calibrated: bool

    @property
    def time_ms(self) -> float:
        return 1e3 * self.cycles / self.clock_hz


def predict(model: ModelLike, target: Target, coefficients: Coefficients | None = None) -> AnalyticalCost:
    """Analytical cycles of ``model`` on ``target`` (stored calibration unless ``coefficients`` are given)."""
    calibration = calibration_for(target) if coefficients is None else None
    coef = coefficients or (calibration.coefficients if calibration else Coefficients())
    terms = op_terms(model, target)
    cycles = op_cycles(term_matrix(terms), coef.vector()) if terms else np.zeros(0)
    return AnalyticalCost(
        cycles=float(cycles.sum()),
        clock_hz=hardware(target).clock_hz,
        per_op={t.name: float(c) for t, c in zip(terms, cycles, strict=True)},
        calibrated=coefficients is not None or calibration is not None,
    )
