"""Run Arm Vela on an int8 TFLite file and turn its outputs into one typed result.

Why this module exists: Vela reports what matters for an Ethos-U deployment
(cycles, SRAM/DRAM use, DRAM traffic, which ops fell back to the CPU and why)
across three places -- a summary CSV, a per-layer CSV and free text on stdout
(the CPU-fallback reasons are only ever printed). The rest of nirc wants one
frozen object, so the driver runs Vela, captures everything it prints, and
parses the three sources here and nowhere else.

Facts measured with ethos-u-vela 5.2.0 that shape the code:

* Vela 5 compiles with its C++ core ("Regor"). Regor prints its warnings (the
  CPU-fallback reasons) from C++ straight to file descriptor 1, so capturing
  ``sys.stdout`` is not enough: the in-process runner redirects the real fds.
* ``vela.main`` is reentrant in one process: compiling A, B, then A again gives
  byte-identical outputs. It does reset ``sys.setrecursionlimit(1000)``, which
  the driver undoes.
* Regor *segfaults* (killing the host process) on a flatbuffer that fails its
  schema verifier, e.g. a truncated ``.tflite``, and on some schema-valid but
  nonsensical models. The driver checks the file structurally in Python first,
  which catches truncation; of 120 copies of a valid model with 1-3 random
  bytes changed, 24 were rejected by that check, 88 compiled (the bytes hit
  weight data) and 8 still crashed Regor. ``isolate=True`` runs Vela in a child
  process so that such a crash becomes a :class:`BackendError` instead.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import io
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from nirc.errors import BackendError, ModelLoadError
from nirc.target import Target

NPU_CUSTOM_CODE = "ethos-u"
"""Custom-op code Vela gives each compiled NPU subgraph in the output TFLite."""

_TFLITE_IDENTIFIER = b"TFL3"
_VELA_INI = "Arm/vela.ini"  # resolved by Vela inside its own config_files/ directory

# Vela keeps module-level state and the fd redirection is process-wide: serialise.
_VELA_LOCK = threading.Lock()


@dataclass(frozen=True)
class CpuOp:
    """An operator Vela left for the Cortex-M (TFLite Micro) to run.

    Attributes:
        name: name of the op's first output tensor (how Vela names ops).
        op_type: TFLite builtin name, e.g. ``DEQUANTIZE``.
        reason: Vela's reason, joined into one line.
    """

    name: str
    op_type: str
    reason: str


@dataclass(frozen=True)
class LayerPerf:
    """One row of Vela's per-layer performance table.

    Vela may split an original op into several NPU ops (e.g. a stride-4 conv
    becomes 16 stride-1 convs); each gets its own row with the same ``name``.

    Attributes:
        name: output tensor name of the op.
        original_op: operator type in the input network (``Conv2D``).
        vela_op: Vela's internal operator (``Passthrough`` for CPU ops).
        target: ``NPU`` or ``CPU``.
        op_cycles: estimated cycles of the op (NPU and memory bound combined).
        network_pct: share of the network's cycles, in percent.
        npu_cycles: cycles the MAC/elementwise engine is busy.
        sram_access_cycles: cycles spent on SRAM traffic.
        dram_access_cycles: cycles spent on DRAM traffic.
        mac_count: MACs of the op.
        util_pct: MAC utilisation in percent (0 for ops with no cycles, where Vela says 100).
        staging_bytes: SRAM staging usage while the op runs.
    """

    name: str
    original_op: str
    vela_op: str
    target: str
    op_cycles: int
    network_pct: float
    npu_cycles: int
    sram_access_cycles: int
    dram_access_cycles: int
    mac_count: int
    util_pct: float
    staging_bytes: int


@dataclass(frozen=True)
class VelaResult:
    """What Vela estimated for one compiled model on one target.

    Byte counts are per inference. ``dram_weight_bytes`` is weight traffic read
    from DRAM; on systems that keep weights in flash (the U55 embedded configs)
    it is 0 and the traffic shows in ``flash_weight_bytes``.
    """

    vela_tflite: Path
    inference_time_ms: float
    cycles_total: int
    cycles_npu: int
    sram_used_kib: float
    dram_used_kib: float
    dram_feature_map_read_bytes: int
    dram_feature_map_write_bytes: int
    dram_weight_bytes: int
    flash_weight_bytes: int
    nn_macs: int
    original_weight_bytes: int
    encoded_weight_bytes: int
    core_clock_hz: float
    npu_ops: int
    cpu_ops: int
    cpu_op_list: tuple[CpuOp, ...]
    layers: tuple[LayerPerf, ...]
    vela_version: str
    accelerator_config: str
    system_config: str
    memory_mode: str
    summary_csv: Path = field(compare=False)
    log_path: Path = field(compare=False)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict for the compile report."""
        return {
            "vela_version": self.vela_version,
            "accelerator_config": self.accelerator_config,
            "system_config": self.system_config,
            "memory_mode": self.memory_mode,
            "vela_tflite": str(self.vela_tflite),
            "summary_csv": str(self.summary_csv),
            "log": str(self.log_path),
            "inference_time_ms": self.inference_time_ms,
            "cycles_total": self.cycles_total,
            "cycles_npu": self.cycles_npu,
            "core_clock_hz": self.core_clock_hz,
            "sram_used_kib": self.sram_used_kib,
            "dram_used_kib": self.dram_used_kib,
            "dram_feature_map_read_bytes": self.dram_feature_map_read_bytes,
            "dram_feature_map_write_bytes": self.dram_feature_map_write_bytes,
            "dram_weight_bytes": self.dram_weight_bytes,
            "flash_weight_bytes": self.flash_weight_bytes,
            "nn_macs": self.nn_macs,
            "original_weight_bytes": self.original_weight_bytes,
            "encoded_weight_bytes": self.encoded_weight_bytes,
            "npu_ops": self.npu_ops,
            "cpu_ops": self.cpu_ops,
            "cpu_op_list": [vars(op) for op in self.cpu_op_list],
            "layers": [vars(layer) for layer in self.layers],
        }


@dataclass(frozen=True)
class _VelaRun:
    """Raw outcome of one Vela invocation, before parsing."""

    returncode: int
    log: str
    error: str | None


def compile_with_vela(
    tflite_path: Path,
    target: Target,
    output_dir: Path,
    *,
    optimise: Literal["Performance", "Size"] = "Performance",
    extra_args: Sequence[str] = (),
    isolate: bool = False,
) -> VelaResult:
    """Compile ``tflite_path`` for ``target`` with Vela and parse what it reports.

    Args:
        tflite_path: int8 TFLite flatbuffer.
        target: supplies ``--accelerator-config``, ``--system-config`` and ``--memory-mode``.
        output_dir: where Vela writes ``<name>_vela.tflite``, its CSVs, and the
            captured ``<name>_vela.log``.
        optimise: Vela's ``--optimise`` strategy.
        extra_args: appended to Vela's command line as-is.
        isolate: run Vela in a child Python process. Slower (~0.3 s start-up)
            but survives Regor crashing on a corrupt input; use it for
            TFLite files nirc did not write itself.

    Raises:
        BackendError: the file is missing or not a TFLite flatbuffer, Vela
            failed (with Vela's own message), or its outputs are unreadable.
    """
    tflite_path = Path(tflite_path)
    if tflite_path.suffix == ".tosa":  # nirc.tosa's lift: Vela writes TFLite with one ethos-u op
        _check_tosa(tflite_path)
        extra_args = ("--output-format", "tflite", *extra_args)
    else:
        _check_tflite(tflite_path)
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = tflite_path.stem
    vela_tflite = output_dir / f"{stem}_vela.tflite"
    summary_csv = output_dir / f"{stem}_summary_{target.system_config}.csv"
    per_layer_csv = output_dir / f"{stem}_per-layer.csv"
    log_path = output_dir / f"{stem}_vela.log"
    for stale in (vela_tflite, summary_csv, per_layer_csv, log_path):
        stale.unlink(missing_ok=True)  # never parse a previous run's numbers

    argv = [
        str(tflite_path),
        "--accelerator-config", target.accelerator_config,
        "--system-config", target.system_config,
        "--memory-mode", target.memory_mode,
        "--config", _VELA_INI,
        "--output-dir", str(output_dir),
        "--optimise", optimise,
        "--verbose-performance",
        "--show-cpu-operations",
        *extra_args,
    ]  # fmt: skip
    run = _run_isolated(argv) if isolate else _run_in_process(argv)
    log_path.write_text(run.log, encoding="utf-8")
    if run.error is not None or run.returncode != 0:
        raise BackendError(f"Vela failed on {tflite_path}: {_failure_message(run)}")
    if not vela_tflite.is_file() or not summary_csv.is_file():
        raise BackendError(f"Vela wrote no output for {tflite_path} in {output_dir} (log: {log_path})")

    summary = _read_summary(summary_csv)
    layers = _read_layers(per_layer_csv, run.log)
    cpu_op_list = _cpu_ops(vela_tflite, _fallback_reasons(run.log))
    npu_ops = len({(layer.original_op, layer.name) for layer in layers if layer.target == "NPU"})
    return VelaResult(
        vela_tflite=vela_tflite,
        inference_time_ms=_float(summary, "inference_time", summary_csv) * 1e3,
        cycles_total=_int(summary, "cycles_total", summary_csv),
        cycles_npu=_int(summary, "cycles_npu", summary_csv),
        sram_used_kib=_float(summary, "sram_memory_used", summary_csv),
        dram_used_kib=_float(summary, "dram_memory_used", summary_csv),
        dram_feature_map_read_bytes=_int(summary, "dram_feature_map_read_bytes", summary_csv),
        dram_feature_map_write_bytes=_int(summary, "dram_feature_map_write_bytes", summary_csv),
        dram_weight_bytes=_int(summary, "dram_weight_read_bytes", summary_csv),
        flash_weight_bytes=_int(summary, "on_chip_flash_weight_read_bytes", summary_csv)
        + _int(summary, "off_chip_flash_weight_read_bytes", summary_csv),
        nn_macs=_int(summary, "nn_macs", summary_csv),
        original_weight_bytes=_int(summary, "total_original_weights", summary_csv),
        encoded_weight_bytes=_int(summary, "total_npu_encoded_weights", summary_csv),
        core_clock_hz=_float(summary, "core_clock", summary_csv),
        npu_ops=npu_ops,
        cpu_ops=len(cpu_op_list),
        cpu_op_list=cpu_op_list,
        layers=layers,
        vela_version=vela_version(),
        accelerator_config=target.accelerator_config,
        system_config=target.system_config,
        memory_mode=target.memory_mode,
        summary_csv=summary_csv,
        log_path=log_path,
    )


def vela_version() -> str:
    """Version of the installed ``ethos-u-vela`` (recorded in reports for reproducibility)."""
    try:
        return metadata.version("ethos-u-vela")
    except metadata.PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------- input check


def _check_tflite(path: Path) -> None:
    """Reject what would make Vela fail obscurely or make Regor segfault.

    This walks every table Vela reads with bounds-checked Python accessors. It
    cannot replace flatbuffers' C++ verifier (no alignment checks), hence
    ``isolate=True`` for untrusted files.
    """
    if not path.is_file():
        raise BackendError(f"{path}: no such TFLite file")
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != _TFLITE_IDENTIFIER:
        raise BackendError(f"{path}: not a TFLite flatbuffer (no 'TFL3' file identifier)")
    try:
        _walk_model(data)
    except BackendError as exc:
        raise BackendError(f"{path}: malformed TFLite flatbuffer: {exc}") from None
    except Exception as exc:  # the generated accessors raise struct.error/IndexError/...
        raise BackendError(f"{path}: malformed TFLite flatbuffer ({type(exc).__name__}: {exc})") from None


def _check_tosa(path: Path) -> None:
    """A TOSA flatbuffer nirc wrote itself: only its file identifier is checked."""
    if not path.is_file():
        raise BackendError(f"{path}: no such TOSA file")
    if path.read_bytes()[4:8] != b"TOSA":
        raise BackendError(f"{path}: not a TOSA flatbuffer (no 'TOSA' file identifier)")


def _walk_model(data: bytes) -> None:
    import tflite

    size = len(data)
    model = tflite.Model.GetRootAs(data, 0)
    n_buffers = model.BuffersLength()
    n_codes = model.OperatorCodesLength()
    for b in range(n_buffers):
        buf = model.Buffers(b)
        if buf.DataLength() and buf._tab.Vector(buf._tab.Offset(4)) + buf.DataLength() > size:
            raise BackendError(f"buffer {b} runs past the end of the file")
        if buf.Offset() and buf.Offset() + buf.Size() > size:
            raise BackendError(f"buffer {b} points past the end of the file")
    for c in range(n_codes):
        code = model.OperatorCodes(c)
        code.BuiltinCode(), code.DeprecatedBuiltinCode(), code.CustomCode()
    if model.SubgraphsLength() == 0:
        raise BackendError("no subgraphs")
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        n_tensors = sg.TensorsLength()
        for t in range(n_tensors):
            tensor = sg.Tensors(t)
            tensor.Name(), tensor.Type(), tensor.ShapeAsNumpy()
            if not 0 <= tensor.Buffer() < max(n_buffers, 1):
                raise BackendError(f"tensor {t} refers to missing buffer {tensor.Buffer()}")
            quant = tensor.Quantization()
            if quant is not None:
                quant.ScaleAsNumpy(), quant.ZeroPointAsNumpy()
        indices = [sg.InputsAsNumpy(), sg.OutputsAsNumpy()]
        for o in range(sg.OperatorsLength()):
            op = sg.Operators(o)
            if not 0 <= op.OpcodeIndex() < n_codes:
                raise BackendError(f"operator {o} has opcode index {op.OpcodeIndex()} of {n_codes}")
            indices += [op.InputsAsNumpy(), op.OutputsAsNumpy()]
            op.BuiltinOptionsType(), op.BuiltinOptions(), op.CustomOptionsLength()
        for idx in indices:
            if not isinstance(idx, int) and len(idx) and (idx.max() >= n_tensors or idx.min() < -1):
                raise BackendError(f"subgraph {s} refers to a tensor index out of range")


# --------------------------------------------------------------------------- running Vela


@contextlib.contextmanager
def _captured_output() -> Iterator[list[str]]:
    """Capture Python- and C-level stdout/stderr into one log; yields a list filled on exit.

    Regor writes with C++ streams to fds 1 and 2, so the fds themselves are
    pointed at a temporary file. ``sys.stdout`` may not be fd 1 (pytest, IDEs)
    and Vela's legacy code bound the original ``sys.stdout`` at import, so
    Python-level output is sent to the same file, keeping one chronological log.
    """
    captured: list[str] = []
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = [os.dup(1), os.dup(2)]
        text: io.TextIOWrapper | None = None
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            text = io.TextIOWrapper(
                io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="replace", line_buffering=True
            )
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                yield captured
        finally:
            if text is not None:
                with contextlib.suppress(Exception):
                    text.flush()
            for stream in (sys.__stdout__, sys.__stderr__):
                with contextlib.suppress(Exception):
                    if stream is not None:
                        stream.flush()
            _flush_c_stdio()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", errors="replace"))


def _flush_c_stdio() -> None:
    """Flush libc's stdio buffers so C++ output lands before the fds are restored."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


def _run_in_process(argv: list[str]) -> _VelaRun:
    from ethosu.vela import vela
    from ethosu.vela.errors import VelaError

    error: str | None = None
    returncode = 0
    with _VELA_LOCK:
        recursion_limit = sys.getrecursionlimit()
        with _captured_output() as captured:
            try:
                returncode = vela.main(argv)
            except SystemExit as exc:  # argparse errors; message is in the captured stderr
                returncode = exc.code if isinstance(exc.code, int) else 2
            except VelaError as exc:
                error = str(exc.error_msg)
            except Exception as exc:  # Regor raises RuntimeError; anything else is a Vela bug
                error = f"{type(exc).__name__}: {exc}"
            finally:
                sys.setrecursionlimit(recursion_limit)  # Vela sets it to 1000
    return _VelaRun(returncode=returncode, log="".join(captured), error=error)


_CHILD_MARKER = "NIRC_VELA_ERROR: "
_CHILD_SOURCE = f"""
import sys
from ethosu.vela import vela
from ethosu.vela.errors import VelaError
try:
    code = vela.main(sys.argv[1:])
except VelaError as exc:
    print({_CHILD_MARKER!r} + " ".join(str(exc.error_msg).split()), file=sys.stderr)
    code = 1
except Exception as exc:
    print({_CHILD_MARKER!r} + type(exc).__name__ + ": " + " ".join(str(exc).split()), file=sys.stderr)
    code = 1
sys.exit(code)
"""


def _run_isolated(argv: list[str]) -> _VelaRun:
    """Run Vela in a fresh interpreter so a crash in Regor cannot take nirc down.

    A plain subprocess (rather than multiprocessing) gets fd-level output
    capture for free and reports a crash as a negative return code.
    """
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD_SOURCE, *argv],
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    log = proc.stdout + proc.stderr
    error: str | None = None
    markers = [line for line in proc.stderr.splitlines() if line.startswith(_CHILD_MARKER)]
    if markers:
        error = markers[-1][len(_CHILD_MARKER) :]
    elif proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        last = _last_line(log)
        error = f"Vela crashed ({name})" + (f" after: {last}" if last else "")
    return _VelaRun(returncode=proc.returncode, log=log, error=error)


def _failure_message(run: _VelaRun) -> str:
    """Vela's own reason on one line: the exception, else its last error line."""
    if run.error is not None:
        return " ".join(run.error.split())
    lines = [line.strip() for line in run.log.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("Error", "vela: error"))]
    if errors:
        return errors[-1]
    return _last_line(run.log) or f"exit status {run.returncode}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------- parsing


def _read_summary(path: Path) -> dict[str, str]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != 1:
        raise BackendError(f"{path}: expected one summary row from Vela, got {len(rows)}")
    return rows[0]


def _float(row: dict[str, str], column: str, path: Path) -> float:
    try:
        return float(row[column])
    except KeyError:
        raise BackendError(f"{path}: Vela summary has no column {column!r}") from None
    except ValueError:
        raise BackendError(f"{path}: column {column!r} is not a number: {row[column]!r}") from None


def _int(row: dict[str, str], column: str, path: Path) -> int:
    return round(_float(row, column, path))


# Column names of the Regor per-layer CSV, with the legacy Python core's names as aliases.
_LAYER_COLUMNS: dict[str, tuple[str, ...]] = {
    "original_op": ("Original Operator", "TFLite_operator", "TOSA_operator"),
    "vela_op": ("NNG Operator",),
    "target": ("Target",),
    "staging": ("Staging Usage", "SRAM Usage"),
    "op_cycles": ("Op Cycles",),
    "network_pct": ("Network% (cycles)", "Network%"),
    "npu": ("NPU",),
    "sram_ac": ("SRAM AC",),
    "dram_ac": ("DRAM AC",),
    "macs": ("MAC Count",),
    "util": ("Util% (MAC)", "Util%"),
    "name": ("Name",),
}

_TABLE_TITLE = "Performance for NPU "  # Regor: "... NPU Grap <file>", legacy: "... NPU Subgraph <sg>"


def _read_layers(per_layer_csv: Path, log: str) -> tuple[LayerPerf, ...]:
    """Rows of the per-layer table, from the CSV (or the printed table if no CSV)."""
    if per_layer_csv.is_file():
        with per_layer_csv.open(newline="", encoding="utf-8") as f:
            rows = [row for row in csv.reader(f) if row]
    else:
        rows = _printed_table(log)
    if not rows:
        return ()
    header, body = rows[0], rows[1:]
    col: dict[str, int] = {}
    for key, names in _LAYER_COLUMNS.items():
        found = next((header.index(n) for n in names if n in header), None)
        if found is not None:
            col[key] = found
        elif key != "target":  # the legacy core only reports NPU ops and has no Target column
            raise BackendError(f"{per_layer_csv}: unrecognised Vela per-layer table (no {names[0]!r})")
    name_at = col["name"]
    layers = []
    for row in body:
        if len(row) > len(header) and name_at == len(header) - 1:
            row = [*row[:name_at], ",".join(row[name_at:])]  # Regor writes names unquoted
        cycles = round(float(row[col["op_cycles"]]))
        layers.append(
            LayerPerf(
                name=row[name_at],
                original_op=row[col["original_op"]],
                vela_op=row[col["vela_op"]],
                target=row[col["target"]] if "target" in col else "NPU",
                op_cycles=cycles,
                network_pct=float(row[col["network_pct"]]),
                npu_cycles=round(float(row[col["npu"]])),
                sram_access_cycles=round(float(row[col["sram_ac"]])),
                dram_access_cycles=round(float(row[col["dram_ac"]])),
                mac_count=round(float(row[col["macs"]])),
                util_pct=float(row[col["util"]]) if cycles else 0.0,
                staging_bytes=round(float(row[col["staging"]])),
            )
        )
    return tuple(layers)


def _printed_table(log: str) -> list[list[str]]:
    """The per-layer table as Vela prints it: fixed columns, the name last."""
    lines = log.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(_TABLE_TITLE)), None)
    if start is None or start + 2 >= len(lines):
        return []
    # Headers contain spaces and some are separated by one space: slice them by the dash ruler.
    ruler = lines[start + 2]
    spans = [m.span() for m in re.finditer(r"-+", ruler)]
    header = [lines[start + 1][a:b].strip() for a, b in spans]
    rows = [header]
    for line in lines[start + 3 :]:
        if not line.strip():
            break
        rows.append([cell.strip() for cell in line.split(maxsplit=len(header) - 1)])
    return rows


# Regor: "Warning (supported operators) operator: ADD, ofm: 'sum'" then "Reason: ..." lines.
_REGOR_WARNING = re.compile(r"^Warning \(supported operators\) operator: (?P<op>\w+), ofm: '(?P<name>.*)'$")
# Legacy core: "Warning: ADD 'sum' is not supported on the NPU. Placing on CPU instead" then " - ..." lines.
_LEGACY_WARNING = re.compile(r"^Warning: .*?(?P<op>\w+) '(?P<name>.*)'.*Placing on CPU instead")
_LEGACY_CPU_ONLY = re.compile(r"^Info: (?P<op>\w+) '(?P<name>.*)' is a CPU only op$")


def _fallback_reasons(log: str) -> dict[str, str]:
    """Map output-tensor name to Vela's reason for leaving the op on the CPU."""
    reasons: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in log.splitlines():
        line = raw.strip()
        match = _REGOR_WARNING.match(line) or _LEGACY_WARNING.match(line)
        if match:
            current = reasons.setdefault(match["name"], [])
        elif (cpu_only := _LEGACY_CPU_ONLY.match(line)) is not None:
            reasons.setdefault(cpu_only["name"], []).append("CPU-only operator")
            current = None
        elif current is not None and line and not line.startswith(("Warning", "Info", "#")):
            current.append(line.removeprefix("Reason:").removeprefix("- ").strip())
        else:
            current = None
    return {name: " ".join(parts) for name, parts in reasons.items()}


def _builtin_names() -> dict[int, str]:
    from tflite.BuiltinOperator import BuiltinOperator

    return {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}


def npu_op_count(data: bytes, label: str) -> int:
    """How many Vela-compiled NPU subgraphs (``ethos-u`` custom ops) a TFLite file holds.

    Tells a Vela output (at least one) from the int8 TFLite Vela read (none), so commands
    that take both can say when they were swapped instead of failing inside LiteRT.
    """
    import tflite

    if len(data) < 8 or data[4:8] != _TFLITE_IDENTIFIER:
        raise ModelLoadError(f"{label}: not a TFLite file")
    try:
        model = tflite.Model.GetRootAs(data, 0)
        count = 0
        for s in range(model.SubgraphsLength()):
            sg = model.Subgraphs(s)
            for o in range(sg.OperatorsLength()):
                custom = model.OperatorCodes(sg.Operators(o).OpcodeIndex()).CustomCode()
                count += custom is not None and custom.decode() == NPU_CUSTOM_CODE
    except Exception as exc:
        raise ModelLoadError(f"{label}: unreadable TFLite file ({type(exc).__name__}: {exc})") from None
    return count


def _cpu_ops(vela_tflite: Path, reasons: dict[str, str]) -> tuple[CpuOp, ...]:
    """Operators of Vela's output that are not NPU custom ops, i.e. run on the CPU.

    The output file is the ground truth for what TFLite Micro will execute;
    the printed warnings only supply the reasons.
    """
    import tflite

    try:
        model = tflite.Model.GetRootAs(vela_tflite.read_bytes(), 0)
        names = _builtin_names()
        ops: list[CpuOp] = []
        for s in range(model.SubgraphsLength()):
            sg = model.Subgraphs(s)
            for o in range(sg.OperatorsLength()):
                op = sg.Operators(o)
                code = model.OperatorCodes(op.OpcodeIndex())
                custom = code.CustomCode()
                if custom is not None and custom.decode() == NPU_CUSTOM_CODE:
                    continue
                builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
                op_type = custom.decode() if custom is not None else names.get(builtin, f"BUILTIN_{builtin}")
                out = sg.Tensors(op.Outputs(0)).Name().decode() if op.OutputsLength() else f"op{o}"
                reason = reasons.get(out, "no reason printed by Vela")
                ops.append(CpuOp(name=out, op_type=op_type, reason=reason))
    except BackendError:
        raise
    except Exception as exc:
        raise BackendError(f"{vela_tflite}: unreadable Vela output ({type(exc).__name__}: {exc})") from None
    return tuple(ops)
