"""What plugins register: passes (with where they join the pipeline) and targets.

Kept apart from :mod:`nirc.plugin` (which discovers plugins and calls their hooks) so that
:mod:`nirc.hookspecs` can name these types without importing the loader: hookspecs and
registry sit below plugin, and nothing imports upwards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from nirc.errors import PassError, PluginError, TargetError
from nirc.pass_base import Pass
from nirc.target import Target

Stage = Literal["canonical", "hardware"]
STAGES: tuple[Stage, ...] = ("canonical", "hardware")


@dataclass(frozen=True)
class Placement:
    """Where a plugin pass joins every target's default pipeline.

    ``after``/``before`` name a neighbour (any registered pass, built-in or plugin): the pass
    goes right after the last occurrence of ``after`` and must come before the first
    occurrence of ``before``. ``stage`` appends it to a stage instead: ``canonical`` (the end
    of the target-independent and legalization passes, before any hardware pass) or
    ``hardware`` (the end of the pipeline; ``--no-hw-passes`` drops it). A pass placed next
    to a hardware pass is a hardware pass too. A target whose pipeline lacks the named
    neighbour runs the pass only when named explicitly (``--passes``).
    """

    after: str | None = None
    before: str | None = None
    stage: Stage | None = None

    def __post_init__(self) -> None:
        if self.stage is not None and (self.after or self.before):
            raise PluginError("a pass placement takes a stage or after/before neighbours, not both")
        if self.stage is not None and self.stage not in STAGES:
            raise PluginError(f"unknown stage {self.stage!r}; stages: {', '.join(STAGES)}")


@dataclass
class PassRegistry:
    passes: dict[str, type[Pass]] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    placement: dict[str, Placement] = field(default_factory=dict)
    current_plugin: str = "<unknown>"

    def add_pass(
        self,
        pass_cls: type[Pass],
        *,
        after: str | None = None,
        before: str | None = None,
        stage: Stage | None = None,
    ) -> None:
        """Register a pass; with ``after``/``before``/``stage`` it also joins the default pipelines."""
        name = getattr(pass_cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {self.current_plugin}: pass class {pass_cls.__name__} has no name")
        if not isinstance(getattr(pass_cls, "exact", None), bool):
            raise PluginError(f"plugin {self.current_plugin}: pass {name} must set exact = True or False")
        if name in self.passes:
            raise PluginError(
                f"plugin {self.current_plugin}: pass '{name}' is already registered by {self.origin[name]}"
            )
        if after or before or stage:
            try:
                self.placement[name] = Placement(after=after, before=before, stage=stage)
            except PluginError as exc:
                raise PluginError(f"plugin {self.current_plugin}: pass {name}: {exc}") from None
        self.passes[name] = pass_cls
        self.origin[name] = self.current_plugin


@dataclass
class TargetRegistry:
    targets: dict[str, Target] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    current_plugin: str = "<unknown>"

    def add_target(self, target: Target) -> None:
        for key in (target.name, *target.aliases):
            if key in self.targets or key in self.aliases:
                owner = self.origin.get(key) or self.origin[self.aliases[key]]
                raise PluginError(
                    f"plugin {self.current_plugin}: target name '{key}' is already registered by {owner}"
                )
        self.targets[target.name] = target
        self.origin[target.name] = self.current_plugin
        for alias in target.aliases:
            self.aliases[alias] = target.name


@dataclass
class Registry:
    """Everything the plugins registered, plus the lookups the CLI needs."""

    pass_registry: PassRegistry
    target_registry: TargetRegistry
    plugins: tuple[str, ...]

    @property
    def passes(self) -> dict[str, type[Pass]]:
        return self.pass_registry.passes

    @property
    def targets(self) -> dict[str, Target]:
        return self.target_registry.targets

    def pipeline(self, target: Target) -> Pipeline:
        """``target``'s default pipeline with every placed plugin pass inserted where it asked."""
        return resolve_pipeline(target, self.pass_registry)

    def get_pass(self, name: str) -> type[Pass]:
        try:
            return self.passes[name]
        except KeyError:
            known = ", ".join(sorted(self.passes))
            raise PassError(f"unknown pass '{name}' (known: {known})") from None

    def get_target(self, name: str) -> Target:
        key = self.target_registry.aliases.get(name, name)
        try:
            return self.targets[key]
        except KeyError:
            aliases = self.target_registry.aliases
            names = sorted([*self.targets, *aliases], key=_natural_key)
            known = ", ".join(f"{n} (= {aliases[n]})" if n in aliases else n for n in names)
            raise TargetError(f"unknown target '{name}' (known: {known})") from None


def _natural_key(name: str) -> list[tuple[int, int | str]]:
    """``ethos-u85-128`` before ``ethos-u85-1024``: digit runs compare as numbers."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name)]




@dataclass(frozen=True)
class Pipeline:
    """A target's resolved default pipeline.

    Attributes:
        names: pass names in run order (a name may repeat, as ``fuse-affine`` does).
        hw_passes: the names ``--no-hw-passes`` drops.
        stages: one stage name per entry of ``names``.
    """

    names: tuple[str, ...]
    hw_passes: frozenset[str]
    stages: tuple[Stage, ...]


def resolve_pipeline(target: Target, passes: PassRegistry) -> Pipeline:
    """Insert placed plugin passes into ``target.default_pipeline``.

    Passes are placed in registration order; one anchored on another placed pass waits
    until its anchor is in. An anchor that names no registered pass, or an ``after``
    that lands behind ``before``, is the plugin's error.
    """
    hw = set(target.hw_passes)
    names = list(target.default_pipeline)
    stages: list[Stage] = ["hardware" if n in hw else "canonical" for n in names]
    pending = dict(passes.placement)
    for name, where in pending.items():
        for anchor in (where.after, where.before):
            if anchor is not None and anchor not in passes.passes:
                plugin = passes.origin[name]
                raise PluginError(f"plugin {plugin}: pass {name} is placed next to unknown pass {anchor!r}")
    while pending:
        progressed = False
        for name, where in list(pending.items()):
            anchors = [a for a in (where.after, where.before) if a is not None]
            if any(a in pending for a in anchors):
                continue  # its neighbour is a placed pass not yet in
            del pending[name]
            progressed = True
            at = _position(name, where, names, stages, passes.origin[name])
            if at is None:
                continue  # this target's pipeline lacks the neighbour
            stage: Stage = where.stage or _stage_at(at, where, names, stages)
            names.insert(at, name)
            stages.insert(at, stage)
            if stage == "hardware":
                hw.add(name)
        if not progressed:
            cycle = ", ".join(sorted(pending))
            raise PluginError(f"pass placements form a cycle: {cycle}")
    return Pipeline(tuple(names), frozenset(hw), tuple(stages))


def _position(name: str, where: Placement, names: list[str], stages: list[Stage], plugin: str) -> int | None:
    if where.stage == "canonical":
        return next((i for i, s in enumerate(stages) if s == "hardware"), len(names))
    if where.stage == "hardware":
        return len(names)
    after = max((i for i, n in enumerate(names) if n == where.after), default=None) if where.after else None
    before = names.index(where.before) if where.before in names else None
    if (where.after and after is None) or (where.before and before is None):
        return None
    if after is not None and before is not None and after >= before:
        raise PluginError(
            f"plugin {plugin}: pass {name} cannot run after {where.after} and before {where.before}: "
            f"{where.after} comes later in the pipeline"
        )
    return after + 1 if after is not None else before


def _stage_at(at: int, where: Placement, names: list[str], stages: list[Stage]) -> Stage:
    """A pass placed next to a hardware pass is one too (``--no-hw-passes`` drops it with its neighbour)."""
    if where.after is not None:
        return stages[at - 1]
    return stages[at] if at < len(stages) else "hardware"
