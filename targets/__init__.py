"""nirc's built-in targets, registered through the same hook a plugin uses."""

from __future__ import annotations

from nirc.targets.ethos_u.spec import ETHOS_U_TARGETS

from nirc.hookspecs import hookimpl
from nirc.plugin import TargetRegistry


@hookimpl
def nirc_register_targets(registry: TargetRegistry) -> None:
    for target in ETHOS_U_TARGETS:
        registry.add_target(target)
