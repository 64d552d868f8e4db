"""The numbers the analytical model needs about a target: MAC array geometry and memory system.

Why read ``vela.ini``: clock, bandwidth and burst length belong to the *system*
configuration a Target names (``system_config`` / ``memory_mode``), and Vela
ships the reference file. Reading the same file Vela reads keeps the
analytical model and the oracle on one set of numbers.

Geometry (from the Ethos-U technical reference manuals, as Vela models it): the
MAC array computes an output micro-block of ``ub_h x ub_w x ub_d`` elements,
each step consuming 8 input channels, so ``macs = ub_h * ub_w * ub_d * 8``;
feature maps are stored in 16-channel bricks; each AXI port moves 8 bytes per
cycle on the U55 and 16 on the U65/U85, scaled by the port's clock scale.
"""

from __future__ import annotations

import configparser
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from nirc.errors import TargetError
from nirc.target import Target

IFM_UBLOCK_DEPTH = 8
"""Input channels the MAC array consumes per step."""

_PORT_BYTES = {"ethos-u55": 8, "ethos-u65": 16, "ethos-u85": 16}


@dataclass(frozen=True)
class Hardware:
    """What the analytical model knows about one target.

    Attributes:
        macs: MACs per cycle.
        ublock: output micro-block (height, width, depth).
        brick: channel granule of feature-map storage.
        clock_hz: core clock.
        sram_bw, dram_bw, const_bw: bytes per cycle of the SRAM, DRAM and weight memory.
        dram_burst: DRAM burst length in bytes.
        fm_in_dram: whether the arena (graph inputs/outputs, spilled tensors) lives in DRAM.
        cache_bytes: SRAM that can hold feature maps and weight buffers.
    """

    macs: int
    ublock: tuple[int, int, int]
    brick: int
    clock_hz: float
    sram_bw: float
    dram_bw: float
    const_bw: float
    dram_burst: int
    fm_in_dram: bool
    cache_bytes: int


def _vela_ini() -> Path:
    spec = importlib.util.find_spec("ethosu")
    if spec is None or not spec.submodule_search_locations:
        raise TargetError("ethos-u-vela is not installed: cannot read vela.ini")
    path = Path(next(iter(spec.submodule_search_locations))) / "config_files" / "Arm" / "vela.ini"
    if not path.is_file():
        raise TargetError(f"vela.ini not found at {path}")
    return path


def _section(config: configparser.ConfigParser, name: str) -> dict[str, str]:
    """A section with Vela's ``inherit=`` resolved (child keys win)."""
    if not config.has_section(name):
        raise TargetError(f"vela.ini has no section [{name}]")
    own = dict(config.items(name))
    parent = own.pop("inherit", None)
    return {**_section(config, parent), **own} if parent else own


def _ublock(target: Target) -> tuple[int, int, int]:
    depth = target.ofm_block_depth
    spatial = max(1, target.macs // (depth * IFM_UBLOCK_DEPTH))
    height = 2 if spatial >= 4 else 1
    return height, max(1, spatial // height), depth


def _family(target: Target) -> str:
    for family in _PORT_BYTES:
        if target.accelerator_config.startswith(family):
            return family
    raise TargetError(f"target {target.name}: no analytical memory model for {target.accelerator_config}")


@functools.lru_cache(maxsize=32)
def hardware(target: Target) -> Hardware:
    """The :class:`Hardware` of ``target``, from its geometry and Vela's ``vela.ini``."""
    config = configparser.ConfigParser()  # lower-cases keys: look them up in lower case
    config.read(_vela_ini())
    system = _section(config, f"System_Config.{target.system_config}")
    memory = _section(config, f"Memory_Mode.{target.memory_mode}")
    port = _PORT_BYTES[_family(target)]
    ports = {"axi0": system.get("axi0_port", "Sram"), "axi1": system.get("axi1_port", "Dram")}

    def bandwidth(area: str) -> float:
        scale = float(system.get(f"{area.lower()}_clock_scale", "1.0"))
        return port * int(system.get(f"{area.lower()}_ports_used", "1")) * scale

    def area_of(axi: str) -> str:
        return ports[axi.lower()]

    arena = area_of(memory.get("arena_mem_area", "Axi0"))
    const = area_of(memory.get("const_mem_area", "Axi1"))
    dram_area = ports["axi1"] if ports["axi1"] != "Sram" else "Sram"
    cache = int(memory.get("arena_cache_size", str(target.arena_cache_bytes or 4 * 1024 * 1024)))
    return Hardware(
        macs=target.macs,
        ublock=_ublock(target),
        brick=target.brick_channels,
        clock_hz=float(system.get("core_clock", "1e9")),
        sram_bw=bandwidth("Sram"),
        dram_bw=bandwidth(dram_area),
        const_bw=bandwidth(const),
        dram_burst=int(system.get(f"{dram_area.lower()}_burst_length", "128")),
        fm_in_dram=arena != "Sram",
        cache_bytes=target.arena_cache_bytes or cache,
    )
