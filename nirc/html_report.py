"""``report.html``: the report a person reads, rendered from ``report.json`` alone.

Self-contained (inline CSS and SVG, no script, no network) so it can be mailed,
archived with the artifacts, and opened on an air-gapped machine.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d232a;max-width:1100px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.sub{color:#5b6570;margin-bottom:16px}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #d8dde3;border-radius:6px;padding:8px 12px;min-width:140px}
.card b{display:block;font-size:18px} .card span{color:#5b6570;font-size:12px}
table{border-collapse:collapse;margin:6px 0} td,th{border-bottom:1px solid #e3e6ea;padding:3px 10px;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.bad{color:#b3261e;font-weight:600} .ok{color:#1b7f3b;font-weight:600} .warn{color:#9a6700}
svg text{font:11px system-ui,sans-serif;fill:#1d232a}
"""


DASH = "&#8211;"  # an en dash, written as an entity so the source stays ASCII


def _e(value: object) -> str:
    return DASH if value == DASH else html.escape(str(value))


def _num(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return DASH
    return f"{value:,.{digits}f}"


def _card(label: str, value: str, cls: str = "") -> str:
    return f'<div class="card"><b class="{cls}">{_e(value)}</b><span>{_e(label)}</span></div>'


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], numeric: Sequence[int] = ()) -> str:
    head = "".join(f'<th class="{"n" if i in numeric else ""}">{_e(h)}</th>' for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"n" if i in numeric else ""}">{_e(c)}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


BAR_LIMIT = 40
"""Layers drawn as bars; the table below the chart lists every layer."""


def _merged_layers(layers: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """Vela may split one op into several NPU ops with the same name: one row per name."""
    merged: dict[str, list[float]] = {}
    for layer in layers:
        entry = merged.setdefault(str(layer["name"]), [0.0, 0.0, 0.0])
        entry[0] += float(layer["op_cycles"])
        entry[1] += float(layer["mac_count"])
        entry[2] = max(entry[2], float(layer["util_pct"]))
    return merged


def layer_table(layers: Sequence[dict[str, Any]]) -> str:
    """Every layer in Vela's order (ops Vela split are summed): op, where it runs, cycles, MACs, utilisation."""
    merged = _merged_layers(layers)
    first: dict[str, dict[str, Any]] = {}
    pct: dict[str, float] = {}
    for layer in layers:
        first.setdefault(str(layer["name"]), layer)
        pct[str(layer["name"])] = pct.get(str(layer["name"]), 0.0) + float(layer.get("network_pct", 0.0))
    rows = [
        (
            name,
            layer.get("original_op", ""),
            layer.get("target", ""),
            _num(merged[name][0]),
            f"{pct[name]:.1f}",
            _num(merged[name][1]),
            f"{merged[name][2]:.1f}",
        )
        for name, layer in first.items()
    ]
    headers = ("layer", "op", "runs on", "cycles", "% of network", "MACs", "MAC util %")
    return _table(headers, rows, numeric=(3, 4, 5, 6))


def layer_cycles_svg(layers: Sequence[dict[str, Any]], limit: int = BAR_LIMIT) -> str:
    """Horizontal bars of Vela's per-layer cycles, most expensive first, with MAC utilisation."""
    ranked = sorted(_merged_layers(layers).items(), key=lambda kv: -kv[1][0])[:limit]
    if not ranked:
        return "<p>No per-layer data.</p>"
    top = max(v[0] for _, v in ranked) or 1.0
    label_w, bar_w, row_h = 260, 560, 16
    height = row_h * len(ranked) + 8
    parts = [f'<svg width="{label_w + bar_w + 170}" height="{height}" role="img" aria-label="per-layer cycles">']
    for i, (name, (cycles, _macs, util)) in enumerate(ranked):
        y = 4 + i * row_h
        width = max(1.0, bar_w * cycles / top)
        shown = name if len(name) <= 40 else "…" + name[-39:]
        parts.append(f'<text x="{label_w - 6}" y="{y + 11}" text-anchor="end">{_e(shown)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{width:.1f}" height="{row_h - 4}" fill="#3f7cc0"/>')
        parts.append(f'<text x="{label_w + width + 6:.1f}" y="{y + 11}">{cycles:,.0f} cyc · {util:.0f}% MAC</text>')
    parts.append("</svg>")
    return "".join(parts)


def _ticks(top: float) -> list[float]:
    """Round y-axis ticks (1, 2 or 5 x 10^k bytes apart), about four of them up to ``top``."""
    raw = top / 4
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [i * step for i in range(int(top // step) + 1)]


def _kib(value: float) -> str:
    return f"{value / 1024:,.0f}" if value >= 10 * 1024 else f"{value / 1024:,.1f}"


def memory_timeline_svg(timeline: Sequence[dict[str, Any]], arena_bytes: int | None) -> str:
    """Live int8 activation bytes per step of the schedule, with the SRAM arena as a line."""
    if not timeline:
        return "<p>No schedule data.</p>"
    values = [int(t["live_bytes"]) for t in timeline]
    top = max([*values, arena_bytes or 0, 1])
    w, h, pad = 900, 220, 40
    n = max(1, len(values) - 1)

    def x(i: int) -> float:
        return pad + (w - 2 * pad) * i / n

    def y(v: float) -> float:
        return h - pad + -(h - 2 * pad) * v / top

    points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
    parts = [f'<svg width="{w}" height="{h}" role="img" aria-label="memory timeline">']
    parts.append(f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#999"/>')
    parts.append(f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#999"/>')
    for tick in _ticks(top):
        ty = y(tick)
        parts.append(f'<line x1="{pad - 4}" y1="{ty:.1f}" x2="{w - pad}" y2="{ty:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{pad - 6}" y="{ty + 4:.1f}" text-anchor="end">{_kib(tick)}</text>')
    parts.append(f'<text x="{pad}" y="{pad - 10}">live KiB</text>')
    parts.append(f'<polyline points="{points}" fill="none" stroke="#3f7cc0" stroke-width="1.5"/>')
    if arena_bytes:
        ay = y(arena_bytes)
        parts.append(
            f'<line x1="{pad}" y1="{ay:.1f}" x2="{w - pad}" y2="{ay:.1f}" stroke="#b3261e" stroke-dasharray="5,4"/>'
        )
        label = f"arena {arena_bytes / 1024:.0f} KiB"
        parts.append(f'<text x="{w - pad}" y="{ay - 4:.1f}" text-anchor="end">{label}</text>')
    peak = max(range(len(values)), key=values.__getitem__)
    # Keep the label inside the plot when the peak sits near either edge.
    anchor = "start" if peak < n * 0.2 else "end" if peak > n * 0.8 else "middle"
    label = f"peak {values[peak] / 1024:.1f} KiB at {_e(timeline[peak]['step'])}"
    parts.append(f'<text x="{x(peak):.1f}" y="{y(values[peak]) - 6:.1f}" text-anchor="{anchor}">{label}</text>')
    parts.append(f'<text x="{pad}" y="{h - 12}">step 0</text>')
    parts.append(f'<text x="{w - pad}" y="{h - 12}" text-anchor="end">step {len(values) - 1}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _percent(value: float | None) -> str:
    """Agreement as the CLI prints it: 100%, not 1.0."""
    return DASH if value is None else f"{value:.0%}"


def _npu_validation(npu: dict[str, Any] | None) -> tuple[str, str]:
    """(verdict, css class) of executing Vela's output against LiteRT on the int8 model."""
    if not npu:
        return "not run", ""
    if "bit_exact" not in npu:
        return f"not executed: {npu.get('skipped') or npu.get('error') or 'unknown reason'}", "warn"
    if npu["bit_exact"]:
        return f"bit-exact on {npu['samples']} inputs ({npu['method']})", "ok"
    return f"max difference {npu['max_abs_diff_lsb']} LSB ({npu['method']})", "bad"


def _sram_card(fits: dict[str, Any], memory: dict[str, Any]) -> str:
    """The arena check is about speed, the platform check about running at all: say which is which."""
    sram = fits.get("sram") or {}
    arena = sram.get("arena_cache_bytes")
    peak = memory.get("peak_bytes", sram.get("peak_activation_bytes"))
    if not arena or peak is None:
        return _card("SRAM arena", "shared SRAM (no separate arena)")
    if sram.get("fits") is False or peak > arena:
        text = f"activations {peak / 1024:,.0f} KiB > {arena / 1024:,.0f} KiB: Vela spills to DRAM (slower, still runs)"
        return _card("SRAM arena", text, "warn")
    return _card("SRAM arena", f"activations {peak / 1024:,.1f} KiB <= {arena / 1024:,.0f} KiB", "ok")


def render(report: dict[str, Any]) -> str:
    target = report["target"]
    before, after = report["model"]["before"], report["model"]["after"]
    vela = report.get("vela") or {}
    fits = report.get("fits") or {}
    platform = fits.get("platform") or {}
    memory = report.get("memory") or {}
    validation = report.get("validation") or {}
    outputs = validation.get("outputs", [])
    placement = report.get("placement") or {}
    ops = placement.get("observed") or placement.get("predicted") or {}
    npu_verdict, npu_class = _npu_validation(validation.get("npu"))
    calibration = report.get("calibration") or {}
    peak_bytes = memory.get("peak_bytes", after["peak_activation_bytes"])
    cards = [
        _card("Vela latency", f"{vela['inference_time_ms']:.3f} ms") if vela else _card("Vela", "not run"),
        _card("MACs", _num(after["macs"])),
        _card("parameters", _num(after["params"])),
        _card("peak activations (Vela order, 16-ch bricks)", f"{peak_bytes / 1024:.1f} KiB"),
    ]
    if vela:
        cards.append(_card("SRAM used", f"{vela['sram_used_kib']:.1f} KiB"))
        cards.append(_card("DRAM feature-map reads", _num(vela["dram_feature_map_read_bytes"]) + " B"))
    if ops:
        split = f"{ops['npu_ops']} / {ops['cpu_ops']}"
        cards.append(_card("TFLite ops on NPU / CPU", split, "bad" if ops["cpu_ops"] else "ok"))
    for out in outputs:
        cards.append(_card(f"int8 SNR {out['name']}", f"{out['snr_db']} dB", "bad" if out.get("low_snr") else ""))
    if vela:
        cards.append(_card("compiled NPU model vs int8 TFLite", npu_verdict, npu_class))
    if calibration:
        kind = "bad" if calibration.get("synthetic") else ""
        cards.append(_card("calibration", f"{calibration['source']} ({calibration['method']})", kind))
    if platform:
        status = "ok" if platform.get("fits") else "bad" if platform.get("fits") is False else "warn"
        cards.append(_card("platform memory (weights + arena)", str(platform.get("message", "")), status))
    cards.append(_sram_card(fits, memory))

    model_rows = [
        (key, _num(before[key]), _num(after[key])) for key in ("nodes", "macs", "params", "weight_bytes")
    ]
    if "peak_bytes_before" in memory:
        model_rows.append(
            ("peak activations (Vela order, bytes)", _num(memory["peak_bytes_before"]), _num(memory["peak_bytes"]))
        )
    pass_rows = [
        (
            p["name"],
            "exact" if p["exact"] else "lossy",
            "changed" if p["changed"] else DASH,
            "yes" if p.get("verified") else "",
            f"{p['seconds'] * 1000:.1f}",
            ", ".join(f"{k}={v}" for k, v in p.get("stats", {}).items()),
        )
        for p in report["passes"]
    ]
    sections = [
        f"<h1>nirc report: {_e(report['source'])}</h1>",
        f'<div class="sub">target {_e(target["name"])} · {_e(target["system_config"])} · '
        f'{_e(target["memory_mode"])} · nirc {_e(report["nirc_version"])}</div>',
        f'<div class="cards">{"".join(cards)}</div>',
    ]
    for warning in report.get("warnings", []):
        sections.append(f'<p class="warn">⚠ {_e(warning)}</p>')
    sections.append("<h2>Model before / after passes</h2>")
    sections.append(_table(("", "before", "after"), model_rows, numeric=(1, 2)))
    if vela:
        layers = vela.get("layers", [])
        shown = min(BAR_LIMIT, len(_merged_layers(layers)))
        sections.append(f"<h2>Per-layer cycles (Vela): the {shown} slowest of {len(_merged_layers(layers))}</h2>")
        sections.append(layer_cycles_svg(layers))
        sections.append(f"<h2>All {len(_merged_layers(layers))} layers (Vela, in its order)</h2>")
        sections.append(
            f"<p>Vela runs the {ops.get('npu_ops', DASH)} NPU-placed TFLite ops as {vela['npu_ops']} NPU operations "
            "after its own fusions, packed into one ethos-u custom operator per NPU subgraph.</p>"
        )
        sections.append(layer_table(layers))
        cpu = vela.get("cpu_op_list", [])
        if cpu:
            sections.append("<h2>Ops on the CPU</h2>")
            sections.append(_table(("op", "type", "reason"), [(c["name"], c["op_type"], c["reason"]) for c in cpu]))
    sections.append("<h2>Activation memory over the schedule</h2>")
    sections.append(memory_timeline_svg(report.get("memory_timeline", []), target.get("arena_cache_bytes")))
    sections.append("<h2>Passes</h2>")
    sections.append(_table(("pass", "kind", "result", "verified", "ms", "what changed"), pass_rows, numeric=(4,)))
    if outputs:
        sections.append("<h2>int8 vs float validation</h2>")
        if calibration:
            sections.append(
                f"<p>Calibration: {_e(calibration['source'])}, {calibration['samples']} samples, "
                f"{_e(calibration['method'])} ranges.</p>"
            )
        rows = [
            (o["name"], o["snr_db"], _num(o.get("max_abs_error_steps"), 2), _percent(o.get("top1_agreement")))
            for o in outputs
        ]
        sections.append(_table(("output", "SNR dB", "max error (LSB)", "top-1 agreement"), rows, numeric=(1, 2)))
    if vela:
        sections.append("<h2>Compiled NPU model vs int8 TFLite</h2>")
        sections.append(f'<p class="{npu_class}">{_e(npu_verdict)}</p>')
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>nirc report: {_e(report['source'])}</title><style>{_CSS}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )
