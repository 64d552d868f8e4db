"""``report.json``: the stable, versioned record of one ``nirc optimize`` run.

Schema (version 1), top-level keys:
  schema_version (int), nirc_version (str), source (str),
  target {name, accelerator_config, system_config, memory_mode, arena_cache_bytes,
          platform, platform_memory_bytes},
  passes [{name, exact, changed, seconds, stats, verified}],
  model {before, after}: each {macs, params, weight_bytes, peak_activation_bytes, nodes}.
Later stages add ``vela``, ``validation``, ``fits`` and ``warnings``.
Only ``seconds`` values vary between identical runs; everything else is byte-stable.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nirc.analysis import Analysis
from nirc.pass_manager import PassRecord
from nirc.target import Target

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
) -> dict[str, Any]:
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "nirc_version": version,
        "source": source,
        "target": target_summary(target),
        "passes": [r.to_json() for r in records],
        "model": {"before": model_summary(before), "after": model_summary(after)},
        "warnings": [],
    }


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
