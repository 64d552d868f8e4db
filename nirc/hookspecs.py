"""The hooks a nirc plugin implements; built-ins implement them the same way.

Hooks receive a registry to call (``registry.add_pass(...)``) rather than
returning lists, so a plugin can register several things and a duplicate name is
reported against the plugin that caused it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from nirc.registry import PassRegistry, TargetRegistry

PROJECT = "nirc"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def nirc_register_passes(registry: PassRegistry) -> None:
    """Register pass classes.

    Args:
        registry: call ``registry.add_pass(PassClass)`` for each pass; the class's
            ``name`` must be unique across all plugins. ``add_pass(PassClass, after="fuse-batchnorm")``
            (or ``before=...``, or ``stage="canonical"|"hardware"``) also puts the pass into every
            target's default pipeline at that place (see :class:`nirc.registry.Placement`).
    """


@hookspec
def nirc_register_targets(registry: TargetRegistry) -> None:
    """Register targets.

    Args:
        registry: call ``registry.add_target(target)`` with a :class:`nirc.target.Target`;
            its name and aliases must be unique across all plugins.
    """
