"""Which TFLite ops Vela will run on the NPU, why the others fall back, and the rewrite that fixes each.

Why this exists: a CPU fallback on an Ethos-U system costs far more than the op
itself (the NPU stops, the Cortex-M runs a reference kernel, tensors are copied
between the two), and Vela only says so in free text after a full compile.  nirc
turns that into data: one :class:`Placement` per op with the exact constraint text
Vela uses, plus the nirc rewrite that would put the op on the NPU.

Two engines predict the placement of an int8 TFLite file before nirc's own Vela
compile step:

* ``engine="vela"`` (default) asks Vela itself.  Vela 5 compiles with its C++ core,
  Regor, whose supported-operator checker is not exposed on its own: it runs inside
  Regor's compile entry point.  This engine therefore runs that entry point (through
  :func:`~nirc.targets.ethos_u.vela_driver.compile_with_vela`, into a scratch
  directory) and reads the placement from its output, so prediction and the real
  compile agree by construction.  Cost: one Vela compile.
* ``engine="python"`` runs Vela's Python constraint functions
  (:func:`~nirc.targets.ethos_u.constraints.python_checks`) on the graph Vela's own
  reader builds, without compiling, and takes the set of operator types the NPU
  supports from Regor's table.  Fast (milliseconds to a few hundred for VGG19), and
  every reason is a constraint docstring.  Those functions belong to Vela's legacy
  core, which Regor replaced; where Regor states a rule differently (strides above 3,
  TRANSPOSE permutations) the legacy check is replaced by a function stating Regor's
  sentence (:data:`~nirc.targets.ethos_u.constraints.REGOR_RULES`).  Measured against
  Vela 5.2's real placement: every op of the six example models and the three
  legalization models, and every op of 48 single-op probes on U55 and U65; on U85
  (which the legacy core never supported) it is pessimistic (246 of 264 probe ops).
  :func:`compare` reports every disagreement.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nirc.targets.ethos_u.constraints import ConstraintTable, constraint_table, python_checks

from nirc.errors import BackendError
from nirc.target import Target

logger = logging.getLogger(__name__)

Engine = Literal["vela", "python"]


@dataclass(frozen=True)
class Placement:
    """Where one TFLite operator runs.

    Attributes:
        op_name: the op's first output tensor name (Vela's name for the op; nirc's
            emitter derives it from the ONNX tensor name).
        op_type: TFLite builtin name, e.g. ``MEAN``.
        on_npu: False when the op falls back to the CPU.
        reasons: for CPU ops, Vela's reasons (what it found, then the constraint).
        fix: the nirc rewrite that would place the op on the NPU, or None if none is known.
        constraint: the constraint sentence from Vela's table the first reason refers to.
    """

    op_name: str
    op_type: str
    on_npu: bool
    reasons: tuple[str, ...] = ()
    fix: str | None = None
    constraint: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op_name,
            "op_type": self.op_type,
            "placement": "NPU" if self.on_npu else "CPU",
            "constraint": self.constraint,
            "reasons": list(self.reasons),
            "fix": self.fix,
        }


# --------------------------------------------------------------------------- fixes


@dataclass(frozen=True)
class _Fix:
    op_types: tuple[str, ...]
    pattern: str
    text: str


# Matched in order against "<OP_TYPE> <reason>"; the first hit names the rewrite.  The
# patterns key on Regor's constraint wording (see ConstraintTable) and on the Python
# checker's docstrings.
_FIXES: tuple[_Fix, ...] = (
    _Fix(("MEAN",), r"depth.reduction|Reduction over depth",
         "ReduceMean over channels: reduce a 1 x (H*W) x C view (nirc's emitter does this for a ReduceMean "
         "over axis 1 of a 4-D map)"),
    _Fix(("MEAN",), r"[Rr]educed axis|Width axis|[Pp]roduct of reduced axes|Amount of reduced elements",
         "split the reduced H*W into two factors below 4096 (nirc's emitter does this when H*W factors so); "
         "otherwise pool in stages with AveragePool first (decompose-pooling)"),
    _Fix(("AVERAGE_POOL_2D",), r"width and height must be less than or equal to 8|Kernel filter values",
         "SAME-padded pool wider than 8: explicit PAD + VALID AVERAGE_POOL_2D + MUL by the window-count map "
         "(nirc's emitter does this for kernels > 8)"),
    _Fix(("AVERAGE_POOL_2D", "MAX_POOL_2D"), r"[Kk]ernel (height|product|filter height)|out of range",
         "decompose-pooling: cascade of pools with kernels <= 256 and area <= 65536"),
    _Fix(("AVERAGE_POOL_2D", "MAX_POOL_2D", "CONV_2D"), r"Stride>3|[Ss]tride",
         "pad explicitly (PAD) and use VALID padding, which lifts the stride limit"),
    _Fix(("DEPTHWISE_CONV_2D",), r"[Ss]tride",
         "stride > 3 depthwise: stride-1 depthwise conv followed by a strided slice or 1x1 max-pool"),
    _Fix(("RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR"), r"[Ss]cale.factor|scaling",
         "legalize-resize: a chain of x2/x4/x8 resizes for power-of-two nearest upscaling, a strided Slice for "
         "integer nearest downscaling (other factors have no exact NPU form)"),
    _Fix(("STRIDED_SLICE",), r"stride|Stride",
         "slice the channels alone (full H and W): nirc's emitter then strides over W of a [N, H*W, C, 1] view; "
         "or gather the channels with a 1x1 one-hot Conv (legalize-channel-shuffle does this for Gather)"),
    _Fix(("TRANSPOSE",), r".",
         "propagate-transposes (layout propagation through per-position ops) or legalize-channel-shuffle "
         "(channel shuffles)"),
    _Fix(("SQRT", "RSQRT"), r".",
         "legalize-rsqrt: x / Sqrt(v) -> x * Pow(v, -0.5), which the emitter lowers to RSQRT + MUL"),
    _Fix(("DIV",), r".",
         "x / Sqrt(v): legalize-rsqrt (RSQRT + MUL); x / constant: fuse-affine folds it into the adjacent "
         "Conv or Gemm; a divisor computed at run time has no NPU form here and stays on the CPU"),
    _Fix(("GELU",), r".", "approximate-gelu (lossy, opt-in) rewrites GELU with TANH/LOGISTIC"),
    _Fix(("SOFTMAX",), r"width and height|65536",
         "reshape so the softmax axis is last and the other axes fold into fewer than 65536 rows"),
    _Fix(("GATHER",), r".",
         "gather one contiguous run of indices (nirc's emitter makes that a SLICE, which the NPU runs); "
         "a channel gather of a 4-D map becomes a 1x1 conv (legalize-channel-shuffle)"),
    _Fix(("FULLY_CONNECTED",), r"[Ww]eight",
         "constant weights of the form O x I: only a MatMul/Gemm with a constant B maps to FULLY_CONNECTED"),
)  # fmt: skip


def suggest_fix(op_type: str, reasons: Sequence[str]) -> str | None:
    """The rewrite that would place an op with these fallback reasons on the NPU, if nirc knows one."""
    text = " ".join([op_type, *reasons])
    for fix in _FIXES:
        if op_type in fix.op_types and re.search(fix.pattern, text):
            return fix.text
    return None


# --------------------------------------------------------------------------- reading the TFLite graph


def _tflite_ops(data: bytes) -> list[tuple[str, str]]:
    """(first output tensor name, builtin name) of every operator, in graph order."""
    import tflite
    from nirc.targets.ethos_u.vela_driver import NPU_CUSTOM_CODE, _builtin_names

    names = _builtin_names()
    model = tflite.Model.GetRootAs(data, 0)
    ops: list[tuple[str, str]] = []
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        for o in range(sg.OperatorsLength()):
            op = sg.Operators(o)
            code = model.OperatorCodes(op.OpcodeIndex())
            custom = code.CustomCode()
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            op_type = custom.decode() if custom is not None else names.get(builtin, f"BUILTIN_{builtin}")
            if op_type == NPU_CUSTOM_CODE:
                continue
            out = sg.Tensors(op.Outputs(0)).Name().decode() if op.OutputsLength() else f"op{o}"
            ops.append((out, op_type))
    return ops


def _read(tflite: bytes | str | Path) -> bytes:
    if isinstance(tflite, bytes):
        return tflite
    path = Path(tflite)
    if not path.is_file():
        raise BackendError(f"{path}: no such TFLite file")
    return path.read_bytes()


# --------------------------------------------------------------------------- prediction


def predict_placement(tflite: bytes | str | Path, target: Target, *, engine: Engine = "vela") -> list[Placement]:
    """Predict, op by op, where Vela places an int8 TFLite model for ``target``.

    Args:
        tflite: the model bytes or a path to it.
        target: an Ethos-U target (its accelerator config selects Vela's constraint set).
        engine: ``"vela"`` (Vela's own checker; exact) or ``"python"`` (no compile;
            approximate, see the module docstring).

    Returns:
        One :class:`Placement` per operator of the input graph, in graph order.
    """
    data = _read(tflite)
    table = constraint_table(target)
    if engine == "vela":
        return _predict_with_vela(data, target, table)
    if engine == "python":
        return _predict_with_python(data, table)
    raise ValueError(f"unknown placement engine {engine!r}; use 'vela' or 'python'")


def _predict_with_vela(data: bytes, target: Target, table: ConstraintTable) -> list[Placement]:
    from nirc.targets.ethos_u.vela_driver import compile_with_vela

    with tempfile.TemporaryDirectory(prefix="nirc_placement_") as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(data)
        result = compile_with_vela(path, target, Path(tmp) / "vela")
        cpu = {op.name: op for op in result.cpu_op_list}
    return _merge(_tflite_ops(data), {n: (c.op_type, [c.reason]) for n, c in cpu.items()}, table)


def observed_placement(tflite: bytes | str | Path, cpu_op_list: Sequence[Any], target: Target) -> list[Placement]:
    """Placement as a finished Vela compile reports it.

    Use it to put the compile nirc already ran into the same form as a prediction.
    ``cpu_op_list`` is ``VelaResult.cpu_op_list`` or its JSON form (``report["vela"]["cpu_op_list"]``).
    """
    cpu: dict[str, tuple[str, list[str]]] = {}
    for op in cpu_op_list:
        row = op if isinstance(op, dict) else vars(op)
        cpu[str(row["name"])] = (str(row["op_type"]), [str(row["reason"])])
    return _merge(_tflite_ops(_read(tflite)), cpu, constraint_table(target))


def _merge(
    ops: Sequence[tuple[str, str]], cpu: dict[str, tuple[str, list[str]]], table: ConstraintTable
) -> list[Placement]:
    placements: list[Placement] = []
    seen: set[str] = set()
    for name, op_type in ops:
        if name not in cpu:
            placements.append(Placement(name, op_type, True))
            continue
        seen.add(name)
        placements.append(_cpu(name, op_type, cpu[name][1], table))
    for name, (op_type, reasons) in cpu.items():
        if name not in seen:  # an op Vela created itself and left on the CPU
            placements.append(_cpu(name, op_type, reasons, table))
    return placements


def _cpu(name: str, op_type: str, reasons: Sequence[str], table: ConstraintTable) -> Placement:
    reasons = tuple(" ".join(r.split()) for r in reasons if r.strip())
    if not table.supported(op_type):
        reasons = (*reasons, f"{op_type} is not an NPU operator for {table.architecture} in this Vela version")
        constraint = None
    else:
        constraint = next((c for r in reasons if (c := table.match(op_type, r)) is not None), None)
    return Placement(name, op_type, False, reasons, suggest_fix(op_type, reasons), constraint)


def _predict_with_python(data: bytes, table: ConstraintTable) -> list[Placement]:
    checks = {c.name: c for c in python_checks(data, table)}
    ops = _tflite_ops(data)
    cpu: dict[str, tuple[str, list[str]]] = {}
    for name, op_type in ops:
        check = checks.get(name)
        if not table.supported(op_type):
            cpu[name] = (op_type, [])
        elif check is not None and check.violations:
            cpu[name] = (op_type, [v.text() for v in check.violations])
        # An op type Regor supports but the Python checker does not know (GELU, BATCH_MATMUL, ...)
        # has no Python constraints to run: it is predicted on the NPU.
    return _merge(ops, cpu, table)


# --------------------------------------------------------------------------- comparison and report


@dataclass(frozen=True)
class Mismatch:
    """An op the prediction places differently from the compile."""

    op_name: str
    op_type: str
    predicted_npu: bool
    observed_npu: bool


def compare(predicted: Sequence[Placement], observed: Sequence[Placement]) -> list[Mismatch]:
    """Ops whose predicted and observed placement differ (ops missing on one side count as NPU there)."""
    pred = {p.op_name: p for p in predicted}
    obs = {p.op_name: p for p in observed}
    out: list[Mismatch] = []
    for name in dict.fromkeys([*pred, *obs]):
        p, o = pred.get(name), obs.get(name)
        p_npu = p.on_npu if p is not None else True
        o_npu = o.on_npu if o is not None else True
        if p_npu != o_npu:
            op_type = (p or o).op_type  # type: ignore[union-attr]
            out.append(Mismatch(name, op_type, p_npu, o_npu))
    return out


def placement_report(
    predicted: Sequence[Placement], observed: Sequence[Placement] | None = None
) -> list[dict[str, Any]]:
    """One entry per op predicted or observed on the CPU, for ``report.json``.

    Each entry: ``op``, ``op_type``, ``constraint`` (Vela's sentence), ``reasons``,
    ``fix`` (the nirc rewrite, or null), ``predicted`` / ``observed`` (``"CPU"``,
    ``"NPU"`` or null when that side is missing) and ``agree``.
    """
    pred = {p.op_name: p for p in predicted}
    obs = {p.op_name: p for p in observed} if observed is not None else {}
    entries: list[dict[str, Any]] = []
    for name in dict.fromkeys([*pred, *obs]):
        p, o = pred.get(name), obs.get(name)
        cpu = [x for x in (o, p) if x is not None and not x.on_npu]  # Vela's own words first
        if not cpu:
            continue
        entry = cpu[0].to_json()
        del entry["placement"]
        entry["predicted"] = None if p is None else ("NPU" if p.on_npu else "CPU")
        entry["observed"] = None if observed is None else ("NPU" if o is None or o.on_npu else "CPU")
        entry["agree"] = None if observed is None else entry["predicted"] == entry["observed"]
        entries.append(entry)
    return entries


def summary(placements: Sequence[Placement]) -> dict[str, int]:
    """Counts for a report header: ops, NPU ops, CPU ops."""
    npu = sum(1 for p in placements if p.on_npu)
    return {"ops": len(placements), "npu_ops": npu, "cpu_ops": len(placements) - npu}


def placement_section(
    tflite: bytes | str | Path,
    target: Target,
    cpu_op_list: Sequence[Any] | None = None,
    *,
    engine: Engine = "python",
) -> dict[str, Any]:
    """The ``placement`` section of ``report.json`` (and of ``nirc analyze --json``).

    Args:
        tflite: the int8 TFLite nirc emitted (what Vela compiles).
        target: the Ethos-U target.
        cpu_op_list: Vela's CPU ops when it compiled the model (``VelaResult.cpu_op_list`` or
            ``report["vela"]["cpu_op_list"]``), or None before/without compiling.
        engine: the prediction engine (see :func:`predict_placement`).

    Returns:
        ``{"engine", "architecture", "predicted": {ops, npu_ops, cpu_ops}, "observed": {...} | None,
        "agree": bool | None, "cpu_ops": placement_report(...)}``.
    """
    data = _read(tflite)
    predicted = predict_placement(data, target, engine=engine)
    observed = observed_placement(data, cpu_op_list, target) if cpu_op_list is not None else None
    return {
        "engine": engine,
        "architecture": constraint_table(target).architecture,
        "predicted": summary(predicted),
        "observed": summary(observed) if observed is not None else None,
        "agree": None if observed is None else not compare(predicted, observed),
        "cpu_ops": placement_report(predicted, observed),
    }


def model_placement(
    proto: Any, target: Target, *, engine: Engine = "python", samples: int = 4
) -> tuple[bytes, list[Placement]]:
    """Emit an optimized ONNX model to int8 TFLite (synthetic calibration) and predict its placement.

    For ``nirc analyze``: placement depends on shapes and operator choices, not on the
    int8 ranges, so a few synthetic samples suffice.
    """
    from nirc.backend import emit, input_shapes
    from nirc.quant import load_calibration

    calib = load_calibration(None, input_shapes(proto), count=samples)
    data = emit(proto, dtype="int8", calib=calib).tflite.data
    return data, predict_placement(data, target, engine=engine)
