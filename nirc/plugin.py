"""Plugin loading: entry points in group ``nirc`` → pluggy → one registry.

nirc's own passes and targets are entry points of the ``nirc`` distribution in
that same group, so a third-party plugin goes through exactly the code path the
built-ins do. Set ``NIRC_DISABLE_PLUGINS=name,name`` to skip entry points by name.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import import_module, metadata
from types import ModuleType
from typing import Any

import pluggy

from nirc import hookspecs
from nirc.errors import NircError, PassError, PluginError, TargetError
from nirc.pass_base import Pass
from nirc.target import Target

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "nirc"
DISABLE_ENV = "NIRC_DISABLE_PLUGINS"


@dataclass
class PassRegistry:
    passes: dict[str, type[Pass]] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    current_plugin: str = "<unknown>"

    def add_pass(self, pass_cls: type[Pass]) -> None:
        name = getattr(pass_cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {self.current_plugin}: pass class {pass_cls.__name__} has no name")
        if not isinstance(getattr(pass_cls, "exact", None), bool):
            raise PluginError(f"plugin {self.current_plugin}: pass {name} must set exact = True or False")
        if name in self.passes:
            raise PluginError(
                f"plugin {self.current_plugin}: pass '{name}' is already registered by {self.origin[name]}"
            )
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


def _entry_point_plugins(disabled: set[str]) -> list[tuple[str, ModuleType | object]]:
    plugins: list[tuple[str, ModuleType | object]] = []
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value)):
        if ep.name in disabled:
            logger.info("plugin %s disabled by %s", ep.name, DISABLE_ENV)
            continue
        try:
            plugins.append((ep.name, ep.load()))
        except Exception as exc:
            raise PluginError(f"plugin {ep.name} ({ep.value}) failed to import: {exc}") from exc
    return plugins


def load_registry(extra_plugins: Iterable[tuple[str, object]] = (), *, entry_points: bool = True) -> Registry:
    """Discover plugins and collect what they register.

    Args:
        extra_plugins: ``(name, module_or_object)`` pairs registered after the
            entry points, for embedding applications and tests.
        entry_points: False loads only ``extra_plugins`` plus nirc's built-ins.
    """
    disabled = {p.strip() for p in os.environ.get(DISABLE_ENV, "").split(",") if p.strip()}
    if entry_points:
        plugins = _entry_point_plugins(disabled)
    else:
        builtins = (("builtin_passes", "nirc.passes"), ("builtin_targets", "nirc.targets"))
        plugins = [(name, import_module(module)) for name, module in builtins]
    plugins.extend(extra_plugins)

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name, plugin in plugins:
        try:
            pm.register(plugin, name=name)
        except ValueError as exc:
            raise PluginError(f"plugin {name}: {exc}") from exc
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {pm.get_name(exc.plugin)}: {exc}") from exc

    pass_registry = PassRegistry()
    target_registry = TargetRegistry()
    # Call each implementation ourselves, in registration order, so a failure
    # names the plugin that raised it instead of surfacing a bare traceback.
    _call_each(pm, "nirc_register_passes", pass_registry, registry=pass_registry)
    _call_each(pm, "nirc_register_targets", target_registry, registry=target_registry)
    names = tuple(name for name, _ in plugins)
    return Registry(pass_registry, target_registry, names)


def _call_each(pm: pluggy.PluginManager, hook_name: str, holder: Any, **kwargs: Any) -> None:
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():  # registration order (pluggy itself would call LIFO)
        holder.current_plugin = impl.plugin_name
        try:
            impl.function(**kwargs)
        except NircError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin {impl.plugin_name} failed in {hook_name}: {exc}") from exc
