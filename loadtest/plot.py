"""The latency-vs-offered-load picture: percentiles of latency (and TTFT) for each rate of a sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOTTED = ("p50", "p90", "p99", "p99.9")


def plot_sweep(series: dict[str, list[dict[str, Any]]], out: Path | str, title: str) -> Path:
    """One PNG: x the offered load (req/s), y latency in ms (log), one line per percentile and
    series (a series is one server's sweep), so two servers' curves can share the picture."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the plot only goes to a file
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    styles = ("-", "--", ":", "-.")
    for (name, reports), style in zip(series.items(), styles * len(series), strict=False):
        reports = sorted(reports, key=lambda r: r["rate"])
        rates = [r["rate"] for r in reports]
        for q, color in zip(PLOTTED, ("C0", "C1", "C2", "C3"), strict=True):
            ax.plot(rates, [r["latency_ms"][q] for r in reports], style, color=color, marker="o", label=f"{name} {q}")
    ax.set_xlabel("offered load (requests/s, Poisson arrivals)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
