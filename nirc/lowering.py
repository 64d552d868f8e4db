"""Which passes run, and running them: the part of the pipeline analyses need too.

Below :mod:`nirc.pipeline` so that :mod:`nirc.analysis` (which costs a model as nirc
would lower it) can use it without importing the pipeline that imports analysis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nirc.errors import PassError
from nirc.ir import IRModel
from nirc.options import ChannelRounding
from nirc.pass_base import Pass, PassContext
from nirc.pass_manager import PassManager, PassRecord
from nirc.quant import CalibrationSet
from nirc.registry import Registry
from nirc.target import Target

if TYPE_CHECKING:
    from nirc.accuracy import AccuracyGuard


def select_passes(
    registry: Registry,
    target: Target,
    *,
    passes: Sequence[str] | None = None,
    skip: Sequence[str] = (),
    no_hw_passes: bool = False,
    channel_rounding: ChannelRounding = "pad",
    pass_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Pass]:
    """Explicit ``--passes`` win; otherwise the target's pipeline with placed plugin passes, minus skips.

    ``channel_rounding``: ``pad`` keeps the pipeline's exact ``pad-channels``; ``off``
    drops it; ``prune`` (lossy, opt-in) runs ``prune-channels`` before it.
    ``pass_options`` maps a pass name to keyword options of its constructor.
    """
    pipeline = registry.pipeline(target)  # the target's own, plus placed plugin passes
    names = list(passes) if passes is not None else list(pipeline.names)
    if passes is None and channel_rounding == "prune" and not no_hw_passes:
        at = names.index("pad-channels") if "pad-channels" in names else len(names)
        names.insert(at, "prune-channels")
    if channel_rounding == "off":
        names = [n for n in names if n != "pad-channels"]
    for name in (*names, *skip, *(pass_options or {})):
        registry.get_pass(name)  # unknown names fail before any work
    if no_hw_passes:
        names = [n for n in names if n not in pipeline.hw_passes]
    names = [n for n in names if n not in set(skip)]
    return [_construct(registry, name, (pass_options or {}).get(name, {})) for name in names]


def _construct(registry: Registry, name: str, options: Mapping[str, Any]) -> Pass:
    try:
        return registry.get_pass(name)(**options)
    except (TypeError, ValueError) as exc:
        raise PassError(f"pass {name}: bad options {dict(options)}: {exc}") from exc


def lower_canonical(model: IRModel, target: Target, registry: Registry | None = None) -> IRModel:
    """A copy of ``model`` after the target's canonical (non-hardware) passes: what the emitter sees.

    Analyses that cost or place layers use it, since e.g. an unfolded BatchNormalization
    would cost more than the conv it folds into.
    """
    if registry is None:
        from nirc.plugin import load_registry

        registry = load_registry()
    lowered = model.copy()
    canonical = select_passes(registry, target, no_hw_passes=True)
    PassManager(canonical).run(lowered, PassContext(target=target))
    return lowered


def run_passes(
    model: IRModel,
    target: Target,
    pass_list: Sequence[Pass],
    *,
    verify: bool = False,
    dump_ir: Path | None = None,
    calibration: CalibrationSet | None = None,
    accuracy: AccuracyGuard | None = None,
) -> list[PassRecord]:
    manager = PassManager(pass_list, verify=verify, dump_ir=dump_ir)
    return manager.run(model, PassContext(target=target, calibration=calibration, accuracy=accuracy))
