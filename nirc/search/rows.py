"""The search's records: a budget and one costed candidate (kept apart so the plot needs no searcher)."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1 << 20


@dataclass(frozen=True)
class Budget:
    """What a recommendation must meet; None means no limit.

    Attributes:
        latency_ms: Vela's estimated inference time.
        max_mib: int8 weights (what the flash holds), in MiB.
    """

    latency_ms: float | None = None
    max_mib: float | None = None


@dataclass(frozen=True)
class Row:
    """One costed candidate: a row of the Pareto table.

    Attributes:
        name: ``family-variant-resolution`` (or the user's model and its scaling).
        family, variant, resolution: where it comes from.
        latency_ms: Vela's estimate (None when the candidate could not be compiled).
        macs: multiply-accumulates of the float model (Conv and Gemm).
        params: learnable parameters (PyTorch's count).
        weight_mib: int8 weights and biases Vela compiled.
        required_mib: platform memory the compiled model needs (encoded weights + arena).
        fits: the compiled model fits the target platform's memory (None: limit unknown).
        cpu_ops: operators Vela left on the CPU (their time is not in ``latency_ms``).
        meets: fits, compiled, and within the budget.
        pareto: no other candidate that fits is both faster (or as fast) and larger in MACs.
        recommended: meets the budget and is on the Pareto front of those that do.
        error: why the candidate could not be costed.
    """

    name: str
    family: str
    variant: str
    resolution: int
    latency_ms: float | None
    macs: int
    params: int
    weight_mib: float | None
    required_mib: float | None
    fits: bool | None
    cpu_ops: int
    meets: bool = False
    pareto: bool = False
    recommended: bool = False
    error: str = ""
