from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from nirc.errors import PluginError
from nirc.hookspecs import hookimpl
from nirc.plugin import PassRegistry, load_registry
from nirc.target import Target

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_SRC = ROOT / "plugins" / "nirc-example-plugin" / "src"


def _fake_distribution(site: Path, entry_points: str) -> None:
    """A dist-info directory is what `pip install` leaves; importlib.metadata reads it from sys.path."""
    info = site / "nirc_example_plugin-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nirc-example-plugin\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[nirc]\n{entry_points}\n")


def _nirc(site: Path, *args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(EXAMPLE_SRC), env.get("PYTHONPATH", "")])
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "nirc.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_example_plugin_found_through_entry_point(tmp_path: Path) -> None:
    _fake_distribution(tmp_path / "site", "example = nirc_example_plugin")
    listed = _nirc(tmp_path / "site", "passes")
    assert listed.returncode == 0, listed.stderr
    line = next(x for x in listed.stdout.splitlines() if x.startswith("collapse-idempotent-activations"))
    assert "exact" in line and "example" in line
    assert "fuse-batchnorm" in listed.stdout  # built-ins still there

    model = tmp_path / "relus.onnx"
    import onnx.parser

    onnx.save(
        onnx.parser.parse_model(
            '<ir_version: 9, opset_import: ["" : 18]> g (float[1,4] x) => (float[1,4] y) '
            "{ a = Relu (x)\n b = Relu (a)\n y = Relu (b) }"
        ),
        str(model),
    )
    ran = _nirc(
        tmp_path / "site", "optimize", str(model), "--passes", "collapse-idempotent-activations",
        "--verify", "-o", str(tmp_path / "out"),
    )
    assert ran.returncode == 0, ran.stderr
    optimized = onnx.load(str(tmp_path / "out" / "relus_opt.onnx"))
    assert [n.op_type for n in optimized.graph.node] == ["Relu"]

    disabled = _nirc(tmp_path / "site", "passes", env_extra={"NIRC_DISABLE_PLUGINS": "example"})
    assert "collapse-idempotent-activations" not in disabled.stdout


def test_plugin_that_fails_to_import_is_named(tmp_path: Path) -> None:
    _fake_distribution(tmp_path / "site", "broken = nirc_no_such_module_xyz")
    result = _nirc(tmp_path / "site", "passes")
    assert result.returncode == 7
    assert result.stderr.strip().startswith("nirc: error: plugin broken")
    assert "Traceback" not in result.stderr


def test_plugin_raising_during_registration_is_named() -> None:
    @hookimpl
    def nirc_register_passes(registry: PassRegistry) -> None:
        raise RuntimeError("cannot find my config")

    with pytest.raises(PluginError, match="plugin faulty failed in nirc_register_passes: cannot find my config"):
        load_registry([("faulty", SimpleNamespace(nirc_register_passes=nirc_register_passes))])


def test_duplicate_pass_name_is_an_error() -> None:
    from nirc.passes.fuse_batchnorm import FuseBatchnormPass

    @hookimpl
    def nirc_register_passes(registry: PassRegistry) -> None:
        registry.add_pass(FuseBatchnormPass)

    with pytest.raises(PluginError, match="plugin copycat: pass 'fuse-batchnorm' is already registered by builtin"):
        load_registry([("copycat", SimpleNamespace(nirc_register_passes=nirc_register_passes))])


def test_misspelled_hook_is_caught() -> None:
    @hookimpl
    def nirc_register_pases(registry: PassRegistry) -> None:
        pass

    with pytest.raises(PluginError, match="plugin typo"):
        load_registry([("typo", SimpleNamespace(nirc_register_pases=nirc_register_pases))])


def test_plugin_can_add_a_target() -> None:
    mine = Target(
        name="my-npu", macs=64, brick_channels=8, ofm_block_depth=8, accelerator_config="ethos-u55-64",
        system_config="Ethos_U55_High_End_Embedded", memory_mode="Shared_Sram", arena_cache_bytes=None,
        platform_memory_bytes=None, platform="custom board",
    )

    @hookimpl
    def nirc_register_targets(registry: object) -> None:
        registry.add_target(mine)  # type: ignore[attr-defined]

    registry = load_registry([("board", SimpleNamespace(nirc_register_targets=nirc_register_targets))])
    assert registry.get_target("my-npu") is mine
    assert registry.target_registry.origin["my-npu"] == "board"


# -- pass placement (issue 21 item 10) ----------------------------------------------------------


def _placing(**where: object) -> SimpleNamespace:
    from nirc_example_plugin import CollapseIdempotentActivationsPass

    @hookimpl
    def nirc_register_passes(registry: PassRegistry) -> None:
        registry.add_pass(CollapseIdempotentActivationsPass, **where)  # type: ignore[arg-type]

    return SimpleNamespace(nirc_register_passes=nirc_register_passes)


@pytest.fixture
def example_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE_SRC))


NAME = "collapse-idempotent-activations"


@pytest.mark.usefixtures("example_on_path")
@pytest.mark.parametrize(
    ("where", "neighbours", "stage"),
    [
        ({"after": "canonicalize-activations"}, ("canonicalize-activations", "collapse-reshapes"), "canonical"),
        ({"before": "pad-channels"}, ("substitute-blocks", "pad-channels"), "hardware"),
        ({"after": "fuse-affine"}, ("fuse-affine", "decompose-strided-conv"), "canonical"),  # the last fuse-affine
        ({"stage": "canonical"}, ("equalize-cross-layer", "substitute-blocks"), "canonical"),
        ({"stage": "hardware"}, ("stage-inputs", None), "hardware"),
    ],
)
def test_plugin_pass_joins_the_default_pipeline(
    where: dict[str, str], neighbours: tuple[str, str | None], stage: str
) -> None:
    from nirc.pipeline import select_passes

    registry = load_registry([("placed", _placing(**where))], entry_points=False)
    target = registry.get_target("ethos-u65")
    pipeline = registry.pipeline(target)
    at = pipeline.names.index(NAME)
    assert pipeline.names[at - 1] == neighbours[0]
    assert (pipeline.names[at + 1] if at + 1 < len(pipeline.names) else None) == neighbours[1]
    assert pipeline.stages[at] == stage and (NAME in pipeline.hw_passes) == (stage == "hardware")
    assert len(pipeline.names) == len(target.default_pipeline) + 1
    chosen = [p.name for p in select_passes(registry, target)]
    assert chosen == list(pipeline.names)
    baseline = [p.name for p in select_passes(registry, target, no_hw_passes=True)]
    assert (NAME in baseline) == (stage == "canonical")


@pytest.mark.usefixtures("example_on_path")
def test_a_placement_may_name_another_plugin_pass() -> None:
    from nirc.passes.eliminate_identity import EliminateIdentityPass

    @dataclass(frozen=True)
    class Second(EliminateIdentityPass):
        name = "second-plugin-pass"

    @hookimpl
    def nirc_register_passes(registry: PassRegistry) -> None:
        registry.add_pass(Second, after=NAME)

    registry = load_registry(
        [("second", SimpleNamespace(nirc_register_passes=nirc_register_passes)),
         ("placed", _placing(before="collapse-reshapes"))],
        entry_points=False,
    )
    names = registry.pipeline(registry.get_target("ethos-u65")).names
    assert names.index("second-plugin-pass") == names.index(NAME) + 1 == names.index("collapse-reshapes") - 1


@pytest.mark.usefixtures("example_on_path")
@pytest.mark.parametrize(
    ("where", "message"),
    [
        ({"after": "no-such-pass"}, "unknown pass 'no-such-pass'"),
        ({"after": "pad-channels", "before": "fuse-batchnorm"}, "pad-channels comes later"),
        ({"after": "fuse-batchnorm", "stage": "hardware"}, "not both"),
        ({"stage": "late"}, "unknown stage 'late'"),
    ],
)
def test_bad_placements_name_the_plugin(where: dict[str, str], message: str) -> None:
    with pytest.raises(PluginError, match=f"plugin placed: .*{message}"):
        registry = load_registry([("placed", _placing(**where))], entry_points=False)
        registry.pipeline(registry.get_target("ethos-u65"))


def test_nirc_passes_shows_the_plugin_in_pipeline_order(tmp_path: Path) -> None:
    _fake_distribution(tmp_path / "site", "example = nirc_example_plugin")
    listed = _nirc(tmp_path / "site", "passes", "--target", "ethos-u55")
    assert listed.returncode == 0, listed.stderr
    assert "default pipeline for ethos-u55-128" in listed.stdout
    order = [line.split()[1] for line in listed.stdout.splitlines() if line[:5].strip().endswith(".")]
    at = order.index(NAME)
    assert order[at - 1] == "canonicalize-activations" and order[0] == "fold-constants"
