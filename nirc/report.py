"""``report.json``: the stable, versioned record of one ``nirc optimize`` run.

Schema (version 1), top-level keys:
  schema_version (int), nirc_version (str), source (str),
  target {name, accelerator_config, system_config, memory_mode, arena_cache_bytes,
          platform, platform_memory_bytes},
  passes [{name, exact, changed, seconds, stats, verified}],
  model {before, after}: each {macs, params, weight_bytes, peak_activation_bytes, nodes}
        (peak_activation_bytes: logical int8 elements in topological order, what a CPU runtime
        needs; the NPU figure is memory.peak_bytes).
  calibration {source, synthetic, samples, method},
  validation {samples, outputs [{name, snr_db, max_abs_error_steps, top1_agreement, low_snr}]
              (int8 vs the float model after the passes), outputs_vs_original [...] (only when a
              lossy pass changed the model: int8 vs the float input model),
              npu {method (sim|fvp), samples, bit_exact, bit_exact_samples, max_abs_diff_lsb,
                   first_divergence, unexplained, explained [{op, tensor, rule, samples}],
                   details {reference, outputs {name: {elements, samples_differing, differing,
                   max_abs_diff_lsb}}, per_sample [{sample, bit_exact, max_abs_diff_lsb, first_divergence,
                   differing_tensors, differing_outputs}], intermediates {compared, matched, differing,
                   from_stripes, from_slices, slices_matched, slices_unchecked, unmapped} (counts over all inputs),
                   divergences [...], reference_litert_ops, cpu_op_list [{op, opcode, checked: "reference
                   only"}]}} or {method, skipped, ops [{op, opcode, checked}]} (Vela's output executed vs
                   TFLite Micro on the int8 TFLite; bit_exact = 0 LSB everywhere; unexplained fails the CLI),
              layers {samples, tensors [{tensor, op, index, snr_db, scale}] (every int8 activation of the
                      TFLite vs the float tensor of the same name; index -1 = a graph input),
                      worst [{..., input_snr_db, drop_db}] (the layers that lose the most SNR)},
              accuracy_guard {max_snr_drop_db, samples, measurements, seconds} (only when the int8 guard
                      of the hardware passes ran; each guarded pass records its verdict in its decisions:
                      accuracy_guard {int8_snr_db_before, int8_snr_db_after, snr_drop_db, max_snr_drop_db,
                      within_tolerance, kept}, and substitute-blocks one ``int8`` entry per block
                      {..., saved_cycles, refused} plus its summary's accuracy_guard),
              activations_16 {mode (auto|layers), min_snr_db, max_cost_pct, int8 {snr_db, inference_time_ms,
                      cycles}, mixed {...}, cost_pct, snr_gain_db, target_met, int16_tensors, layers [{tensor,
                      op, int16_tensors, int8_drop_db, snr_db_int8, snr_db_mixed, snr_gain_db, cycles_int8,
                      cycles_mixed}], steps [...], not_promotable {tensor: reason}} (only with
                      --activations-16 / --min-snr; the rest of the report is about the mixed model)},
  vela (null with --no-compile) {inference_time_ms, cycles_total, cycles_npu, sram_used_kib, dram_used_kib,
        dram_feature_map_read_bytes, dram_feature_map_write_bytes, dram_weight_bytes, nn_macs, npu_ops,
        cpu_ops, cpu_op_list [{name, op_type, reason}], layers [...], vela_version, ...},
  fits {sram {peak_activation_bytes, arena_cache_bytes, fits},
        platform {required_bytes, limit_bytes, platform, fits (true/false/null), message}},
  placement {engine, architecture, predicted {ops, npu_ops, cpu_ops}, observed {...} | null, agree,
             cpu_ops [{op, op_type, constraint, reasons, fix, predicted, observed, agree}]}
             (Vela's constraint for each op off the NPU and the nirc rewrite that would fix it),
  warnings [str],
  npu_format {format: tflite, reason?} | {format: tosa, tosa_file, tables, tflite_ops_in_tables,
             inputs_staged_in_sram, inputs/outputs {name: {scale, zero_point}}} (what Vela compiled),
  memory {peak_bytes, peak_bytes_before, peak_step, arena_bytes, over_arena_steps} and
  memory_timeline [{step, live_bytes}]:
  int8 activation bytes alive at each step, in the order Vela runs the graph, with 16-channel brick
  storage (nirc.memory; checked against Vela's allocation log); peak_bytes_before is the same
  measure on the model before the passes.
  profile {stages [{name, seconds, peak_rss_bytes, events}], events {name: {count, seconds}}, seconds,
           peak_rss_bytes, weight_bytes, peak_rss_over_weights,
           oracle_calls [{label, nodes, emit_seconds, vela_seconds}] (each uncached cost-oracle compilation),
           passes [{name, seconds, events}] (the passes that took 0.05 s or caused an event)}:
  where compile time and memory went. Stages: load, passes, emit (calibration and int8 emission),
  validate, vela, validate-tosa, validate-npu, report; events: vela (compilations), cost.emit
  (emissions for the cost oracle), cost.cache_hit / cost.cache_miss, accuracy_guard (int8
  measurements). peak_rss_bytes is the resident-set high-water mark during the stage;
  weight_bytes is the input model's initializer bytes.
Only ``seconds`` values and the ``profile`` section vary between identical runs (the cost cache
changes its event counts); everything else is byte-stable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from nirc.analysis import Analysis
from nirc.pass_manager import PassRecord
from nirc.target import Target
from nirc.timing import Profile

if TYPE_CHECKING:
    from nirc.targets.ethos_u.vela_driver import VelaResult

REPORT_SCHEMA_VERSION = 1


def model_summary(analysis: Analysis) -> dict[str, int]:
    return {
        "macs": analysis.macs,
        "params": analysis.params,
        "weight_bytes": analysis.weight_bytes,
        "peak_activation_bytes": analysis.peak_activation_bytes,
        "nodes": len(analysis.layers),
    }


def target_summary(target: Target) -> dict[str, Any]:
    return {
        "name": target.name,
        "accelerator_config": target.accelerator_config,
        "system_config": target.system_config,
        "memory_mode": target.memory_mode,
        "arena_cache_bytes": target.arena_cache_bytes,
        "platform": target.platform,
        "platform_memory_bytes": target.platform_memory_bytes,
    }


def build_report(
    *,
    source: str,
    target: Target,
    records: Sequence[PassRecord],
    before: Analysis,
    after: Analysis,
    version: str,
    calibration: dict[str, Any] | None = None,
    validation: dict[str, Any] | None = None,
    vela: dict[str, Any] | None = None,
    fits: dict[str, Any] | None = None,
    warnings: Sequence[str] = (),
) -> dict[str, Any]:
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "nirc_version": version,
        "source": source,
        "target": target_summary(target),
        "passes": [r.to_json() for r in records],
        "model": {"before": model_summary(before), "after": model_summary(after)},
        "calibration": calibration,
        "validation": validation,
        "vela": vela,
        "fits": fits,
        "warnings": list(warnings),
    }


def initializer_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of the model's initializers as stored (what "the model's weight bytes" means for memory)."""
    total = 0
    for tensor in proto.graph.initializer:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        total += math.prod(tensor.dims) * itemsize
    return total


PROFILED_PASS_SECONDS = 0.05
"""Passes faster than this and without events are left out of the profile's pass list."""


def profile_section(profile: Profile | None, records: Sequence[PassRecord], weight_bytes: int) -> dict[str, Any]:
    """The report's ``profile``: stages, events, per-pass events and peak RSS against the weights."""
    section: dict[str, Any] = profile.to_json() if profile is not None else {"stages": [], "events": {}}
    peak = int(section.get("peak_rss_bytes", 0))
    section["weight_bytes"] = weight_bytes
    section["peak_rss_over_weights"] = round(peak / weight_bytes, 2) if weight_bytes and peak else None
    section["passes"] = [
        {
            "name": r.name,
            "seconds": round(r.seconds, 3),
            "events": {k: v.to_json() for k, v in sorted(r.profile.items())},
        }
        for r in records
        if r.seconds >= PROFILED_PASS_SECONDS or r.profile
    ]
    return section


def _events_text(events: dict[str, Any]) -> str:
    parts = []
    for name, tally in events.items():
        seconds = f" {tally['seconds']:.1f} s" if tally["seconds"] >= 0.05 else ""
        parts.append(f"{name} x{tally['count']}{seconds}")
    return ", ".join(parts)


def format_profile(profile: dict[str, Any]) -> str:
    """The ``profile`` section as the table ``nirc optimize --verbose`` prints."""
    weights = profile.get("weight_bytes") or 0
    ratio = profile.get("peak_rss_over_weights")
    vs = f" ({ratio}x the {_mib(weights)} of weights)" if ratio is not None else ""
    lines = [f"profile: {profile.get('seconds', 0.0):.1f} s, peak RSS {_mib(profile.get('peak_rss_bytes', 0))}{vs}"]
    lines.append(f"  {'stage':24s} {'seconds':>8s} {'peak RSS':>10s}  events")
    for stage in profile.get("stages", []):
        rss = _mib(stage["peak_rss_bytes"])
        lines.append(f"  {stage['name']:24s} {stage['seconds']:8.2f} {rss:>10s}  {_events_text(stage['events'])}")
    calls = sorted(profile.get("oracle_calls", []), key=lambda c: -(c["emit_seconds"] + c["vela_seconds"]))
    if calls:
        lines.append(f"  {len(calls)} cost-oracle compilations, slowest: " + "; ".join(
            f"{c['label']} ({c['nodes']} nodes) {c['emit_seconds']:.1f}+{c['vela_seconds']:.1f} s" for c in calls[:3]
        ))
    if profile.get("passes"):
        lines.append(f"  {'pass':24s} {'seconds':>8s}  events")
        for record in profile["passes"]:
            lines.append(f"  {record['name']:24s} {record['seconds']:8.2f}  {_events_text(record['events'])}")
    return "\n".join(lines) + "\n"


def _mib(n: int) -> str:
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"


def vela_arena_bytes(target: Target, vela: VelaResult) -> int:
    """Feature-map arena Vela allocated in main memory.

    In Dedicated_Sram modes the arena lives in DRAM, and Vela's ``dram_memory_used``
    counts the encoded weights stored there too (measured: VGG19-CIFAR reports
    17,798 KiB with 18,166,368 B of encoded weights), so they are subtracted. In
    the other modes the arena is the SRAM Vela used.
    """
    if target.memory_mode.startswith("Dedicated_Sram"):
        stored_weights = vela.encoded_weight_bytes if vela.dram_weight_bytes else 0
        return max(0, int(vela.dram_used_kib * 1024) - stored_weights)
    return int(vela.sram_used_kib * 1024)


def fits_summary(
    target: Target, after: Analysis, vela: VelaResult | None, vela_file_bytes: int | None
) -> dict[str, Any]:
    """Does the model fit the SRAM arena, and the platform's memory?

    Platform need = the Vela-compiled file (weights + command stream) + the
    activation arena Vela allocated. Without Vela, the estimate uses int8 weight
    bytes and the peak live activation bytes.
    """
    arena = target.arena_cache_bytes
    sram = {
        "peak_activation_bytes": after.peak_activation_bytes,
        "arena_cache_bytes": arena,
        "fits": None if arena is None else after.peak_activation_bytes <= arena,
    }
    if vela is not None and vela_file_bytes is not None:
        required = vela_file_bytes + vela_arena_bytes(target, vela)
        basis = "vela"
    else:
        required = after.weight_bytes + after.peak_activation_bytes
        basis = "estimate"
    limit = target.platform_memory_bytes
    if limit is None:
        fits, message = None, f"platform memory of {target.platform} unknown; needs {_mib(required)}"
    elif required <= limit:
        fits, message = True, f"fits: {_mib(required)} <= {_mib(limit)} ({target.platform})"
    else:
        fits, message = False, f"does not fit: {_mib(required)} > {_mib(limit)} ({target.platform})"
    platform = {
        "required_bytes": required,
        "limit_bytes": limit,
        "platform": target.platform,
        "basis": basis,
        "fits": fits,
        "message": message,
    }
    return {"sram": sram, "platform": platform}


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def report_json_bytes(data: object) -> bytes:
    """report.json's exact bytes, for writing and for the in-memory result alike."""
    return (json.dumps(data, indent=2, sort_keys=False) + "\n").encode("utf-8")
