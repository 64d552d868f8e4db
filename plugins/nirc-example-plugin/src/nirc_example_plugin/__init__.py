"""Example nirc plugin: collapse Relu(Relu(x)) and similar idempotent chains."""

from __future__ import annotations

from dataclasses import dataclass

from nirc.hookspecs import hookimpl
from nirc.ir import IRModel
from nirc.pass_base import Pass, PassContext
from nirc.plugin import PassRegistry


@dataclass(frozen=True)
class CollapseIdempotentActivationsPass(Pass):
    """Replace Relu(Relu(x)) by Relu(x): Relu is idempotent, so the second one is a no-op."""

    name = "collapse-idempotent-activations"
    exact = True

    def run(self, model: IRModel, ctx: PassContext) -> bool:
        changed = False
        while True:  # a chain of n Relus needs n-1 rounds; each round sees a fresh view
            chains = list(model.view().chains(["Relu", "Relu"]))
            if not chains:
                return changed
            first, second = chains[0]
            out = second.outputs[0]
            second.inputs.clear()
            second.outputs.clear()
            first.outputs[0] = out
            model.graph.cleanup()
            ctx.count("collapsed")
            changed = True


@hookimpl
def nirc_register_passes(registry: PassRegistry) -> None:
    # Joins every target's default pipeline right after the activations are canonical
    # (Clip(0, inf) has become Relu there), so `nirc optimize` runs it without --passes.
    registry.add_pass(CollapseIdempotentActivationsPass, after="canonicalize-activations")
