"""The Pareto plot of a search: Vela latency against MACs, one marker per family, the budget as a line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nirc.search.search import SearchResult


def plot_pareto(result: SearchResult, path: Path) -> Path | None:
    """Write ``path`` (PNG); None when matplotlib (the ``plots`` extra) is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig: Any
    fig, ax = plt.subplots(figsize=(8, 5))
    families = sorted({r.family for r in result.rows})
    markers = "osD^v<>ph*"
    for i, family in enumerate(families):
        rows = [r for r in result.rows if r.family == family and r.latency_ms is not None]
        ax.scatter([r.latency_ms or 0.0 for r in rows], [r.macs / 1e6 for r in rows], marker=markers[i % len(markers)],
                   label=family, alpha=0.75)  # fmt: skip
    front = sorted((r for r in result.rows if r.pareto), key=lambda r: r.latency_ms or 0.0)
    ax.plot([r.latency_ms or 0.0 for r in front], [r.macs / 1e6 for r in front], "k--", lw=1, label="Pareto front")
    for r in result.recommended:
        ax.annotate(r.name, (r.latency_ms or 0.0, r.macs / 1e6), fontsize=7, xytext=(4, 4), textcoords="offset points")
    if result.budget.latency_ms is not None:
        ax.axvline(result.budget.latency_ms, color="r", lw=1, label=f"budget {result.budget.latency_ms} ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"Vela latency on {result.target} (ms)")
    ax.set_ylabel("MACs (M)")
    ax.set_title(f"nirc search: {result.task}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
    return path
