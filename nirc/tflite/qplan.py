"""int8 quantization plan: one set of parameters per emitted activation tensor.

TFLite's int8 CONCATENATION, RESHAPE, pooling, PAD, SLICE/SPLIT, TRANSPOSE, RESIZE and
MINIMUM/MAXIMUM kernels copy or compare raw int8 values, so their inputs and outputs
must share scale and zero point (Vela checks the same).  Rather than inserting a
requantize op in front of each, the planner unions the calibrated ranges of every
such group -- what the TFLite converter does too -- and gives the whole group one
set of parameters.  Only tensors whose parameters TFLite fixes (LOGISTIC, SOFTMAX,
TANH outputs) stay out of groups; the emitter requantizes them where needed.

16-bit activations: ``wide`` names tensors to hold as int16 (symmetric, zero point 0).
A tied group is one buffer format, so a group is wide when any member is named; every
tensor also keeps int8 parameters, from its own calibrated range, which an int8 consumer
of a wide tensor reads it with through a QUANTIZE (:meth:`QuantPlan.narrow`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import onnx

from nirc.errors import CalibrationError
from nirc.tflite.builder import QParams
from nirc.tflite.fusion import FusionPlan
from nirc.tflite.graph import GraphInfo
from nirc.tflite.quantize import WIDE_FIXED_QPARAMS, activation_qparams, activation_qparams16
from nirc.tflite.rules import OpRule


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # Deterministic: the lexicographically smaller root wins.
            lo, hi = sorted((ra, rb))
            self.parent[hi] = lo


class QuantPlan:
    """Maps ONNX tensor names (after fusion renaming) to int8 parameters."""

    def __init__(
        self,
        info: GraphInfo,
        fusion: FusionPlan,
        rules: Mapping[str, OpRule[Any]],
        ranges: Mapping[str, tuple[float, float]],
        source: str,
        wide: Collection[str] = (),
    ) -> None:
        self.fixed, names, groups = _tie_groups(info, fusion, rules)
        self._params: dict[str, QParams] = {}
        self._narrow: dict[str, QParams] = {}
        self.wide: set[str] = set()
        self._wide_fixed: dict[str, QParams] = {}
        for name, q in self.fixed.items():
            if name in wide and q in WIDE_FIXED_QPARAMS:
                self._wide_fixed[name] = WIDE_FIXED_QPARAMS[q]
                self.wide.add(name)

        for n in names:
            if n not in ranges:
                raise CalibrationError(f"{source}: no calibration range for tensor '{n}'")
        for root, members in groups.items():
            lo, hi = 0.0, 0.0
            found = False
            for m in members:
                if m in ranges:
                    mlo, mhi = ranges[m]
                    lo, hi, found = min(lo, float(mlo)), max(hi, float(mhi)), True
            if not found:
                raise CalibrationError(f"{source}: no calibration range for tensor '{sorted(members)[0]}'")
            try:
                q = activation_qparams(lo, hi)
                q16 = activation_qparams16(lo, hi)
            except ValueError as exc:
                raise CalibrationError(f"{source}: bad calibration range for tensor '{root}': {exc}") from exc
            is_wide = any(m in wide for m in members)
            for m in members:
                self._narrow[m] = q
                self._params[m] = q16 if is_wide else q
                if is_wide:
                    self.wide.add(m)
                    if m in ranges:
                        # Read back in int8 by an op outside the group: its own range, not the
                        # group's union (a Split's small slice gets a step of its own).
                        self._narrow[m] = activation_qparams(*ranges[m])

    @staticmethod
    def _outputs(idx: int, node: onnx.NodeProto, fusion: FusionPlan) -> list[str]:
        outs = [o for o in node.output if o]
        if idx in fusion.fused:
            outs = [fusion.fused[idx][1]]
        return outs

    @staticmethod
    def _rename(idx: int, node: onnx.NodeProto, fusion: FusionPlan, name: str) -> str:
        if idx in fusion.fused and name == node.output[0]:
            return fusion.fused[idx][1]
        return name

    def qparams(self, name: str) -> QParams:
        q = self._wide_fixed.get(name) or self.fixed.get(name) or self._params.get(name)
        if q is None:
            raise CalibrationError(f"no calibration range for tensor '{name}'")
        return q

    def narrow(self, name: str) -> QParams | None:
        """The int8 parameters of a planned tensor (also of a wide one), or None if unplanned."""
        return self.fixed.get(name) or self._narrow.get(name)


def tie_groups(info: GraphInfo, fusion: FusionPlan, rules: Mapping[str, OpRule[Any]]) -> list[list[str]]:
    """The tensors that must share one set of parameters (and so one width), group by group."""
    return list(_tie_groups(info, fusion, rules)[2].values())


def _tie_groups(
    info: GraphInfo, fusion: FusionPlan, rules: Mapping[str, OpRule[Any]]
) -> tuple[dict[str, QParams], list[str], dict[str, list[str]]]:
    """(fixed parameters, tensors that need a range, groups by root) of one graph."""
    fixed: dict[str, QParams] = {}
    uf = _UnionFind()
    required: list[str] = list(info.inputs)
    optional: set[str] = set()
    for idx, node in info.live_nodes():
        if idx in fusion.skipped:
            continue
        rule = rules[node.op_type]
        outs = QuantPlan._outputs(idx, node, fusion)
        fixed_q = rule.fixed(info, node)
        if fixed_q is not None:
            for o in outs:
                fixed[o] = fixed_q
        elif rule.alias:
            optional.update(outs)
        else:
            required.extend(outs)
        tied = [QuantPlan._rename(idx, node, fusion, n) for n in rule.ties(info, node)]
        tied = [n for n in tied if n and not info.is_const(n) and n not in fixed]
        for other in tied[1:]:
            uf.union(tied[0], other)
    names = [n for n in required if n not in fixed]
    for n in names:
        uf.find(n)
    for n in optional:
        uf.find(n)
    groups: dict[str, list[str]] = {}
    for n in uf.parent:
        groups.setdefault(uf.find(n), []).append(n)
    return fixed, names, groups
