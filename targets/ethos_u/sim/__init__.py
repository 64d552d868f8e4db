"""Bit-exact functional model of the Arm Ethos-U55/U65 NPU, for validating Vela's output.

Why this exists: what ships to an Ethos-U device is Vela's ``.tflite``, whose NPU
part is a register command stream plus compressed weights that no TFLite runtime
can execute.  This package executes it in NumPy, so a compiled artifact can be
checked against TFLite Micro on the pre-Vela int8 model on any machine, without Arm's
FVP (:mod:`nirc.targets.ethos_u.fvp` uses the FVP when one is installed).

Layers, bottom up: :mod:`.container` (the custom op and its regions),
:mod:`.cmdstream` (driver payload, register commands, per-op register snapshots,
:func:`describe`), :mod:`.weights` (MLW weight and bias/scale streams),
:mod:`.memory` (regions, tiles, NHWC/NHCWB16 addressing), :mod:`.engine` (integer
semantics of each operation), :mod:`.runner` (whole graph, CPU ops on LiteRT),
:mod:`.reference` (TFLite Micro, whole or op by op; LiteRT as a second opinion) and
:mod:`.validate` (zero-tolerance comparison of outputs and intermediate tensors).
"""

from nirc.targets.ethos_u.sim.cmdstream import CommandStreamError
from nirc.targets.ethos_u.sim.container import ContainerError
from nirc.targets.ethos_u.sim.memory import SimulationError
from nirc.targets.ethos_u.sim.runner import SimulationResult, describe, run, simulate
from nirc.targets.ethos_u.sim.validate import (
    NpuValidation,
    compare_outputs,
    compare_with_reference,
    run_reference,
    validate_artifact,
)
from nirc.targets.ethos_u.sim.weights import WeightStreamError

__all__ = [
    "CommandStreamError",
    "ContainerError",
    "NpuValidation",
    "SimulationError",
    "SimulationResult",
    "WeightStreamError",
    "compare_outputs",
    "compare_with_reference",
    "describe",
    "run",
    "run_reference",
    "simulate",
    "validate_artifact",
]
