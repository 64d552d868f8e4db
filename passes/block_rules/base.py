"""What a block-substitution rule is, and the graph surgery the rules share (no rule lives here).

A rule (onnxscript-rewriter style) has three parts:

* ``matches(graph)`` -- the pattern: yields every :class:`Match` (the block's
  node names, its input and output tensors, what the rewrite needs to know);
* ``check(graph, match)`` -- returns None when the rewrite applies, else the
  reason it does not (recorded as the block's decision);
* ``candidates(graph, match, env)`` -- one or more :class:`Candidate`
  replacements, each a function that rewrites *a* graph holding the block's
  nodes (the live model, a copy of it, or a standalone subgraph cut out for
  the cost oracle) and returns the names of the nodes it created.

Candidates are plain data plus that function: the same candidate is costed on
a cut-out subgraph and then applied to the model, so what is measured is what
is applied.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import onnx_graphsurgeon as gs

from .._rewrite import Namer, consumers, detach, static_shape

FUSABLE_ACTIVATIONS = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid"})
"""Unary ops Vela fuses into the preceding NPU op: a block is costed together with one of these after it."""


@dataclass(frozen=True)
class Match:
    """One occurrence of a rule's pattern.

    Attributes:
        rule: the rule's name.
        nodes: names of the nodes the rewrite replaces, in execution order.
        inputs: names of the feature-map tensors entering the block.
        output: name of the tensor the block produces (kept: its readers do not change).
        info: rule-specific facts found while matching (read by ``check`` and ``candidates``).
    """

    rule: str
    nodes: tuple[str, ...]
    inputs: tuple[str, ...]
    output: str
    info: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        return self.rule, self.nodes


@dataclass(frozen=True)
class InputLayout:
    """A change of a graph input's layout that a rewrite makes (the stem rule's explicit option).

    The rewritten model computes exactly what the original computed on ``x``
    when it is fed ``adapt(x)`` instead; :meth:`describe` says how to make that
    feed on the host.

    Attributes:
        input: the graph input's name (unchanged).
        kind: ``pad-channels`` (zero channels appended) or ``space-to-depth``.
        old_shape, new_shape: NCHW shapes before and after.
        block: the space-to-depth block size (1 for ``pad-channels``).
    """

    input: str
    kind: Literal["pad-channels", "space-to-depth"]
    old_shape: tuple[int, ...]
    new_shape: tuple[int, ...]
    block: int = 1

    def adapt(self, x: np.ndarray) -> np.ndarray:
        """The new-layout feed for an old-layout input ``x`` (NCHW)."""
        if self.kind == "pad-channels":
            extra = self.new_shape[1] - x.shape[1]
            return np.concatenate([x, np.zeros((x.shape[0], extra, *x.shape[2:]), x.dtype)], axis=1)
        n, c, h, w = x.shape
        b = self.block
        tmp = x.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4)
        return np.ascontiguousarray(tmp.reshape(n, c * b * b, h // b, w // b))

    def describe(self) -> str:
        if self.kind == "pad-channels":
            return (
                f"input '{self.input}' now has shape {list(self.new_shape)} (was {list(self.old_shape)}): "
                f"append {self.new_shape[1] - self.old_shape[1]} zero channels after the original ones"
            )
        return (
            f"input '{self.input}' now has shape {list(self.new_shape)} (was {list(self.old_shape)}): "
            f"feed ONNX SpaceToDepth(x, blocksize={self.block}), i.e. channel (dy * {self.block} + dx) * C + c "
            f"holds x[c, {self.block} * i + dy, {self.block} * j + dx]"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "kind": self.kind,
            "old_shape": list(self.old_shape),
            "new_shape": list(self.new_shape),
            "block": self.block,
            "feed": self.describe(),
        }


Build = Callable[[gs.Graph, Namer], list[str]]
"""Rewrites the block in the given graph (found by node and tensor names); returns the new nodes' names."""


@dataclass(frozen=True)
class Candidate:
    """One replacement of a matched block.

    Attributes:
        name: short label (``merged``, ``dense``, ``space-to-depth`` ...).
        build: the rewrite.
        exact: whether the replacement computes the same function (up to float rounding).
        note: what the replacement is, for the report.
        input_layout: set when the replacement changes a graph input's layout.
        accuracy: for inexact candidates, the measured error (filled by the rule).
        accuracy_preferred: a slower variant that keeps more int8 accuracy (e.g. a residual kept
            out of a merged kernel); the pass falls back to it when the int8 accuracy guard
            refuses the cheapest candidate.
    """

    name: str
    build: Build
    exact: bool = True
    note: str = ""
    input_layout: InputLayout | None = None
    accuracy: Mapping[str, float] | None = None
    accuracy_preferred: bool = False


class RuleEnv(ABC):
    """What a rule may ask the pass for while building candidates: calibration activations and accuracy."""

    @abstractmethod
    def activations(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Values of tensors ``names`` of the current model on the fit samples, stacked along axis 0."""

    @abstractmethod
    def measure(self, match: Match, build: Build) -> dict[str, float]:
        """Accuracy of the current model with ``build`` applied, on held-out samples, against the original model.

        Keys: ``block_rel_error`` (``||y' - y|| / ||y||`` of the block's output
        against the current model), ``output_rel_error`` and ``output_snr_db``
        (the model's outputs against the model the pass started from).
        """


class Rule(ABC):
    """A pattern, a check returning a reason, and candidate rewrites (see the module docstring).

    Subclasses set ``name`` (kebab-case), ``exact`` and ``ops`` (the op types
    the pattern needs: the pass skips the rule when none is present), and
    document the identity that makes each rewrite exact.
    """

    name: ClassVar[str]
    exact: ClassVar[bool]
    ops: ClassVar[tuple[str, ...]]
    rematch_own: ClassVar[bool] = True
    """Whether a block this rule wrote in the current run may match it again (a merged conv may merge with
    the next one; a regrouped conv's coarser groupings were all candidates of the original already)."""

    @abstractmethod
    def matches(self, graph: gs.Graph) -> Iterator[Match]:
        """Every occurrence of the pattern in ``graph``, in execution order."""

    def check(self, graph: gs.Graph, match: Match) -> str | None:
        """None when ``candidates`` may be called, else why the rewrite does not apply."""
        return None

    @abstractmethod
    def candidates(self, graph: gs.Graph, match: Match, env: RuleEnv) -> list[Candidate]:
        """The replacements to cost against the block as it is."""


# ----------------------------------------------------------------------------- graph surgery


def nodes_by_name(graph: gs.Graph) -> dict[str, gs.Node]:
    return {n.name: n for n in graph.nodes}


def tensor(graph: gs.Graph, name: str) -> gs.Tensor:
    tensors: dict[str, gs.Tensor] = graph.tensors()
    return tensors[name]


def single_reader(graph: gs.Graph, t: gs.Tensor) -> gs.Node | None:
    """The only node reading ``t`` (not a graph output), else None."""
    readers = consumers(t)
    if len(readers) != 1 or t.name in {o.name for o in graph.outputs}:
        return None
    return readers[0]


def fused_activation(graph: gs.Graph, output: str) -> str | None:
    """The unary activation Vela would fuse after the block (its only reader), by name."""
    t = graph.tensors().get(output)
    if t is None:
        return None
    reader = single_reader(graph, t)
    return reader.name if reader is not None and reader.op in FUSABLE_ACTIVATIONS else None


class Writer:
    """Appends nodes named after a base name with fresh, unique names and static shapes."""

    def __init__(self, graph: gs.Graph, namer: Namer, base: str, dtype: Any = np.float32) -> None:
        self.graph = graph
        self.namer = namer
        self.base = base
        self.dtype = np.dtype(dtype)
        self.created: list[str] = []

    def const(self, suffix: str, values: np.ndarray, dtype: Any = None) -> gs.Constant:
        array = np.asarray(values, dtype=self.dtype if dtype is None else dtype)
        return self.namer.constant(f"{self.base}_{suffix}", array)

    def node(
        self,
        op: str,
        suffix: str,
        inputs: Sequence[gs.Tensor],
        shape: Sequence[int] | None,
        attrs: Mapping[str, Any] | None = None,
        output: gs.Tensor | None = None,
    ) -> gs.Tensor:
        """Append ``op``; it writes ``output`` when given (the block's kept output), else a new tensor."""
        out = output
        if out is None:
            out = gs.Variable(
                self.namer.fresh(f"{self.base}_{suffix}"),
                dtype=self.dtype,
                shape=None if shape is None else list(shape),
            )
        name = self.namer.fresh(f"{self.base}_{suffix}")
        self.graph.nodes.append(gs.Node(op, name, attrs=dict(attrs or {}), inputs=list(inputs), outputs=[out]))
        self.created.append(name)
        return out

    def conv(
        self,
        suffix: str,
        x: gs.Tensor,
        weight: np.ndarray,
        bias: np.ndarray | None,
        attrs: Mapping[str, Any],
        shape: Sequence[int] | None,
        output: gs.Tensor | None = None,
    ) -> gs.Tensor:
        inputs: list[gs.Tensor] = [x, self.const(f"{suffix}_w", weight)]
        if bias is not None:
            inputs.append(self.const(f"{suffix}_b", bias))
        return self.node("Conv", suffix, inputs, shape, attrs, output)


def remove_block(graph: gs.Graph, match: Match) -> tuple[list[gs.Tensor], gs.Tensor]:
    """Disconnect the block's nodes; returns its input tensors and its output tensor (now without a producer)."""
    tensors: dict[str, gs.Tensor] = graph.tensors()
    inputs = [tensors[n] for n in match.inputs]
    out = tensors[match.output]
    by_name = nodes_by_name(graph)
    detach(*(by_name[n] for n in match.nodes))
    return inputs, out


def nchw(t: gs.Tensor) -> tuple[int, int, int, int] | None:
    shape = static_shape(t)
    if shape is None or len(shape) != 4:
        return None
    return shape[0], shape[1], shape[2], shape[3]
