"""The oracle's answer: a frozen, JSON-round-trippable cost record.

Kept free of Vela and ONNX imports so that a cache hit, the process-pool
results and the analytical model share one small type.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from nirc.errors import BackendError


@dataclass(frozen=True)
class LayerRow:
    """One row of Vela's per-layer table, tied to the model by canonical tensor number.

    Attributes:
        tensor: :func:`~nirc.cost.signature.tensor_ids` number of the ONNX tensor the
            TFLite op writes (or whose name it extends, e.g. ``x/pad``), -1 if unknown.
        op: Vela's operator (``Conv2D``, ``DepthwiseConv2D``, ``Add`` ...).
        cycles: the row's op cycles.
        macs: the row's MAC count.
    """

    tensor: int
    op: str
    cycles: int
    macs: int


@dataclass(frozen=True)
class Cost:
    """Vela's estimate for one model on one target, per inference.

    Attributes:
        cycles: total cycles (Vela's ``cycles_total``: compute and memory bound combined).
        npu_cycles: cycles the NPU's compute engine is busy.
        clock_hz: the system's core clock; ``time_s = cycles / clock_hz``.
        macs: multiply-accumulates Vela counts.
        sram_used_bytes: peak SRAM use (arena or arena cache).
        dram_used_bytes: DRAM footprint (arena and weights, by memory mode).
        sram_traffic_bytes: bytes read and written in SRAM.
        dram_traffic_bytes: bytes read and written in DRAM.
        dram_fm_read_bytes, dram_fm_write_bytes: feature-map part of the DRAM traffic.
        dram_weight_bytes: weight part of the DRAM traffic.
        weight_bytes: original int8 weights and biases.
        encoded_weight_bytes: the same after Vela's weight compression.
        npu_ops, cpu_ops: operator placement (CPU ops are not in ``cycles``).
        layers: Vela's per-layer rows.
        vela_version: Vela that produced the estimate.
    """

    cycles: int
    npu_cycles: int
    clock_hz: float
    macs: int
    sram_used_bytes: int
    dram_used_bytes: int
    sram_traffic_bytes: int
    dram_traffic_bytes: int
    dram_fm_read_bytes: int
    dram_fm_write_bytes: int
    dram_weight_bytes: int
    weight_bytes: int
    encoded_weight_bytes: int
    npu_ops: int
    cpu_ops: int
    layers: tuple[LayerRow, ...]
    vela_version: str

    @property
    def time_s(self) -> float:
        return self.cycles / self.clock_hz

    @property
    def time_ms(self) -> float:
        return 1e3 * self.cycles / self.clock_hz

    def mac_utilisation(self, macs_per_cycle: int) -> float:
        """Share of the MAC array's peak the model achieves: ``macs / (cycles * macs_per_cycle)``."""
        return self.macs / (self.cycles * macs_per_cycle) if self.cycles else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["layers"] = [[r.tensor, r.op, r.cycles, r.macs] for r in self.layers]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cost:
        """Inverse of :meth:`to_json`; raises BackendError on a record of another shape."""
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            raise BackendError(f"cost record has fields {sorted(data)}, expected {sorted(names)}")
        values = dict(data)
        values["layers"] = tuple(LayerRow(int(t), str(op), int(c), int(m)) for t, op, c, m in data["layers"])
        return cls(**values)
