#!/usr/bin/env python3
"""Plot proxy_bench.py results: throughput and p99 of every leg, one row per scenario.

    .venv/bin/python bench/plot.py OUT.png bench/results/<time>-all.json [more.json ...]

proxy_bench.py calls :func:`plot` itself when matplotlib imports, else runs this file with the
repo's venv. Needs matplotlib (``.venv/bin/pip install matplotlib``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {"nginx": "#7f7f7f", "direct": "#c7c7c7"}
TREE_COLORS = ("#1f77b4", "#ff7f0e")


def _color(summary: dict, leg: str, trees: list[str]) -> str:
    s = summary[leg]
    if s["kind"] in COLORS:
        return COLORS[s["kind"]]
    idx = trees.index(s.get("tree", "")) if s.get("tree", "") in trees else 0
    return TREE_COLORS[idx % len(TREE_COLORS)]


def _label(v: float, unit: str) -> str:
    if unit == "ms":
        return f"{v:.2f}"
    return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"


def plot(results: list[dict], out: Path) -> None:
    rows = [r for r in results if r.get("summary")]
    if not rows:
        raise ValueError("no measured scenario to plot")
    fig, axes = plt.subplots(len(rows), 2, figsize=(12, 2.9 * len(rows) + 0.6), squeeze=False)
    for (ax_rps, ax_p99), r in zip(axes, rows, strict=True):
        summary = r["summary"]
        legs = list(summary)
        trees = [t["label"] for t in r.get("trees", [{"label": ""}])]
        colors = [_color(summary, leg, trees) for leg in legs]
        rps = [summary[leg]["rps"] for leg in legs]
        p99 = [summary[leg]["p99_us"] / 1000 for leg in legs]
        line = next((f["ratio_line"] for f in r.get("figures", {}).values()), "")
        for ax, values, title, unit in ((ax_rps, rps, "req/s (median)", "req/s"),
                                        (ax_p99, p99, "p99 latency (ms)", "ms")):
            bars = ax.barh(legs, values, color=colors)
            ax.invert_yaxis()
            ax.set_title(f"{r['scenario']}: {title}", fontsize=9, loc="left")
            ax.tick_params(labelsize=8)
            for bar, v in zip(bars, values, strict=True):
                ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " " + _label(v, unit),
                        va="center", fontsize=7)
            ax.margins(x=0.18)
        ax_rps.set_xlabel(line, fontsize=8)
    host = next((r.get("host") for r in results if r.get("host")), {}) or {}
    started = next((r.get("started", "") for r in results), "")
    fig.suptitle(f"sixgate vs nginx: {host.get('cpus', '?')} vCPU {host.get('cpu', '')}, "
                 f"commit {host.get('git', '?')}{' (dirty)' if host.get('git_dirty') else ''}, "
                 f"{started[:16]}  (noisy shared machine: compare within a row)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def load(paths: list[str]) -> list[dict]:
    results: list[dict] = []
    for p in paths:
        data = json.loads(Path(p).read_text())
        results += data.get("scenarios", [data])
    return results


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    plot(load(sys.argv[2:]), Path(sys.argv[1]))
