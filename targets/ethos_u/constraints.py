"""Vela's operator constraints for an Ethos-U target, read from Vela itself at run time.

Why read them rather than write them down: the constraints that decide whether an
op runs on the NPU change with every Vela release, and a hand-copied table drifts
silently.  Vela 5 ships two sources, and nirc uses both for what each is good at:

* **Regor's table** (``ethosu.regor.tflite_operator_constraints(arch)``): the C++
  compilation core that Vela 5 runs by default for every target publishes, per TFLite
  operator, the exact sentences it prints when an op falls back to the CPU (the same
  text ``vela --supported-ops-report`` renders into SUPPORTED_OPS.md).
  :class:`ConstraintTable` holds it; it names the constraint behind each fallback
  reason and lists which operator types can be placed on the NPU at all.
* **Vela's Python checker** (``TFLiteSemantic`` + ``TFLiteSupportedOperators``, the
  legacy core's): each constraint is a small function whose docstring is the reason
  shown to users.  :func:`python_checks` reads the TFLite file with Vela's own
  ``tflite_reader`` and runs those functions on the graph exactly as the legacy core
  does, without compiling.  It approximates Regor's decisions: the two cores differ
  (Regor runs most int8 TRANSPOSEs and strides above 3 with VALID padding on the NPU),
  so the legacy checks Regor words differently are replaced by small functions whose
  docstring is Regor's own sentence (:data:`REGOR_RULES`, applied only where the
  target's table carries that sentence); ``placement.py`` measures what remains.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from nirc.errors import BackendError
from nirc.target import Target

logger = logging.getLogger(__name__)

#: Vela's supported-ops report calls a constraint generic when it applies to at least this share of ops.
_GENERIC_SHARE = 0.8


def vela_architecture(target: Target) -> str:
    """Regor's architecture name for a target: ``ethos-u65-256`` -> ``EthosU65``.

    Vela derives it the same way from ``--accelerator-config`` (every dash-separated
    part but the MAC count, capitalised and joined).
    """
    parts = target.accelerator_config.split("-")
    if len(parts) < 2:
        raise BackendError(
            f"target {target.name}: cannot derive a Vela architecture from {target.accelerator_config!r}"
        )
    return "".join(p.capitalize() for p in parts[:-1])


@dataclass(frozen=True)
class ConstraintTable:
    """Regor's TFLite operator constraints for one architecture.

    Attributes:
        architecture: Regor's name for it (``EthosU55``, ``EthosU65``, ``EthosU85``).
        ops: TFLite builtin name -> every constraint sentence Regor checks for it.
            Operator types absent from ``ops`` always run on the CPU.
    """

    architecture: str
    ops: Mapping[str, tuple[str, ...]]
    generic: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        counts: dict[str, int] = {}
        for constraints in self.ops.values():
            for text in set(constraints):
                counts[text] = counts.get(text, 0) + 1
        limit = _GENERIC_SHARE * len(self.ops)
        order = [t for cs in self.ops.values() for t in cs]
        generic = [t for t in dict.fromkeys(order) if counts[t] >= limit]
        object.__setattr__(self, "generic", tuple(generic))

    def supported(self, op_type: str) -> bool:
        """Whether Vela can place this operator type on the NPU at all."""
        return _regor_name(op_type) in self.ops

    def constraints(self, op_type: str) -> tuple[str, ...]:
        return self.ops.get(_regor_name(op_type), ())

    def specific(self, op_type: str) -> tuple[str, ...]:
        """The op's own constraints (those not shared by most operators), in Vela's order."""
        return tuple(c for c in self.constraints(op_type) if c not in self.generic)

    def match(self, op_type: str, reason: str) -> str | None:
        """The constraint a printed fallback reason refers to, or None.

        Regor prints ``<what it found> <constraint text>``; the driver joins the lines,
        so the constraint is compared with its whitespace collapsed.
        """
        flat = _collapse(reason)
        best: str | None = None
        for text in self.constraints(op_type) or tuple(t for cs in self.ops.values() for t in cs):
            if _collapse(text) in flat and (best is None or len(text) > len(best)):
                best = text
        return best

    def to_json(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "generic": list(self.generic),
            "ops": {op: list(self.specific(op)) for op in sorted(self.ops)},
        }


def _collapse(text: str) -> str:
    """One line, single spaces, no list bullets: how Vela's multi-line constraints appear once printed and joined."""
    lines = (line.strip().removeprefix("- ").strip() for line in text.splitlines())
    return " ".join(" ".join(lines).split())


def _regor_name(op_type: str) -> str:
    # Regor renames ARG_MAX (a name clash in its C++ enum), as Vela's report notes.
    return "ARGMAX" if op_type == "ARG_MAX" else op_type


@lru_cache(maxsize=8)
def _table(architecture: str) -> ConstraintTable:
    from ethosu import regor

    try:
        raw = regor.tflite_operator_constraints(architecture)
    except Exception as exc:  # pybind raises RuntimeError/ValueError for unknown names
        raise BackendError(f"Vela has no operator constraints for {architecture}: {exc}") from exc
    ops = {str(op): tuple(str(c) for c in constraints) for op, constraints in sorted(raw.items())}
    return ConstraintTable(architecture, ops)


def constraint_table(target: Target) -> ConstraintTable:
    """Regor's constraint table for ``target``'s architecture (cached per architecture)."""
    return _table(vela_architecture(target))


# --------------------------------------------------------------------------- Vela's Python checker


@dataclass(frozen=True)
class Violation:
    """One constraint of Vela's Python checker that an op fails.

    Attributes:
        check: the constraint function's name, e.g. ``constraint_mean_depth``.
        constraint: its docstring, the sentence Vela shows users.
        detail: what Vela found (its "extra" message), possibly empty.
    """

    check: str
    constraint: str
    detail: str

    def text(self) -> str:
        return f"{self.constraint} ({self.detail})" if self.detail else self.constraint


@dataclass(frozen=True)
class OpCheck:
    """Vela's Python checker's verdict on one op of the TFLite graph.

    Attributes:
        name: the op's first output tensor name (how Vela names ops).
        op_type: TFLite builtin name.
        violations: every failed constraint (Vela stops at the first; all are listed
            here so a report can name each change needed).
        cpu_only: the op type is not in the checker's supported list at all.
    """

    name: str
    op_type: str
    violations: tuple[Violation, ...]
    cpu_only: bool = False

    @property
    def on_npu(self) -> bool:
        return not self.cpu_only and not self.violations


def python_checks(tflite: bytes | str | Path, table: ConstraintTable | None = None) -> list[OpCheck]:
    """Run Vela's Python semantic and supported-operator checks on a TFLite model.

    The graph is read with Vela's own ``tflite_reader``, and the rewrites the legacy
    core applies before its check (quantize folding, Shape to constant, weight
    zero-point fix-up, pool-stride fix-up) run first, so each constraint function sees
    the op exactly as it would in ``vela --debug-force-legacy-core``.

    With ``table`` (Regor's constraints for the target), each legacy check that Regor
    words differently is replaced by the function stating Regor's rule (see
    :data:`REGOR_RULES`), where that op's entry in the table carries the sentence.
    """
    from ethosu.vela import rewrite_graph, tflite_model_semantic, tflite_reader
    from ethosu.vela import tflite_graph_optimiser as optimiser
    from ethosu.vela.operation import Op
    from ethosu.vela.tflite_mapping import optype_to_builtintype
    from ethosu.vela.tflite_supported_operators import TFLiteSupportedOperators

    with contextlib.ExitStack() as stack:
        if isinstance(tflite, bytes):
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "model.tflite"
            tmp.write_bytes(tflite)
            path = str(tmp)
        else:
            path = str(tflite)
        # The reader and checkers print their findings; they are returned as data instead.
        printed = stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        try:
            nng = tflite_reader.read_tflite(path, 1, {}, [], [])
            semantic = tflite_model_semantic.TFLiteSemantic()
            # As in Vela's model reader: semantic checks first; ops failing them are not rewritten.
            semantic_failures: dict[str, list[Violation]] = {}
            for sg in nng.subgraphs:
                for op in sg.get_all_ops():
                    found = _semantic_violations(semantic, op, Op)
                    if table is not None and op.type not in (Op.Placeholder, Op.SubgraphInput, Op.Const):
                        dropped = _regor_dropped(table, str(optype_to_builtintype(op.type)))
                        found = [v for v in found if v.check not in dropped]
                    semantic_failures[_op_name(op)] = found
                    op.run_on_npu = not found
            pre = [
                optimiser.optimise_quantize,
                optimiser.convert_shape_op_to_constant_tensor,
                optimiser.fixup_or_check_asymmetric_weights(False),
                optimiser.fixup_pool_strides,
            ]
            for index, sg in enumerate(nng.subgraphs):
                nng.subgraphs[index] = rewrite_graph.rewrite_graph_pre_order(
                    nng, sg, None, [], pre, rewrite_unsupported=False
                )
        except SystemExit:  # the reader prints "Error: Invalid TFLite file ..." and exits
            said = " ".join(printed.getvalue().split()) or "exit"
            raise BackendError(f"Vela's TFLite reader rejected the model: {said}") from None
        except Exception as exc:  # Vela's reader raises bare exceptions on malformed input
            raise BackendError(f"Vela's TFLite reader rejected the model: {type(exc).__name__}: {exc}") from exc
        checker = TFLiteSupportedOperators()
        results: list[OpCheck] = []
        for sg in nng.subgraphs:
            for op in sg.get_all_ops():
                if op.type in (Op.Placeholder, Op.SubgraphInput, Op.Const):
                    continue
                op_type = str(optype_to_builtintype(op.type))
                name = _op_name(op)
                violations = list(semantic_failures.get(name, []))
                if op.type not in TFLiteSupportedOperators.supported_operators:
                    results.append(OpCheck(name, op_type, tuple(violations), cpu_only=True))
                    continue
                dropped = _regor_dropped(table, op_type) if table is not None else frozenset()
                violations += _supported_violations(checker, op, _overrides(table, op_type), dropped)
                results.append(OpCheck(name, op_type, tuple(violations)))
    return results


def _op_name(op: Any) -> str:
    """Vela names an op by its first output tensor (the name its CPU-fallback warnings use)."""
    return str(op.outputs[0].name if op.outputs else op.name)


def _run(constraint: Callable[[Any], tuple[bool, Any]], op: Any) -> Violation | None:
    try:
        valid, extra = constraint(op)
    except Exception as exc:  # a check that crashes on an odd op counts as a failure, as in Vela
        return Violation(constraint.__name__, _doc(constraint), f"check failed: {type(exc).__name__}: {exc}")
    if valid:
        return None
    return Violation(constraint.__name__, _doc(constraint), _collapse(str(extra or "")))


def _doc(constraint: Callable[..., Any]) -> str:
    return _collapse(constraint.__doc__ or constraint.__name__)


def _semantic_violations(semantic: Any, op: Any, op_enum: Any) -> list[Violation]:
    """``TFLiteSemantic.is_operator_semantic_valid``, collecting every failure."""
    if op.type in (op_enum.Placeholder, op_enum.SubgraphInput, op_enum.Const):
        return []
    excluded = semantic.get_generic_constraint_exclude_list().get(op.type, [])
    checks = [c for c in semantic.generic_constraints if c not in excluded]
    found = [_run(c, op) for c in (*checks, *semantic.specific_constraints[op.type])]
    return [v for v in found if v is not None]


def _supported_violations(
    checker: Any, op: Any, overrides: Mapping[str, _Check], dropped: frozenset[str] = frozenset()
) -> list[Violation]:
    """``TFLiteSupportedOperators.is_operator_supported``, collecting every failure (but ``dropped`` checks)."""
    exceptions = checker.generic_constraints_exceptions[op.type]
    checks: Sequence[_Check] = [
        c for c in checker.generic_constraints if c not in exceptions and c.__name__ not in dropped
    ]
    checks = [*checks, *checker.specific_constraints[op.type]]
    found = [_run(overrides.get(c.__name__, c), op) for c in dict.fromkeys(checks)]
    return [v for v in dict.fromkeys(found) if v is not None]


# --------------------------------------------------------------------------- Regor's wording of legacy checks

_Check = Callable[[Any], tuple[bool, Any]]
_MAX_AXIS_PRODUCT = 2**16
_NATIVE_STRIDE = 3


def regor_stride(op: Any) -> tuple[bool, str]:
    """Stride>3 is only supported IF (dilation = 1 AND padding = VALID)"""
    stride_w, stride_h = op.get_kernel_stride()
    if max(stride_w, stride_h) <= _NATIVE_STRIDE:
        return True, ""
    dilation_w, dilation_h = op.get_kernel_dilation()
    padding = op.attrs.get("padding")
    valid = dilation_w == dilation_h == 1 and (padding is None or getattr(padding, "name", "") == "VALID")
    return valid, f"Op has stride {stride_w}x{stride_h}, dilation {dilation_w}x{dilation_h}, padding {padding}"


# Regor names output layouts of an NHWC tensor; as permutations of its last three axes (H, W, C) = (0, 1, 2).
_NAMED_LAYOUTS = {(1, 0, 2), (0, 2, 1), (2, 1, 0), (1, 2, 0), (2, 0, 1)}  # NWHC, NHCW, NCWH, NWCH, NCHW


def regor_transpose(op: Any) -> tuple[bool, str]:
    """Product of any N-2 axes in a rank N tensor must be less than or equal to 2^16."""
    from ethosu.vela.data_type import DataType

    shape = [int(d) for d in op.inputs[0].shape]
    perm = [int(p) for p in op.inputs[1].values.reshape(-1)] if op.inputs[1].values is not None else []
    detail = f"Op has ifm_shape: {shape} and permutation is: {perm}"
    if op.inputs[0].dtype not in (DataType.int8, DataType.int16) or len(perm) != len(shape):
        return False, detail  # only int8/int16 transposes are judged here; other types: the stricter legacy rule
    rank = len(shape)
    if perm == list(range(rank)):
        return True, detail
    outer = rank - 3
    if rank >= 3 and perm[:outer] == list(range(outer)) and all(d == 1 for d in shape[:outer]):
        last = tuple(p - outer for p in perm[outer:])
        if last in _NAMED_LAYOUTS:
            return all(d <= _MAX_AXIS_PRODUCT for d in shape[outer:]), detail
    if rank <= 2:
        return True, detail
    from itertools import combinations

    products = (int(np.prod(c)) for c in combinations(shape, rank - 2))
    return all(p <= _MAX_AXIS_PRODUCT for p in products), detail


#: Legacy check name -> the function stating Regor's rule for the same property.
REGOR_RULES: dict[str, _Check] = {
    "constraint_stride_range": regor_stride,
    "constraint_stride_width_no_upper_limit": regor_stride,
    "constraint_stride_range_no_padding": regor_stride,
    "constraint_transpose": regor_transpose,
}


#: Legacy checks Regor does not make, with the op types for which Regor still decides that way.
#: Measured with Vela 5.2 on U65: 5-D RESHAPE, SLICE, ADD, MUL, SOFTMAX and BATCH_MATMUL run on the
#: NPU (Regor's table states no rank limit but TRANSPOSE's "Tensor dimension must be <= 8"); with a
#: batch of 4, CONV_2D, ADD, MUL, LOGISTIC, TANH, QUANTIZE, MAX_POOL_2D, CONCATENATION, TRANSPOSE,
#: SLICE, BATCH_MATMUL and SOFTMAX run on the NPU and only MEAN falls back.
REGOR_DROPPED: dict[str, frozenset[str]] = {
    "constraint_tens_shape_size": frozenset(),
    "constraint_batch_size": frozenset({"MEAN"}),
}
_LEGACY_SENTENCES = {
    "constraint_tens_shape_size": "Input(s) and Output tensors must not be greater than 4D",
    "constraint_batch_size": "IFM Tensor batch size must be 1",
}


def _regor_dropped(table: ConstraintTable, op_type: str) -> frozenset[str]:
    """The legacy checks Regor does not make for ``op_type`` (see :data:`REGOR_DROPPED`).

    A check is kept when ``op_type``'s entry in Regor's table carries its sentence.
    """
    stated = _collapse(" ".join(table.constraints(op_type)))
    return frozenset(
        name for name, kept in REGOR_DROPPED.items() if op_type not in kept and _LEGACY_SENTENCES[name] not in stated
    )


def _overrides(table: ConstraintTable | None, op_type: str) -> dict[str, _Check]:
    """The Regor rules that apply to ``op_type``: those whose sentence its table entry carries."""
    if table is None:
        return {}
    stated = _collapse(" ".join(table.constraints(op_type)))
    return {name: rule for name, rule in REGOR_RULES.items() if _doc(rule) in stated}
