"""Ordinary mistakes and ordinary shell use end in one line and a documented exit code (issue 21).

Each test is one item of the issue: it ran into "internal error" (exit 70), a misleading
message or a silent surprise before.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from nirc_testing import parse
from onnx import numpy_helper

from nirc.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny_cnn.onnx"
NIRC = [sys.executable, "-m", "nirc.cli"]


def _fail(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert "internal error" not in err and "Traceback" not in err
    return code, err.strip()


# -- item 1: ordinary mistakes are not internal errors ------------------------------------------


def test_outdir_naming_a_file_fails_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    existing = tmp_path / "model.out"
    existing.write_text("keep me")
    started = time.perf_counter()
    code, err = _fail(["optimize", str(EXAMPLE), "-o", str(existing)], capsys)
    assert code == 2 and err.count("\n") == 0
    assert str(existing) in err and "not a directory" in err
    assert time.perf_counter() - started < 5  # rejected up front, not after the pipeline
    assert existing.read_text() == "keep me"


def test_unwritable_output_location_names_outdir_not_staging(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = _fail(["optimize", str(EXAMPLE), "-o", str(blocker / "out")], capsys)
    assert code == 2 and str(blocker / "out") in err and ".out." not in err
    if Path("/sys/fs").is_dir():
        # Read-only even for root (sysfs), so the test means the same under any user.
        code, err = _fail(["optimize", str(EXAMPLE), "-o", "/sys/nirc-out"], capsys)
        assert code == 2 and "/sys/nirc-out" in err and "cannot write" in err and ".nirc-out." not in err


def test_convert_and_dump_ir_output_problems_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = _fail(["convert", str(EXAMPLE), "-o", str(blocker / "x.tflite"), "--dtype", "float32"], capsys)
    assert code == 2 and str(blocker / "x.tflite") in err
    code, err = _fail(["convert", str(EXAMPLE), "-o", str(tmp_path), "--dtype", "float32"], capsys)
    assert code == 2 and "directory" in err
    argv = ["optimize", str(EXAMPLE), "-o", str(tmp_path / "o"), "--dump-ir", str(blocker / "ir"), "--no-compile"]
    code, err = _fail(argv, capsys)
    assert code == 2 and "--dump-ir" in err and not (tmp_path / "o").exists()


def test_missing_external_data_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = onnx.load(str(EXAMPLE))
    path = tmp_path / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="ext.weights", size_threshold=0)
    (tmp_path / "ext.weights").unlink()
    code, err = _fail(["analyze", str(path), "--no-cycles"], capsys)
    assert code == 2 and "ext.weights" in err and "not found" in err


def test_validate_with_swapped_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    assert main(["-q", "optimize", str(EXAMPLE), "-o", str(out), "--validate", "none"]) == 0
    vela, int8 = out / "tiny_cnn_vela.tflite", out / "tiny_cnn_int8.tflite"
    code, err = _fail(["validate", str(int8), str(vela)], capsys)
    assert code == 2 and "swapped" in err
    code, err = _fail(["validate", str(vela), str(out / "report.json")], capsys)
    assert code == 2 and "not a TFLite file" in err


# -- item 2: no staging left behind by SIGTERM ----------------------------------------------------


def _leftovers(*dirs: Path) -> list[str]:
    return sorted(p.name for d in dirs if d.is_dir() for p in d.iterdir() if "nirc-" in p.name)


def test_sigterm_leaves_no_staging_or_scratch(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    parent = tmp_path / "parent"
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = subprocess.Popen(
        [*NIRC, "optimize", str(EXAMPLE), "-o", str(parent / "out")], stderr=subprocess.PIPE, text=True, env=env
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "compiling with Vela" in line:
            time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM, rest
    assert "SIGTERM" in rest and "Traceback" not in rest
    assert not (parent / "out").exists()
    assert _leftovers(parent, scratch) == []


def test_stale_staging_of_a_killed_run_is_removed(tmp_path: Path) -> None:
    """SIGKILL cannot be caught: the next run removes what a dead process left."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.nirc-{dead.pid}-abc123"
    (stale / "vela").mkdir(parents=True)
    mine = tmp_path / f".out.nirc-{os.getpid()}-live"  # a live owner's directory stays
    mine.mkdir()
    assert main(["-q", "optimize", str(EXAMPLE), "-o", str(tmp_path / "out"), "--no-compile"]) == 0
    assert not stale.exists() and mine.exists()


# -- item 3: NaN weights are the model's fault, and analyze says so too -------------------------


def _nan_model(path: Path) -> str:
    model = onnx.load(str(EXAMPLE))
    tensor = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    values = numpy_helper.to_array(tensor).copy()
    values.flat[3] = np.nan
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    onnx.save(model, str(path))
    return tensor.name


@pytest.mark.parametrize("command", ["analyze", "optimize"])
def test_nan_weights_name_the_tensor(tmp_path: Path, command: str) -> None:
    path = tmp_path / "nan.onnx"
    name = _nan_model(path)
    run = subprocess.run([*NIRC, command, str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [run.stderr.strip()]  # one line, no logger line before it
    assert f"'{name}'" in run.stderr and "calibration data" in run.stderr and "not the calibration" in run.stderr


# -- item 4: a text file named .npy -----------------------------------------------------------------


def test_text_file_as_npy_is_not_called_pickled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calib = tmp_path / "x.npy"
    calib.write_text("0.1 0.2 0.3\n")
    code, err = _fail(["convert", str(EXAMPLE), "-o", str(tmp_path / "t.tflite"), "--calib", str(calib)], capsys)
    assert code == 2 and "not an .npy file" in err
    assert "pickle" not in err.lower()
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    code, err = _fail(["convert", str(EXAMPLE), "-o", str(tmp_path / "t.tflite"), "--calib", str(objects)], capsys)
    assert code == 2 and "allow_pickle" not in err and "unsafe" not in err and "does not load" in err


# -- item 5: --input-shape only fixes dynamic dims --------------------------------------------------


def test_input_shape_cannot_change_static_dims(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _fail(["analyze", str(EXAMPLE), "--input-shape", "1,3,64,64", "--no-cycles"], capsys)
    assert code == 2 and "static dim 2 from 32 to 64" in err
    assert main(["analyze", str(EXAMPLE), "--input-shape", "input=1,3,32,32", "--no-cycles", "--json"]) == 0
    dynamic = tmp_path / "dyn.onnx"
    text = """
    <ir_version: 9, opset_import: ["" : 18]>
    g (float[N,3,8,8] x) => (float[N,4,8,8] y) { y = Conv <pads = [1,1,1,1]> (x, w) }
    """
    onnx.save(parse(text, w=np.ones((4, 3, 3, 3), np.float32)), str(dynamic))
    capsys.readouterr()
    assert main(["analyze", str(dynamic), "--input-shape", "1,3,8,8", "--no-cycles", "--json"]) == 0
    code, err = _fail(["analyze", str(dynamic), "--input-shape", "1,3,9,8", "--no-cycles"], capsys)
    assert code == 2 and "static dim 2 from 8 to 9" in err


# -- item 6: global options on either side of the subcommand -----------------------------------------


def test_global_options_on_both_sides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for argv in (["-q", "passes"], ["passes", "-q"], ["--debug", "passes"], ["passes", "--debug"]):
        args = parser.parse_args(argv)
        assert args.quiet or args.debug
    args = parser.parse_args(["--debug", "optimize", "m.onnx", "-q"])
    assert args.debug and args.quiet  # the subcommand's copy does not reset the global one
    assert main(["-q", "optimize", str(EXAMPLE), "-o", str(tmp_path / "a"), "--no-compile"]) == 0
    assert main(["optimize", str(EXAMPLE), "-o", str(tmp_path / "b"), "--no-compile", "-q", "--debug"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "nirc: running" not in captured.err


# -- item 7: help says the defaults, errors list what is valid --------------------------------------


def test_help_states_defaults_and_every_option_has_help() -> None:
    parser = build_parser()
    assert "ethos-u65-256" in parser.format_help() and "Dedicated_Sram_384KB" in parser.format_help()
    subparsers = next(a for a in parser._actions if a.choices and "optimize" in a.choices)
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, f"nirc {name} {action.option_strings or action.dest} has no help"
        text = sub.format_help()
        if "--target" in text:
            assert "default: ethos-u65 = ethos-u65-256" in " ".join(text.split()), name


def test_unknown_target_lists_aliases_in_natural_order(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _fail(["analyze", str(EXAMPLE), "--target", "ethos-u99"], capsys)
    assert code == 4
    assert "ethos-u65 (= ethos-u65-256)" in err
    assert err.index(" ethos-u85-128,") < err.index(" ethos-u85-256,") < err.index(" ethos-u85-1024,")


def test_readme_documents_fvp_fallback() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "falls back to `sim`" in readme


# -- the broken pipe ---------------------------------------------------------------------------------


def test_closed_stdout_pipe_ends_quietly() -> None:
    """`nirc passes | head -3`: the reader is gone before nirc writes (it is still loading plugins)."""
    proc = subprocess.Popen([*NIRC, "passes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert err == ""


# -- item 12: permissions and packaging metadata -------------------------------------------------------


def test_new_output_directories_follow_the_umask(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["-q", "optimize", str(EXAMPLE), "-o", str(out), "--no-compile"]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    report = json.loads((out / "report.json").read_text())
    assert report["target"]["name"] == "ethos-u65-256"


def test_license_is_an_spdx_string() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"


# -- item 9: the summary's numbers add up and say what they measure -------------------------------


def test_summary_peak_is_the_npu_figure_and_pass_times_add_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    # Without hardware passes: stage-inputs' SRAM copy of the image (kept by Vela's estimate) adds back
    # the 8 KiB fuse-batchnorm frees, so with it the peak is 32,768 B both before and after.
    assert main(["optimize", str(EXAMPLE), "-o", str(out), "--no-compile", "--no-hw-passes"]) == 0
    text = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    memory = report["memory"]
    assert f"peak activations {memory['peak_bytes_before']:,} -> {memory['peak_bytes']:,} B (Vela's" in text
    assert memory["peak_bytes_before"] != memory["peak_bytes"]  # fuse-batchnorm removed buffers
    lines = [line for line in text.splitlines() if line.startswith("  ") and " ms" in line]
    listed_ms = sum(float(line.split(" ms")[0].split()[-1]) for line in lines)
    total_ms = sum(r["seconds"] for r in report["passes"]) * 1000
    unchanged = sum(not r["changed"] for r in report["passes"])
    assert f"{unchanged} passes changed nothing" in text
    assert abs(listed_ms - total_ms) < 0.1 * len(report["passes"]) + 1
