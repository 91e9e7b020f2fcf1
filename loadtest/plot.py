"""The latency-vs-offered-load picture: percentiles of latency (and TTFT) for each rate of a sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOTTED = ("p50", "p90", "p99", "p99.9")


def plot_sweep(
    series: dict[str, list[dict[str, Any]]], out: Path | str, title: str, percentiles: tuple[str, ...] = PLOTTED
) -> Path:
    """One PNG: x the offered load (req/s), y latency in ms, both log; one colour per series (a
    series is one server's sweep, so several servers share the picture), one line style per
    percentile."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the plot only goes to a file
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    styles = ("-", "--", ":", "-.")
    for i, (name, reports) in enumerate(series.items()):
        reports = sorted(reports, key=lambda r: r["rate"])
        rates = [r["rate"] for r in reports]
        for q, style in zip(percentiles, styles, strict=False):
            latencies = [r["latency_ms"][q] for r in reports]
            ax.plot(rates, latencies, style, color=f"C{i}", marker="o", markersize=3, label=f"{name} {q}")
    ax.set_xlabel("offered load (requests/s, Poisson arrivals)")
    ax.set_ylabel("latency (ms)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
