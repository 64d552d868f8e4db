"""nirc's built-in passes, registered through the same hook a plugin uses."""

from __future__ import annotations

from nirc.passes.eliminate_dead_code import EliminateDeadCodePass
from nirc.passes.eliminate_identity import EliminateIdentityPass
from nirc.passes.fuse_batchnorm import FuseBatchnormPass

from nirc.hookspecs import hookimpl
from nirc.plugin import PassRegistry

BUILTIN_PASSES = (EliminateIdentityPass, FuseBatchnormPass, EliminateDeadCodePass)


@hookimpl
def nirc_register_passes(registry: PassRegistry) -> None:
    for pass_cls in BUILTIN_PASSES:
        registry.add_pass(pass_cls)
