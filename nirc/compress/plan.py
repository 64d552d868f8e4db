"""What can be compressed (units), by how much (levels), and applying a choice of levels to a model.

A *unit* is one decision of the search: a prunable channel space (method
``prune``) or one decomposable layer (method ``lowrank``). Its *levels* are the
distinct actions the ratios in :data:`RATIOS` give it after aligning to the
brick (channels kept, or ranks); level 0 leaves it alone. A *configuration*
maps unit ids to level indices.

Applying a configuration goes in execution order: prune spaces first at their
position, decompose layers at theirs, so a decomposition sees the channel
counts its spaces were pruned to.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import onnx

from nirc.compress import lowrank, prune
from nirc.compress.linear import weight_of
from nirc.compress.reconstruct import Reference, Refit, anchors, refit_layers
from nirc.ir import IRModel
from nirc.passes._channels import ChannelSpaces
from nirc.verify import run_tensors

logger = logging.getLogger(__name__)

Method = Literal["prune", "lowrank", "cp"]
METHODS: tuple[Method, ...] = ("prune", "lowrank", "cp")
"""``cp`` adds the CP form to ``lowrank``'s kxk decompositions where Vela measures it faster (needs ``lowrank``)."""
RATIOS: tuple[float, ...] = (0.25, 0.5, 0.625, 0.75, 0.875)
"""Share of a space's channels, or of a layer's parameters, a level removes (before alignment)."""

Config = Mapping[str, int]


@dataclass(frozen=True)
class Unit:
    """One decision of the search.

    Attributes:
        id: ``prune:<space key>`` or ``lowrank:<node>``.
        method: ``prune`` or ``lowrank``.
        target: the space key or the node name.
        position: execution-order index of its first node (application order).
        nodes: nodes whose cost the unit changes (pruning: every node inside or around the space).
        ratios: the ratio of each level (level 0 = 0.0); distinct actions only.
        actions: what each level does, for the report (``"64 -> 32 ch"``, ``"ranks 16/32"``).
        width: channels of the space or ``[out, in, *kernel]`` of the layer, before compression.
        forms: per level of a decomposition, ``"cp"`` where it is CP rather than Tucker-2/SVD
            (empty: none is; :func:`with_forms` sets it from measured costs).
    """

    id: str
    method: Method
    target: str
    position: int
    nodes: tuple[str, ...]
    ratios: tuple[float, ...]
    actions: tuple[str, ...]
    width: tuple[int, ...] = field(default=())
    forms: tuple[str, ...] = field(default=())

    @property
    def levels(self) -> int:
        return len(self.ratios)

    def is_cp(self, level: int) -> bool:
        return bool(self.forms) and self.forms[level] == "cp"


def cp_levels(unit: Unit, align: int) -> tuple[int, ...]:
    """Levels of a decomposition unit that have a CP form (a kxk conv whose CP rank saves something)."""
    if unit.method != "lowrank" or len(unit.width) != 4 or unit.width[2] * unit.width[3] == 1:
        return ()
    return tuple(i for i in range(1, unit.levels) if lowrank.ranks_for(unit.width, unit.ratios[i], align, cp=True))


def with_forms(unit: Unit, cp: Sequence[int], align: int) -> Unit:
    """``unit`` with the levels ``cp`` in CP form (the report's actions follow)."""
    if not cp:
        return unit
    forms = tuple("cp" if i in cp else "" for i in range(unit.levels))
    actions = list(unit.actions)
    for i in cp:
        ranks = lowrank.ranks_for(unit.width, unit.ratios[i], align, cp=True)
        assert ranks is not None
        actions[i] = ranks.text()
    return replace(unit, forms=forms, actions=tuple(actions))


def find_units(
    model: IRModel, align: int, methods: Sequence[Method] = METHODS, ratios: Sequence[float] = RATIOS
) -> list[Unit]:
    """Every unit of ``model`` with at least one level that changes something, in execution order."""
    order = {node.name: i for i, node in enumerate(model.graph.nodes)}
    units: list[Unit] = []
    spaces = ChannelSpaces(model.graph)
    if "prune" in methods:
        for space in prune.prunable_spaces(spaces, align):
            keeps: list[int] = [space.channels]
            levels = [0.0]
            for ratio in ratios:
                keep = prune.keep_count(space.channels, align, ratio)
                if keep < keeps[-1]:
                    keeps.append(keep)
                    levels.append(ratio)
            if len(keeps) == 1:
                continue
            touched = spaces.region(space)
            units.append(
                Unit(
                    id=f"prune:{space.key}",
                    method="prune",
                    target=space.key,
                    position=min(order[n] for n in space.producers),
                    nodes=tuple(touched),
                    ratios=tuple(levels),
                    actions=tuple(f"{space.channels} -> {k} ch" for k in keeps),
                    width=(space.channels,),
                )
            )
    if "lowrank" in methods:
        for node in model.graph.nodes:
            if not lowrank.decomposable(node):
                continue
            shape = tuple(int(d) for d in weight_of(node).shape)
            actions, levels = ["full"], [0.0]
            for ratio in ratios:
                ranks = lowrank.ranks_for(shape, ratio, align)
                if ranks is not None and ranks.text() not in actions:
                    actions.append(ranks.text())
                    levels.append(ratio)
            if len(levels) == 1:
                continue
            units.append(
                Unit(
                    id=f"lowrank:{node.name}",
                    method="lowrank",
                    target=node.name,
                    position=order[node.name],
                    nodes=(node.name,),
                    ratios=tuple(levels),
                    actions=tuple(actions),
                    width=shape,
                )
            )
    return sorted(units, key=lambda u: (u.position, u.method))


@dataclass
class Applied:
    """A configuration applied to a model.

    Attributes:
        model: the compressed model.
        layouts: pruned tensor -> original channel indices it keeps.
        factors: decomposed layer -> its factor nodes.
        details: unit id -> what was done (channels kept or ranks).
    """

    model: IRModel
    layouts: dict[str, tuple[int, ...]] = field(default_factory=dict)
    factors: dict[str, tuple[str, ...]] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)

    def layout_of(self, tensor: str) -> tuple[int, ...] | None:
        return self.layouts.get(tensor)


def apply_config(
    proto: onnx.ModelProto,
    units: Sequence[Unit],
    config: Config,
    *,
    align: int,
    criterion: prune.Criterion = "l2",
    samples: Sequence[Mapping[str, np.ndarray]] = (),
    ref: Reference | None = None,
    local_refit: bool = False,
) -> Applied:
    """Apply ``config`` to a copy of ``proto``.

    ``samples`` feed the activation criterion. With ``local_refit`` (and ``ref``), the layers a unit
    directly disturbs are refit right after it (the readers of a pruned space, the last factor of a
    decomposition): the sensitivity measurement's recovery, cheaper than a full reconstruction.
    """
    model = IRModel.from_proto(proto, proto.graph.name or "<model>")
    applied = Applied(model)
    for unit in sorted(units, key=lambda u: u.position):
        level = config.get(unit.id, 0)
        if level == 0:
            continue
        ratio = unit.ratios[level]
        disturbed: list[str] = []
        if unit.method == "prune":
            spaces = ChannelSpaces(model.graph)
            space = spaces.by_key()[unit.target]
            keep = prune.keep_count(space.channels, align, ratio)
            acts = None
            tensor = prune.reader_tensor(spaces, space)
            if criterion == "activation" and tensor is not None:
                if not applied.details and ref is not None:
                    acts = {tensor: ref.get(tensor)[0]}  # nothing changed yet: the original's activations
                elif samples:
                    acts = run_tensors(model.to_proto(check=False), samples, [tensor])
            kept = prune.prune_space(model.graph, unit.target, keep, criterion, acts)
            for tensor in space.tensors:
                previous = applied.layouts.get(tensor)
                applied.layouts[tensor] = tuple(previous[k] for k in kept) if previous else kept
            applied.details[unit.id] = f"{space.channels} -> {len(kept)} ch"
            disturbed = list(space.absorbers)
        else:
            node = next((n for n in model.graph.nodes if n.name == unit.target), None)
            if node is None:
                continue
            cp = unit.is_cp(level) and lowrank.cp_capable(node)
            ranks = lowrank.ranks_for(tuple(weight_of(node).shape), ratio, align, cp=cp)
            if ranks is None:
                continue
            factors = lowrank.decompose(model.graph, node, ranks)
            model.refresh_shapes()
            applied.factors[unit.target] = tuple(f.name for f in factors)
            applied.details[unit.id] = ranks.text()
            disturbed = [factors[-1].name]
        if local_refit and ref is not None and disturbed:
            refit_layers(model, disturbed, ref, applied.layout_of)
    return applied


def reconstruct(applied: Applied, ref: Reference) -> list[Refit]:
    """Refit every anchor layer from the first compressed one on, in order (see :mod:`.reconstruct`)."""
    model = applied.model
    names = {name for f in applied.factors.values() for name in f}
    order = anchors(model, ref.proto)
    first = next(
        (i for i, n in enumerate(order) if n.name in names or any(t.name in applied.layouts for t in n.outputs)),
        None,
    )
    if first is None:
        return []
    return list(refit_layers(model, [n.name for n in order[first:]], ref, applied.layout_of))
