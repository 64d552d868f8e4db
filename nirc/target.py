"""Targets are data: what a pass or the backend needs to know about an NPU.

A target never carries behaviour, so third-party plugins can add one with a few
numbers, and the analysis, passes and Vela driver read the same facts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nirc.errors import TargetError

MIB = 1024 * 1024
KIB = 1024


@dataclass(frozen=True)
class Target:
    """An accelerator configuration plus the system it is deployed on.

    Attributes:
        name: canonical CLI name, e.g. ``ethos-u65-256``.
        macs: MACs per cycle of the NPU.
        brick_channels: channel granule of feature-map storage; a tensor whose
            channel count is not a multiple wastes SRAM and cycles.
        ofm_block_depth: output-channel micro-block the MAC array processes at once.
        accelerator_config: Vela ``--accelerator-config``.
        system_config: Vela ``--system-config`` (section of vela.ini).
        memory_mode: Vela ``--memory-mode`` (section of vela.ini).
        arena_cache_bytes: SRAM available to feature maps; activations beyond it spill.
        platform_memory_bytes: weights + arena limit of the reference platform, or
            None when unknown (then platform fit is reported as unknown).
        platform: name of the reference platform, for messages.
        aliases: other names that resolve to this target (``ethos-u65``).
        default_pipeline: pass names ``nirc optimize`` runs when ``--passes`` is absent.
        hw_passes: the subset of ``default_pipeline`` that ``--no-hw-passes`` drops.
    """

    name: str
    macs: int
    brick_channels: int
    ofm_block_depth: int
    accelerator_config: str
    system_config: str
    memory_mode: str
    arena_cache_bytes: int | None
    platform_memory_bytes: int | None
    platform: str
    aliases: tuple[str, ...] = ()
    default_pipeline: tuple[str, ...] = ()
    hw_passes: tuple[str, ...] = ()
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip().lower():
            raise TargetError(f"target name must be lower-case and non-empty, got {self.name!r}")
        for attr in ("macs", "brick_channels", "ofm_block_depth"):
            value = getattr(self, attr)
            if value <= 0:
                raise TargetError(f"target {self.name}: {attr} must be positive, got {value}")
        if self.arena_cache_bytes is not None and self.arena_cache_bytes <= 0:
            raise TargetError(f"target {self.name}: arena_cache_bytes must be positive")
        unknown = set(self.hw_passes) - set(self.default_pipeline)
        if unknown:
            raise TargetError(f"target {self.name}: hw_passes not in default_pipeline: {sorted(unknown)}")

    def misaligned(self, channels: int) -> bool:
        """Whether a channel count leaves a partly filled brick."""
        return channels % self.brick_channels != 0
