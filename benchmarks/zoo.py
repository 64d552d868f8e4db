"""The public-zoo benchmark: real torchvision / timm / ultralytics architectures through nirc.

Usage:
    <torch venv>/bin/python benchmarks/zoo.py export [--out DIR] [--only PATTERN] [--exporters ...]
    .venv/bin/python benchmarks/zoo.py run [--exports DIR] [--only PATTERN] [--mode base|full|both] [--jobs N]
    .venv/bin/python benchmarks/zoo.py table            # rewrite zoo.md from the results cache only

``export`` needs the optional extra ``zoo`` (torch, torchvision, timm, ultralytics, onnxscript); see
benchmarks/zoo_models.py for how the models are prepared. ``run`` needs only nirc: it compiles every
exported file with the nirc CLI in a subprocess (per-model timeout) twice, ``--no-hw-passes`` (base)
and the target's default pipeline (full), and keeps each result in benchmarks/results/zoo.json as soon
as it exists, so an interrupted run resumes where it stopped (``--force`` recompiles).

Calibration: random noise is a poor stand-in for images (its int8 SNR says little), and no image data
set ships with nirc's venv, so ``natural_images`` synthesises 16 deterministic natural-image-like
pictures: a 1/f amplitude spectrum (the power law of natural scenes) with colour-correlated channels,
plus a few flat-coloured discs and rectangles for sharp edges. Classifiers get them ImageNet-normalised
(mean 0.485,0.456,0.406, std 0.229,0.224,0.225); ultralytics detectors get them in [0, 1], as they expect.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EXPORTS = Path("/work/zoo_exports")
RESULTS = ROOT / "benchmarks" / "results"
CACHE = RESULTS / "zoo.json"
TABLE = RESULTS / "zoo.md"
MODES = {"base": ["--no-hw-passes"], "full": []}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CALIB_SAMPLES = 16
EXPORTERS = ("torchscript", "dynamo", "ultralytics")


def natural_images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """``n`` RGB images in [0, 1], NCHW float32, with natural-image statistics (1/f spectrum, edges)."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    radius = np.sqrt(fx**2 + fy**2)
    radius[0, 0] = 1.0
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((n, 3, h, w), dtype=np.float32)
    for i in range(n):
        amp = radius ** -rng.uniform(1.8, 2.2) / 2.0  # 1/f^alpha amplitude, alpha ~ 1 in power -> ~2 here
        amp[0, 0] = 0.0
        lum = np.fft.irfft2(amp * np.exp(2j * np.pi * rng.random(amp.shape)), s=(h, w))
        lum = (lum - lum.mean()) / (lum.std() + 1e-12)
        chroma = [np.fft.irfft2(amp * np.exp(2j * np.pi * rng.random(amp.shape)), s=(h, w)) for _ in range(3)]
        img = np.stack([lum + 0.35 * c / (c.std() + 1e-12) for c in chroma])
        img = 0.5 + 0.18 * img + rng.uniform(-0.15, 0.15, size=(3, 1, 1))
        for _ in range(rng.integers(2, 6)):  # occluding objects: flat colour, sharp boundary
            colour = rng.uniform(0.0, 1.0, size=(3, 1))
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            size = rng.uniform(0.08, 0.3) * min(h, w)
            if rng.random() < 0.5:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < size**2
            else:
                mask = (np.abs(yy - cy) < size) & (np.abs(xx - cx) < size * rng.uniform(0.5, 2.0))
            img[:, mask] = colour + 0.05 * img[:, mask] - 0.025
        out[i] = np.clip(img, 0.0, 1.0)
    return out


def _parse_name(path: Path) -> tuple[str, str, str]:
    lib, arch, exporter = path.stem.split("__")
    return lib, arch, exporter


def _input_shape(path: Path) -> list[int]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    value = next(v for v in proto.graph.input if v.name not in inits)
    return [d.dim_value for d in value.type.tensor_type.shape.dim]


def calib_file(path: Path, work: Path) -> Path:
    lib, _, _ = _parse_name(path)
    shape = _input_shape(path)
    out = work / f"calib_{lib if lib == 'ultralytics' else 'imagenet'}_{'x'.join(map(str, shape[1:]))}.npy"
    if not out.exists():
        data = natural_images(CALIB_SAMPLES, shape[2], shape[3])
        if lib != "ultralytics":
            data = (data - np.array(IMAGENET_MEAN, np.float32)[:, None, None]) / np.array(IMAGENET_STD, np.float32)[
                :, None, None
            ]
        np.save(out, data.astype(np.float32))
    return out


def _cpu_summary(vela: dict[str, Any]) -> list[str]:
    """Ops left on the CPU grouped as 'OpType xN: reason' (Vela's own words)."""
    groups: dict[tuple[str, str], int] = {}
    for op in vela.get("cpu_op_list", []):
        key = (op["op_type"], " ".join(str(op.get("reason") or "-").split()))
        groups[key] = groups.get(key, 0) + 1
    return [f"{t} x{n}: {r}" for (t, r), n in sorted(groups.items())]


def compile_one(path: Path, mode: str, work: Path, timeout: float, validate: str, target: str) -> dict[str, Any]:
    """One nirc CLI run; never raises: failures are recorded with the exit code and the one-line error."""
    out = work / f"{path.stem}_{mode}"
    cmd = [sys.executable, "-m", "nirc.cli", "optimize", str(path), "--target", target, "-o", str(out),
           "--calib", str(calib_file(path, work)), "--validate", validate, "-q", *MODES[mode]]  # fmt: skip
    row: dict[str, Any] = {"file": path.name, "mode": mode, "validate": validate, "target": target}
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        row.update(status=f"timeout after {timeout:.0f} s", exit_code=None, compile_s=round(timeout, 1))
        return row
    row["compile_s"] = round(time.perf_counter() - start, 1)
    row["exit_code"] = proc.returncode
    errors = [line for line in proc.stderr.splitlines() if line.startswith("nirc:")]
    report_path = out / "report.json"
    if report_path.exists():
        report = json.loads(report_path.read_text())
        vela = report.get("vela") or {}
        outputs = (report.get("validation") or {}).get("outputs") or []
        snrs = [99.0 if o["snr_db"] == "inf" else float(o["snr_db"]) for o in outputs]
        npu = (report.get("validation") or {}).get("npu") or {}
        row.update(
            vela_ms=vela.get("inference_time_ms"),
            npu_ops=vela.get("npu_ops"),
            cpu_ops=vela.get("cpu_ops"),
            cpu_reasons=_cpu_summary(vela),
            snr_db=min(snrs) if snrs else None,
            npu_bit_exact=npu.get("bit_exact"),
            sram_kib=vela.get("sram_used_kib"),
            macs=report["model"]["after"]["macs"],
            params=report["model"]["after"]["params"],
            passes_changed=[p["name"] for p in report.get("passes", []) if p.get("changed")],
            fits=((report.get("fits") or {}).get("platform") or {}).get("fits"),
        )
    if proc.returncode == 0:
        row["status"] = "ok"
    else:
        line = errors[-1] if errors else (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        row["status"] = f"exit {proc.returncode}: {line[:400]}"
    return row


def load_cache() -> dict[str, dict[str, Any]]:
    return json.loads(CACHE.read_text()) if CACHE.exists() else {}


def record(key: str, row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Add one result to the cache on disk and return the whole cache.

    Re-reads the file under a lock, so two runs at once (say ``--mode base`` and ``--mode full``)
    never overwrite each other's rows; the write is atomic, so an interrupted run leaves a valid file.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (Path(tempfile.gettempdir()) / "nirc_zoo_results.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cache = load_cache()
        cache[key] = row
        tmp = CACHE.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(dict(sorted(cache.items())), indent=1, sort_keys=True) + "\n")
        tmp.replace(CACHE)
    return cache


def _ms(row: dict[str, Any] | None) -> str:
    return f"{row['vela_ms']:.3f}" if row and row.get("status") == "ok" and row.get("vela_ms") is not None else "-"


def _status(row: dict[str, Any] | None) -> str:
    """Status for a table cell: the error without the file path, its first clause only."""
    if row is None:
        return "not run"
    text = re.sub(r"nirc: error: \S+\.onnx: ", "", str(row["status"])).split("; ")[0]
    return text.replace("|", "\\|")


def _error_kind(row: dict[str, Any]) -> str:
    """The error with node names blanked, to count files failing for the same reason."""
    return re.sub(r"'[^']*'", "'…'", _status(row))


def to_markdown(cache: dict[str, dict[str, Any]], files: list[str], manifest: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# Public-zoo benchmark",
        "",
        "Generated by `python benchmarks/zoo.py run` (table only: `python benchmarks/zoo.py table`); exports made by",
        "`benchmarks/zoo.py export` in a torch venv (random init, BatchNorm stats re-estimated, see zoo_models.py).",
        "Target ethos-u65 (ethos-u65-256, High_End, Dedicated_Sram_384KB), Vela 5.2 latency estimates.",
        "base = `--no-hw-passes`; full = the target's default pipeline. SNR = int8 LiteRT vs ORT float (worst",
        "output) on 16 synthetic natural-image-like samples (see `natural_images`), which also calibrate.",
        "Runs use `--validate none` (the NPU functional model is too slow for the whole zoo on 2 cores) unless",
        "the row says otherwise. CPU ops: count on the base run, grouped with Vela's reason.",
        "",
        "| file | params (M) | status base | Vela ms base | Vela ms full | full/base | CPU ops | SNR base (dB) "
        "| SNR full (dB) | compile s base | compile s full | status full |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    reasons: list[str] = []
    stale = 0
    for name in files:
        base, full = cache.get(f"{name}|base"), cache.get(f"{name}|full")
        info = manifest.get(name, {})
        params = f"{info['params'] / 1e6:.2f}" if "params" in info else "-"
        ratio = "-"
        if _ms(base) != "-" and _ms(full) != "-":
            ratio = f"{full['vela_ms'] / base['vela_ms']:.3f}"  # type: ignore[index]
            if _stale(base, full):  # type: ignore[arg-type]
                ratio += "*"
                stale += 1
        snr_b = f"{base['snr_db']:.1f}" if base and base.get("snr_db") is not None else "-"
        snr_f = f"{full['snr_db']:.1f}" if full and full.get("snr_db") is not None else "-"
        cpu = str(base.get("cpu_ops", "-")) if base else "-"
        lines.append(
            f"| {name.removesuffix('.onnx')} | {params} | {_status(base)} "
            f"| {_ms(base)} | {_ms(full)} | {ratio} | {cpu} | {snr_b} | {snr_f} "
            f"| {base['compile_s'] if base else '-'} | {full['compile_s'] if full else '-'} "
            f"| {'skipped (base fails)' if full is None and _base_failed(cache, name, 'full') else _status(full)} |"
        )
        if base and base.get("cpu_reasons"):
            reasons.append(f"- {name.removesuffix('.onnx')}: " + "; ".join(base["cpu_reasons"]))
    if stale:
        lines += ["", "\\* the base run applied a canonical pass the full run did not: the two rows come from "
                  "different nirc versions and their ratio is not the hardware passes' effect "
                  "(`zoo.py run --force --only NAME` re-measures both)."]
    lines += ["", *_summary(cache, files)]
    if reasons:
        lines += ["", "## Ops left on the CPU (base run, Vela's reasons)", "", *reasons]
    return "\n".join(lines) + "\n"


def _stale(base: dict[str, Any], full: dict[str, Any]) -> bool:
    """Whether the full run lacks a pass the base run changed the model with.

    The base pipeline is the full one without the hardware passes, so on one nirc version every pass
    that changed the base model also runs in the full pipeline and changes it the same way. (timm
    mixnet_s and tinynet_a: full rows made before legalize-global-pool existed, 4.9% slower than base.)
    """
    return bool(set(base.get("passes_changed", ())) - set(full.get("passes_changed", ())))


def _summary(cache: dict[str, dict[str, Any]], files: list[str]) -> list[str]:
    out = ["## Summary", ""]
    for mode in MODES:
        rows = [cache.get(f"{f}|{mode}") for f in files]
        ran = [r for r in rows if r is not None]
        ok = [r for r in ran if r["status"] == "ok"]
        npu_only = [r for r in ok if r.get("cpu_ops") == 0]
        skipped = sum(r is None and _base_failed(cache, f, mode) for f, r in zip(files, rows, strict=True))
        out.append(
            f"- {mode}: {len(ok)} of {len(files)} files compile ({len(ran)} run, {skipped} skipped because the "
            f"baseline fails, {len(files) - len(ran) - skipped} not run); "
            f"{len(npu_only)} run entirely on the NPU."
        )
    for mode in MODES:
        per = []
        for exporter in EXPORTERS:
            mine = [f for f in files if f.endswith(f"__{exporter}.onnx")]
            ok = sum((cache.get(f"{f}|{mode}") or {}).get("status") == "ok" for f in mine)
            if mine:
                per.append(f"{exporter} {ok}/{len(mine)}")
        out.append(f"- {mode} compiles per exporter: {', '.join(per)}.")
    kinds: dict[str, list[str]] = {}
    for f in files:
        row = cache.get(f"{f}|base")
        if row is not None and row["status"] != "ok":
            kinds.setdefault(_error_kind(row), []).append(f.removesuffix(".onnx"))
    for kind, names in sorted(kinds.items(), key=lambda kv: -len(kv[1])):
        out.append(f"- base failure x{len(names)}: {kind} ({', '.join(names)})")
    for mode in MODES:
        pairs = []
        for f in files:
            if "__torchscript" not in f:
                continue
            ts, dy = cache.get(f"{f}|{mode}"), cache.get(f"{f.replace('__torchscript', '__dynamo')}|{mode}")
            if _ms(ts) != "-" and _ms(dy) != "-":
                pairs.append((f.split("__")[1], dy["vela_ms"] / ts["vela_ms"]))  # type: ignore[index]
        if pairs:
            close = [a for a, r in pairs if abs(r - 1) <= 0.01]
            far = ", ".join(f"{a} {r:.3f}" for a, r in pairs if abs(r - 1) > 0.01) or "none"
            out.append(
                f"- TorchScript vs dynamo latency ({mode}): {len(close)} of {len(pairs)} architectures within 1%; "
                f"dynamo/torchscript beyond 1%: {far}."
            )
    return out


def status_text(cache: dict[str, dict[str, Any]], files: list[str]) -> str:
    """STATUS.md for the export folder: which files fail to compile (base run) and why, in one line each."""
    base = {f: cache.get(f"{f}|base") for f in files}
    failing = {f: r for f, r in base.items() if r is not None and r["status"] != "ok"}
    cpu = {f: r for f, r in base.items() if r is not None and r["status"] == "ok" and r.get("cpu_ops")}
    pending = [f for f, r in base.items() if r is None]
    lines = [
        "# Zoo compile status (nirc `--no-hw-passes`, ethos-u65, `--validate none`)",
        "",
        "Written by `benchmarks/zoo.py run` (branch zoo) from benchmarks/results/zoo.json; compiled with the nirc",
        "code of that worktree (= main at the start of the session). Regenerated as runs finish.",
        "",
        f"{sum(r is not None and r['status'] == 'ok' for r in base.values())} of {len(files)} files compile; "
        f"{len(failing)} fail; {len(pending)} not run yet.",
        "",
        "## Failures grouped by reason",
        "",
        *(line for line in _summary(cache, files) if line.startswith("- base failure")),
        "",
        "## Failing files (exit code: the one-line error)",
        "",
        *(f"- {f}: {r['status']}" for f, r in sorted(failing.items())),
        "",
        "## Compiling files with ops left on the CPU (Vela's reasons)",
        "",
        *(f"- {f}: {r['cpu_ops']} CPU ops: " + "; ".join(r.get("cpu_reasons", [])) for f, r in sorted(cpu.items())),
        "",
        "## Not run yet",
        "",
        *(f"- {f}" for f in pending),
    ]
    return "\n".join(lines) + "\n"


def _write_outputs(cache: dict[str, dict[str, Any]], exports: Path) -> None:
    files = _files(exports, None)
    TABLE.write_text(to_markdown(cache, files, _manifest(exports)))
    try:
        (exports / "STATUS.md").write_text(status_text(cache, files))
    except OSError as exc:
        print(f"  (STATUS.md not written: {exc})", flush=True)


def _manifest(exports: Path) -> dict[str, dict[str, Any]]:
    path = exports / "manifest.json"
    return {r["file"]: r for r in json.loads(path.read_text()) if "file" in r} if path.exists() else {}


def _files(exports: Path, only: str | None) -> list[str]:
    """Exported files, only those the manifest lists as finished when there is one (an export in progress
    must not be compiled half-written)."""
    names = sorted(p.name for p in exports.glob("*__*__*.onnx"))
    manifest = _manifest(exports)
    if manifest:
        names = [n for n in names if manifest.get(n, {}).get("status") == "ok"]
    return [n for n in names if not only or only in n]


def _priority(files: list[str]) -> list[str]:
    """Files in the export order of zoo_models.ARCHS (popular, cheap first), exporters of one arch together,
    so a partial full-pipeline run still covers whole TorchScript/dynamo pairs."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from zoo_models import ARCHS  # no torch at import time

    order = {arch: i for i, (_, arch) in enumerate(ARCHS)}
    return sorted(
        files, key=lambda f: (order.get(f.split("__")[1], len(order)), EXPORTERS.index(f.split("__")[2][:-5]))
    )


def _base_failed(cache: dict[str, dict[str, Any]], name: str, mode: str) -> bool:
    """A file the baseline cannot compile fails the same way in the front end of the full pipeline: skip it."""
    base = cache.get(f"{name}|base")
    return mode == "full" and base is not None and base["status"] != "ok"


def run(args: argparse.Namespace) -> int:
    cache = load_cache()
    files = _files(args.exports, args.only)
    modes = list(MODES) if args.mode == "both" else [args.mode]
    todo = [
        (f, m)
        for m in modes
        for f in _priority(files)
        if (args.force or f"{f}|{m}" not in cache) and not _base_failed(cache, f, m)
    ]
    work = Path(tempfile.mkdtemp(prefix="nirc_zoo_"))
    print(f"[zoo run] {len(todo)} compiles ({len(files)} files, modes {modes}), work dir {work}", flush=True)

    if args.reverse:
        todo.reverse()

    def one(item: tuple[str, str]) -> tuple[str, dict[str, Any] | None]:
        name, mode = item
        if not args.force and f"{name}|{mode}" in load_cache():  # another run got there first
            return f"{name}|{mode}", None
        row = compile_one(args.exports / name, mode, work, args.timeout, args.validate, args.target)
        return f"{name}|{mode}", row

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for key, maybe in pool.map(one, todo):
            if maybe is None:
                continue
            row = maybe
            cache = record(key, row)
            _write_outputs(cache, args.exports)
            print(f"  {key}: {row['status'][:160]} {_ms(row)} ms, {row['compile_s']} s", flush=True)
    _write_outputs(load_cache(), args.exports)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    exp = sub.add_parser("export", help="export the zoo to ONNX (torch venv)")
    exp.add_argument("--out", type=Path, default=DEFAULT_EXPORTS)
    exp.add_argument("--only", help="substring of the architecture name")
    exp.add_argument("--exporters", nargs="+", default=list(EXPORTERS), choices=EXPORTERS)
    rn = sub.add_parser("run", help="compile every export with nirc and write benchmarks/results/zoo.md")
    rn.add_argument("--exports", type=Path, default=DEFAULT_EXPORTS)
    rn.add_argument("--only", help="substring of the file name")
    rn.add_argument("--mode", choices=["base", "full", "both"], default="both")
    rn.add_argument("--jobs", type=int, default=1)
    rn.add_argument("--timeout", type=float, default=900.0, help="seconds per compile")
    rn.add_argument("--validate", choices=["none", "sim"], default="none")
    rn.add_argument("--target", default="ethos-u65")
    rn.add_argument("--force", action="store_true", help="recompile results already in the cache")
    rn.add_argument("--reverse", action="store_true", help="work from the end of the list (a second run at once)")
    tb = sub.add_parser("table", help="rewrite zoo.md from the results cache")
    tb.add_argument("--exports", type=Path, default=DEFAULT_EXPORTS)
    args = parser.parse_args(argv)
    if args.cmd == "export":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from zoo_models import export_all

        return export_all(args.out, args.only, tuple(args.exporters))
    if args.cmd == "run":
        return run(args)
    _write_outputs(load_cache(), args.exports)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
