"""Plugin loading: entry points in group ``nirc`` → pluggy → one registry.

nirc's own passes and targets are entry points of the ``nirc`` distribution in
that same group, so a third-party plugin goes through exactly the code path the
built-ins do. Set ``NIRC_DISABLE_PLUGINS=name,name`` to skip entry points by name.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from importlib import import_module, metadata
from types import ModuleType
from typing import Any

import pluggy

from nirc import hookspecs
from nirc.errors import NircError, PluginError
from nirc.registry import PassRegistry as PassRegistry
from nirc.registry import Placement as Placement
from nirc.registry import Registry as Registry
from nirc.registry import TargetRegistry as TargetRegistry

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "nirc"
DISABLE_ENV = "NIRC_DISABLE_PLUGINS"


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
