"""Round channel counts *down* to the NPU's brick width, then refit the next layer by least squares.

The lossy counterpart of ``pad-channels``: where padding a 24-channel layer to
32 costs MACs, cutting it to 16 saves a third of its work and storage, at a
price in accuracy that this pass measures and reports. Opt-in only (``exact``
is False and no default pipeline names it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from nirc.passes._channels import ChannelSpaces, Layout, Space, apply_layouts, identity, round_down
from nirc.passes._rewrite import Namer, const_value, has_any_op, input_at
from nirc.passes.pad_channels import CostFn, CostLike, oracle_cost

from nirc.errors import NircError
from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext
from nirc.quant import CalibrationSet
from nirc.verify import run_tensors

logger = logging.getLogger(__name__)

Criterion = Literal["l2", "geometric-median"]
SYNTHETIC_NOTE = "no real calibration data (--calib): refit on synthetic N(0,1) inputs; accuracy is not meaningful"


@dataclass(frozen=True)
class PruneDecision:
    """One pruned channel space.

    Attributes:
        space: the space's key (its first tensor).
        layers: Conv/Gemm nodes writing it (they lose output channels).
        readers: Conv/Gemm nodes reading it (they lose input channels and are refit).
        channels_before, channels_after: channel counts.
        kept: original indices of the kept channels.
        fit_error_before, fit_error_after: relative squared error of the readers' outputs on the fit
            samples with the surviving weights as they were, and after the least-squares refit
            (``sum (y - y_ref)^2 / sum y_ref^2``; None when not refit).
    """

    space: str
    layers: tuple[str, ...]
    readers: tuple[str, ...]
    channels_before: int
    channels_after: int
    kept: tuple[int, ...]
    fit_error_before: float | None
    fit_error_after: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "layers": list(self.layers),
            "readers": list(self.readers),
            "channels": [self.channels_before, self.channels_after],
            "fit_error": [self.fit_error_before, self.fit_error_after],
        }


def keep_count(channels: int, align: int, ratio: float) -> int:
    """Channels to keep: at least ``ratio`` of them removed, then down to a multiple of ``align`` (never 0)."""
    wanted = math.floor(channels * (1.0 - ratio) + 1e-9)
    keep = round_down(wanted, align)
    return max(keep, align) if channels > align else channels


def channel_scores(vectors: np.ndarray, criterion: Criterion) -> np.ndarray:
    """Importance of each channel from its producers' weights (rows of ``vectors``): higher = keep.

    ``l2``: the norm of the channel's filters (small filters contribute little).
    ``geometric-median``: the channel's summed distance to all others; filters near the
    geometric median of the layer are the ones the others can best stand in for (FPGM).
    """
    v = vectors.astype(np.float64)
    if criterion == "l2":
        return np.asarray(np.linalg.norm(v, axis=1))
    if criterion == "geometric-median":
        sq = np.sum(v * v, axis=1)
        dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * v @ v.T, 0.0))
        return np.asarray(dist.sum(axis=1))
    raise ValueError(f"unknown criterion {criterion!r}")


def _producer_rows(node: gs.Node, channels: int) -> np.ndarray:
    """One row per output channel: the node's weights (and bias) for that channel."""
    weight = const_value(input_at(node, 1))
    bias = const_value(input_at(node, 2))
    assert weight is not None
    if node.op == "Gemm":
        rows = weight if node.attrs.get("transB", 0) else weight.T
    else:
        rows = weight.reshape(weight.shape[0], -1)
    parts = [rows.astype(np.float64)]
    if bias is not None and bias.ndim >= 1 and bias.shape[-1] == channels:
        parts.append(bias.reshape(-1, channels).T.astype(np.float64))
    return np.concatenate(parts, axis=1)


@dataclass(frozen=True)
class PruneChannelsPass(Pass):
    """Prune channels down to a multiple of the brick width (lossy), refitting readers by least squares.

    For every channel space whose count is not a multiple of ``align`` (or, with
    ``ratio`` > 0, for every space), keep the ``keep_count`` channels with the
    highest score (``criterion``: filter L2 norm or distance to the geometric
    median, over all the space's producers together) and drop the rest from
    every producer (weight rows), every op inside the space (depthwise
    weights, per-channel constants) and every reader (weight columns).
    Residual-coupled tensors (joined by Add) are one space, so they lose the
    same channels.

    Refit: each reader (Conv/Gemm) is then fitted by least squares
    (``np.linalg.lstsq``, lightly ridge-regularised) so that, on calibration
    activations of the *pruned* model, it reproduces the *original* model's
    output of that layer -- including a bias that absorbs the mean contribution
    of the removed channels. Spaces are processed in execution order, so later
    refits also compensate the error of earlier ones.

    Calibration data come from ``ctx.calibration`` (``--calib``); when it is
    absent or synthetic, seeded normal inputs are used and the report says so. The last
    ``holdout`` share of the samples is never fitted on: the pass reports SNR
    and top-1 agreement of the model outputs against the float original on
    them, the weight count before and after, and (``measure``, with a target)
    the oracle's cycles, SRAM and encoded weight bytes before and after; all
    of it lands in ``report`` and, as a ``summary`` entry, in ``ctx.decisions``.
    Not idempotent for ``ratio`` > 0 (each run prunes again); with ``ratio`` = 0
    a second run finds every space aligned.
    """

    name = "prune-channels"
    exact = False

    align: int | None = None
    ratio: float = 0.0
    criterion: Criterion = "l2"
    refit: bool = True
    max_samples: int = 128
    holdout: float = 0.25
    ridge: float = 1e-3
    max_rows: int = 20_000
    measure: bool = True
    cost_fn: CostFn | None = field(default=None, compare=False, repr=False)
    decisions: list[PruneDecision] = field(default_factory=list, compare=False, repr=False)
    report: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.align is not None and self.align < 1:
            raise ValueError(f"prune-channels: align must be positive, got {self.align}")
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"prune-channels: ratio must be in [0, 1), got {self.ratio}")
        if self.criterion not in ("l2", "geometric-median"):
            raise ValueError(f"prune-channels: unknown criterion {self.criterion!r}")
        if not 0.0 <= self.holdout < 1.0 or self.max_samples < 1:
            raise ValueError("prune-channels: holdout must be in [0, 1) and max_samples positive")

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        self.decisions.clear()
        self.report.clear()
        if not has_any_op(model.graph, ("Conv", "Gemm")):
            return False
        target = ctx.target
        align = self.align or (target.brick_channels if target is not None else 16)
        spaces = ChannelSpaces(model.graph)
        todo = [
            (s, keep) for s in spaces.free_spaces() if (keep := keep_count(s.channels, align, self.ratio)) < s.channels
        ]
        if not todo:
            return False
        reference = model.to_proto(check=False)
        fit, held_out, synthetic, source = self._samples(reference, ctx.calibration)
        if synthetic:
            logger.warning("prune-channels: %s", SYNTHETIC_NOTE)
            ctx.count("synthetic_calibration")
        readers = [r for s, _ in todo for r in self._readers(spaces, s)]
        ref_acts = run_tensors(reference, fit, [_only_output(spaces.nodes[r]) for r in readers]) if self.refit else {}
        layouts: dict[str, Layout] = {}
        for space, keep in todo:
            current = ChannelSpaces(model.graph)
            live = current.by_key()[space.key]
            kept = self._choose(current, live, keep)
            apply_layouts(model.graph, current, {space.key: kept})
            layouts[space.key] = kept
            errors: tuple[float | None, float | None] = (None, None)
            if self.refit:
                errors = self._refit(model, space, ref_acts, fit, layouts)
            decision = PruneDecision(
                space=space.key,
                layers=tuple(space.producers),
                readers=tuple(self._readers(spaces, space)),
                channels_before=space.channels,
                channels_after=keep,
                kept=tuple(int(k) for k in kept if k is not None),
                fit_error_before=errors[0],
                fit_error_after=errors[1],
            )
            logger.info(
                "prune-channels: %s %d -> %d channels (fit error %s -> %s)",
                ",".join(space.producers),
                space.channels,
                keep,
                errors[0],
                errors[1],
            )
            self.decisions.append(decision)
            ctx.count("pruned_spaces")
            ctx.count("removed_channels", space.channels - keep)
        after = model.to_proto(check=False)
        self.report.update(self._accuracy(reference, after, held_out))
        self.report["weights"] = [_weight_count(reference), _weight_count(after)]
        self.report.update(samples_fit=len(fit), samples_eval=len(held_out), synthetic=synthetic, source=source)
        if synthetic:
            self.report["warning"] = SYNTHETIC_NOTE
        if self.measure and target is not None:
            self.report.update(self._costs(reference, after, target))
        for decision in self.decisions:
            ctx.decide(decision.to_json())
        ctx.decide({"summary": dict(self.report)})
        return True

    # -- steps ----------------------------------------------------------------------
    def _samples(
        self, proto: onnx.ModelProto, calibration: CalibrationSet | None
    ) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]], bool, str]:
        """(fit samples, held-out samples, synthetic?, description)."""
        samples = list(calibration.samples) if calibration is not None else []
        synthetic = calibration is None or calibration.synthetic or not samples
        if synthetic:
            from nirc.backend import input_shapes

            rng = np.random.default_rng(0)
            count = max(self.max_samples, 2)
            shapes = input_shapes(proto)
            samples = [{n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()} for _ in range(count)]
            source = "synthetic N(0,1), seed 0"
        else:
            assert calibration is not None
            source = calibration.source
        samples = samples[: self.max_samples]
        n_eval = round(len(samples) * self.holdout)
        if len(samples) < 2 or n_eval == 0:
            return samples, samples, synthetic, source + " (too few samples to hold any out: evaluated on fit samples)"
        return samples[:-n_eval], samples[-n_eval:], synthetic, source

    @staticmethod
    def _readers(spaces: ChannelSpaces, space: Space) -> list[str]:
        names = list(space.absorbers)
        for derived in spaces.concat_consumers(space):
            names += [n for n in derived.absorbers if n not in names]
        return names

    def _choose(self, spaces: ChannelSpaces, space: Space, keep: int) -> Layout:
        """Original indices of the ``keep`` best channels, in their original order."""
        rows = np.concatenate([_producer_rows(spaces.nodes[p], space.channels) for p in space.producers], axis=1)
        scores = channel_scores(rows, self.criterion)
        best = np.argsort(-scores, kind="stable")[:keep]
        return tuple(int(i) for i in sorted(best))

    def _refit(
        self,
        model: IRModel,
        space: Space,
        ref_acts: Mapping[str, np.ndarray],
        fit: Sequence[dict[str, np.ndarray]],
        layouts: Mapping[str, Layout],
    ) -> tuple[float | None, float | None]:
        spaces = ChannelSpaces(model.graph)
        readers = [spaces.nodes[name] for name in self._readers(spaces, spaces.by_key()[space.key])]
        proto = model.to_proto(check=False)
        acts = run_tensors(proto, fit, [r.inputs[0].name for r in readers] + [_only_output(r) for r in readers])
        namer = Namer(model.graph)
        num_before = num_after = den = 0.0
        for reader in readers:
            out = _only_output(reader)
            out_space = spaces.space_of.get(out)
            rows = layouts.get(out_space.key, identity(out_space.channels)) if out_space else None
            target = ref_acts[out]
            if rows is not None and len(rows) != target.shape[1]:
                target = target[:, [r for r in rows if r is not None]]
            x = acts[reader.inputs[0].name]
            now = acts[out].astype(np.float64)
            solution = _fit_layer(reader, x, target, self.ridge, self.max_rows)
            if solution is None:
                continue
            weight, bias = solution
            _set_weights(reader, weight, bias, namer)
            refit_out = _apply_layer(reader, x, weight, bias, now.shape)
            den += float(np.sum(target.astype(np.float64) ** 2))
            num_before += float(np.sum((now - target) ** 2))
            num_after += float(np.sum((refit_out - target) ** 2))
        if den == 0.0:
            return None, None
        return num_before / den, num_after / den

    def _accuracy(
        self, before: onnx.ModelProto, after: onnx.ModelProto, samples: Sequence[dict[str, np.ndarray]]
    ) -> dict[str, Any]:
        from nirc.quant import snr_db, top1_agreement

        names = [o.name for o in before.graph.output]
        ref = run_tensors(before, samples, names)
        got = run_tensors(after, samples, names)
        snr = {n: round(snr_db(ref[n], got[n]), 2) for n in names}
        top1 = {n: top1_agreement(ref[n], got[n]) for n in names if ref[n].ndim == 2 and ref[n].shape[1] > 1}
        return {"snr_db": snr, "top1_agreement": top1}

    def _costs(self, before: onnx.ModelProto, after: onnx.ModelProto, target: Any) -> dict[str, Any]:
        cost_fn = self.cost_fn or oracle_cost
        try:
            a: CostLike = cost_fn(before, target)
            b: CostLike = cost_fn(after, target)
        except NircError as exc:
            logger.warning("prune-channels: cannot cost the models (%s)", exc)
            return {"cost_error": str(exc)}
        out: dict[str, Any] = {
            "cycles": [a.cycles, b.cycles],
            "sram_bytes": [a.sram_used_bytes, b.sram_used_bytes],
        }
        encoded = [getattr(c, "encoded_weight_bytes", None) for c in (a, b)]
        if all(isinstance(e, int) for e in encoded):
            out["encoded_weight_bytes"] = encoded
        return out


# ----------------------------------------------------------------------------- numerics


def _weight_count(proto: onnx.ModelProto) -> int:
    """Elements of the float initializers (weights and biases) of a model."""
    return sum(int(np.prod(t.dims)) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)


def _only_output(node: gs.Node) -> str:
    return str(node.outputs[0].name)


def _conv_geometry(node: gs.Node, weight_shape: Sequence[int]) -> tuple[list[int], list[int], list[int], list[int]]:
    spatial = len(weight_shape) - 2
    kernel = [int(k) for k in weight_shape[2:]]
    strides = [int(s) for s in node.attrs.get("strides", [1] * spatial)]
    dilations = [int(d) for d in node.attrs.get("dilations", [1] * spatial)]
    pads = [int(p) for p in node.attrs.get("pads", [0] * (2 * spatial))]
    return kernel, strides, dilations, pads


def _patches(node: gs.Node, x: np.ndarray, weight_shape: Sequence[int]) -> np.ndarray | None:
    """im2col of a 2-D Conv input: ``[N * Ho * Wo, C * kh * kw]`` in the weight's ``(c, kh, kw)`` order."""
    if len(weight_shape) != 4 or node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr) = _conv_geometry(node, weight_shape)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    cols = [
        xp[:, :, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]
    stacked = np.stack(cols, axis=2)  # N, C, kh*kw, Ho, Wo
    n, c = x.shape[:2]
    return stacked.transpose(0, 3, 4, 1, 2).reshape(n * ho * wo, c * kh * kw)


def _design(node: gs.Node, x: np.ndarray, weight_shape: Sequence[int]) -> np.ndarray | None:
    if node.op == "Gemm":
        return x.reshape(x.shape[0], -1)
    if int(node.attrs.get("group", 1)) != 1:
        return None
    return _patches(node, x, weight_shape)


def _fit_layer(
    node: gs.Node, x: np.ndarray, y: np.ndarray, ridge: float, max_rows: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Least-squares weights and bias of ``node`` mapping input ``x`` to output ``y`` (None: cannot refit)."""
    weight = const_value(input_at(node, 1))
    assert weight is not None
    out_channels = y.shape[1]
    shape = list(weight.shape)
    if node.op == "Conv":
        shape[1] = x.shape[1]
    design = _design(node, x.astype(np.float64), shape)
    if design is None:
        return None
    targets = np.moveaxis(y.astype(np.float64), 1, -1).reshape(-1, out_channels)
    if design.shape[0] != targets.shape[0]:
        return None
    cols = design.shape[1]
    # Bound the dense system to a few tens of MB: at least 4 rows per unknown, else max_rows.
    limit = max(4 * cols, min(max_rows, 4_000_000 // max(cols, 1)))
    if design.shape[0] > limit:
        pick = np.sort(np.random.default_rng(0).choice(design.shape[0], limit, replace=False))
        design, targets = design[pick], targets[pick]
    # Ridge as extra rows (bias column unregularised), scaled to the data so it is unit-free.
    lam = math.sqrt(ridge * max(float(np.mean(design * design)), 1e-12) * design.shape[0])
    a = np.concatenate(
        [
            np.concatenate([design, np.ones((design.shape[0], 1))], axis=1),
            np.concatenate([lam * np.eye(cols), np.zeros((cols, 1))], axis=1),
        ]
    )
    b = np.concatenate([targets, np.zeros((cols, out_channels))])
    solution, *_ = np.linalg.lstsq(a, b, rcond=None)
    w, bias = solution[:-1].T, solution[-1]
    if node.op == "Conv":
        w = w.reshape(out_channels, *shape[1:])
    return w.astype(np.float32), bias.astype(np.float32)


def _apply_layer(
    node: gs.Node, x: np.ndarray, weight: np.ndarray, bias: np.ndarray, out_shape: Sequence[int]
) -> np.ndarray:
    """The refit layer's output (shape ``out_shape``), computed the way :func:`_fit_layer` models it."""
    design = _design(node, x.astype(np.float64), weight.shape)
    assert design is not None
    flat = np.asarray(design @ weight.reshape(weight.shape[0], -1).T.astype(np.float64) + bias)
    if node.op == "Gemm":
        return np.asarray(flat.reshape(out_shape))
    n, o, *spatial = out_shape
    return np.moveaxis(flat.reshape(n, *spatial, o), -1, 1)


def _set_weights(node: gs.Node, weight: np.ndarray, bias: np.ndarray, namer: Namer) -> None:
    """Write refit weights: Conv ``W[O, C, kh, kw]`` + bias; Gemm as ``transB=1``, ``alpha = beta = 1``."""
    name = node.name or node.op
    node.inputs[1] = namer.constant(f"{name}_refit_w", weight)
    b = namer.constant(f"{name}_refit_b", bias)
    if len(node.inputs) > 2:
        node.inputs[2] = b
    else:
        node.inputs.append(b)
    if node.op == "Gemm":
        node.attrs["transB"] = 1
        node.attrs["alpha"] = 1.0
        node.attrs["beta"] = 1.0
