"""Project-wide rules that are easy to break silently."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from nirc.plugin import load_registry

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = load_registry()
BUILTIN = {n: c for n, c in REGISTRY.passes.items() if REGISTRY.pass_registry.origin[n] == "builtin_passes"}


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_pass_has_module_test_and_docstring(name: str) -> None:
    cls = BUILTIN[name]
    module = Path(inspect.getfile(cls))
    assert module.parent == ROOT / "passes", f"{name} lives outside passes/"
    assert (ROOT / "tests" / "passes" / f"test_{module.stem}.py").exists(), f"no tests/passes/test_{module.stem}.py"
    assert cls.description(), f"{name} has no docstring"
    assert name == name.lower() and " " not in name and "_" not in name, "pass names are kebab-case"


def test_every_target_pipeline_names_registered_passes() -> None:
    for target in REGISTRY.targets.values():
        for name in target.default_pipeline:
            REGISTRY.get_pass(name)


def test_passes_and_targets_load_as_nirc_subpackages() -> None:
    import nirc.passes
    import nirc.targets

    assert Path(nirc.passes.__file__).parent == ROOT / "passes"
    assert Path(nirc.targets.__file__).parent == ROOT / "targets"
