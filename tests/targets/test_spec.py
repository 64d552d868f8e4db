from __future__ import annotations

import pytest

from nirc.errors import TargetError
from nirc.plugin import load_registry
from nirc.target import KIB, MIB, Target


def test_reference_target() -> None:
    t = load_registry().get_target("ethos-u65")
    assert t.name == "ethos-u65-256" and t.macs == 256
    assert (t.system_config, t.memory_mode) == ("Ethos_U65_High_End", "Dedicated_Sram_384KB")
    assert t.arena_cache_bytes == 384 * KIB and t.platform_memory_bytes == 32 * MIB


def test_all_vela_accelerator_configs_present() -> None:
    from ethosu.vela.architecture_features import Accelerator

    names = set(load_registry().targets)
    assert names == set(Accelerator.member_list())


def test_targets_name_real_vela_ini_sections() -> None:
    import configparser
    from pathlib import Path

    import ethosu

    ini = configparser.ConfigParser()
    ini.read(Path(ethosu.__path__[0]) / "config_files" / "Arm" / "vela.ini")
    for t in load_registry().targets.values():
        assert f"System_Config.{t.system_config}" in ini, t.name
        assert f"Memory_Mode.{t.memory_mode}" in ini, t.name


def test_invalid_target_rejected() -> None:
    with pytest.raises(TargetError, match="macs must be positive"):
        Target(
            name="bad", macs=0, brick_channels=16, ofm_block_depth=8, accelerator_config="x",
            system_config="y", memory_mode="z", arena_cache_bytes=None, platform_memory_bytes=None, platform="p",
        )
