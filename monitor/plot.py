"""A per-ticker sentiment series as a PNG (matplotlib, an optional dependency: pip install 'sentimon[plot]')."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path


def plot_series(ticker: str, series: list[tuple[datetime, float, int, int, int]], path: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("plotting needs matplotlib: pip install 'sentimon[plot]'") from exc
    times = [row[0] for row in series]
    figure, (score_axis, count_axis) = plt.subplots(
        2, 1, sharex=True, figsize=(10, 5), gridspec_kw={"height_ratios": [3, 1]}
    )
    score_axis.axhline(0, color="grey", linewidth=0.8)
    score_axis.plot(times, [row[1] for row in series], marker="o", color="tab:blue")
    score_axis.set_ylim(-1.05, 1.05)
    score_axis.set_ylabel("mean score  P(+) − P(−)")
    score_axis.set_title(f"{ticker}: news sentiment")
    count_axis.bar(times, [row[3] for row in series], color="tab:green", label="positive", width=0.02)
    count_axis.bar(times, [-row[4] for row in series], color="tab:red", label="negative", width=0.02)
    count_axis.set_ylabel("articles")
    count_axis.legend(loc="upper left", fontsize="small")
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
