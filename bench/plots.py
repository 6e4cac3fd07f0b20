"""PNG plots of the benchmark results (matplotlib, Agg backend: no display needed).

Every function takes plain data (lists and dicts, as stored in results.json) and a path, so the
plots can be redrawn from a results file. Imports matplotlib and the standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

# Select the non-interactive backend before pyplot is imported anywhere.
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]


def _save(fig: plt.Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_engine_latency(
    labels: Sequence[str], series: Mapping[str, Sequence[float | None]], path: str | Path
) -> Path:
    """Median latency per bucket (x: buckets in ladder order, labelled "BxS"), one line per mode.

    `series[mode][i]` is the latency in ms for `labels[i]`, None where not measured (for
    example raw replay on a CPU).
    """
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(labels) + 2), 4.2))
    xs = list(range(len(labels)))
    for name, ys in series.items():
        if len(ys) != len(labels):
            raise ValueError(f"series {name!r} has {len(ys)} points for {len(labels)} buckets")
        pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=name)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel("bucket (batch x seq_len)")
    ax.set_ylabel("median latency (ms, log)")
    ax.set_title("Runner latency per bucket")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_service(
    concurrency: Sequence[int],
    throughput: Mapping[str, Sequence[float | None]],
    p50_ms: Mapping[str, Sequence[float | None]],
    p99_ms: Mapping[str, Sequence[float | None]],
    path: str | Path,
    raw_runner_rps: float | None = None,
) -> Path:
    """Two panels against the number of concurrent clients: throughput, and p50/p99 latency."""
    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, ys in throughput.items():
        _line(ax_t, concurrency, ys, label=name, marker="o")
    if raw_runner_rps is not None:
        ax_t.axhline(raw_runner_rps, color="grey", ls="--", lw=1, label="raw runner (no HTTP)")
    for ax in (ax_t, ax_l):
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(concurrency))
        ax.set_xticklabels([str(c) for c in concurrency])
        ax.minorticks_off()
    ax_t.set_xlabel("concurrent clients")
    ax_t.set_ylabel("throughput (requests/s)")
    served = [y for ys in throughput.values() for y in ys if y]
    if raw_runner_rps and served and raw_runner_rps > 5 * max(served):
        # On a GPU the raw runner is 10x the HTTP servers: a linear axis would flatten them.
        ax_t.set_yscale("log")
        ax_t.set_ylabel("throughput (requests/s, log)")
    ax_t.set_title("Throughput")
    ax_t.grid(True, alpha=0.3)
    ax_t.legend(fontsize=8)
    for i, (name, ys) in enumerate(p50_ms.items()):
        color = f"C{i}"
        _line(ax_l, concurrency, ys, label=f"{name} p50", marker="o", color=color)
        _line(ax_l, concurrency, p99_ms[name], label=f"{name} p99", ls="--", color=color)
    ax_l.set_yscale("log")
    ax_l.set_xlabel("concurrent clients")
    ax_l.set_ylabel("latency (ms, log)")
    ax_l.set_title("Latency (p50 solid, p99 dashed)")
    ax_l.grid(True, which="both", alpha=0.3)
    ax_l.legend(fontsize=7)
    return _save(fig, path)


def plot_hit_rate(
    curves: Series,
    path: str | Path,
    title: str = "Graph hit rate over the trace",
    captured: Series | None = None,
) -> Path:
    """Hit rate (per window, %) against requests served, one line per policy; optionally the
    number of cached graphs on a second panel."""
    panels = 2 if captured else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels + 0.5, 4.2), squeeze=False)
    ax = axes[0][0]
    for name, (xs, ys) in curves.items():
        ax.plot(list(xs), [100.0 * y for y in ys], label=name)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("requests served")
    ax.set_ylabel("hit rate in window (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    if captured:
        ax2 = axes[0][1]
        for name, (xs, ys) in captured.items():
            ax2.step(list(xs), list(ys), where="post", label=name)
        ax2.set_xlabel("requests served")
        ax2.set_ylabel("graphs cached")
        ax2.set_title("Graphs in the cache")
        ax2.grid(True, alpha=0.3)
        ax2.legend()
    return _save(fig, path)


def _line(ax: plt.Axes, xs: Sequence[float], ys: Sequence[float | None], **kwargs: object) -> None:
    if len(ys) != len(xs):
        raise ValueError(f"{len(ys)} values for {len(xs)} x positions")
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], **kwargs)  # type: ignore[arg-type]
