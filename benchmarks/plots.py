"""PNG plots of every suite (matplotlib, Agg backend): labelled axes with units, log scales
where a figure spans decades."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter  # noqa: E402

from .netmodel import NETWORKS  # noqa: E402

Rows = Sequence[dict[str, Any]]
STYLE = {"batched": dict(color="tab:blue", marker="o"), "naive": dict(color="tab:red", marker="s"),
         "plaintext": dict(color="tab:gray", marker="^")}


def _series(rows: Rows, x: str, y: str, scale: float = 1.0) -> tuple[list, list, list | None]:
    """x, y and (if the row has ``y_min``/``y_max``) asymmetric error bars, skipping empty cells."""
    kept = [r for r in rows if r.get(y) is not None]
    xs, ys = [r[x] for r in kept], [r[y] * scale for r in kept]
    if kept and f"{y}_min" in kept[0]:
        return xs, ys, [[v - r[f"{y}_min"] * scale for v, r in zip(ys, kept)],
                        [r[f"{y}_max"] * scale - v for v, r in zip(ys, kept)]]
    return xs, ys, None


def _line(ax: Any, rows: Rows, x: str, y: str, label: str, style: str, scale: float = 1.0, **extra: Any) -> None:
    xs, ys, err = _series(rows, x, y, scale)
    if xs:
        ax.errorbar(xs, ys, yerr=err, label=label, capsize=3, **{**STYLE[style], **extra})


def _log_x_at(ax: Any, values: Sequence[float], labels: Sequence[str] | None = None) -> None:
    """Log x axis with ticks exactly at the measured points."""
    ax.set_xscale("log")
    ax.set_xticks(list(values), list(labels) if labels is not None else [f"{v:g}" for v in values])
    ax.xaxis.set_minor_formatter(NullFormatter())


def _plain_log_y(ax: Any) -> None:
    """Log y axis with plain numbers at 1, 2, 5 x 10^k (for figures spanning a decade or two)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


def comparison_plot(rows: Rows, x: str, xlabel: str, path: Path, *, log_x: bool) -> str:
    """Seconds per query, rounds per batch, MB per query and server peak RSS vs ``x``."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    (time_ax, rounds_ax), (bytes_ax, memory_ax) = axes
    for prefix in ("batched", "naive"):
        _line(time_ax, rows, x, f"{prefix}_seconds_per_query", f"{prefix} (MPC)", prefix)
        _line(rounds_ax, rows, x, f"{prefix}_rounds_per_batch", prefix, prefix)
        _line(bytes_ax, rows, x, f"{prefix}_bytes_per_query", prefix, prefix, scale=1e-6)
        _line(memory_ax, rows, x, f"{prefix}_server_peak_mib", f"{prefix}: largest server", prefix)
    _line(time_ax, rows, x, "plaintext_seconds_per_query", "plaintext ensemble", "plaintext")
    points = sorted({r[x] for r in rows})
    for ax, ylabel in ((time_ax, "seconds per query (end to end)"), (rounds_ax, "MPC rounds per batch (per server)"),
                       (bytes_ax, "MB sent per query (all servers)"), (memory_ax, "peak RSS (MiB)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        if log_x:
            _log_x_at(ax, points)
        else:
            ax.set_xticks(points)
    time_ax.set_yscale("log")
    _plain_log_y(rounds_ax)
    _plain_log_y(bytes_ax)
    fig.suptitle("Batched (stacked) vs naive CrypTen vs plaintext, measured on one host (median, min–max)")
    return _save(fig, path)


def model_plot(rows: Rows, x: str, xlabel: str, path: Path) -> str:
    """Modelled seconds per batch on each network, batched vs naive (a MODEL, not a measurement)."""
    fig, axes = plt.subplots(1, len(NETWORKS), figsize=(5.5 * len(NETWORKS), 4.5), squeeze=False)
    for ax, network in zip(axes[0], NETWORKS):
        for prefix in ("batched", "naive"):
            _line(ax, rows, x, f"{prefix}_model_{network.name}_seconds_per_batch", prefix, prefix)
        ax.set(xlabel=xlabel, ylabel="estimated seconds per batch", title=network.label)
        _plain_log_y(ax)
        _log_x_at(ax, sorted({r[x] for r in rows}))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("MODEL, not a measurement: measured MPC seconds + rounds × RTT + bytes / bandwidth")
    return _save(fig, path)


def batch_plot(rows: Rows, path: Path) -> str:
    """Throughput and seconds per query vs batch size."""
    fig, (tput_ax, time_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    _line(tput_ax, rows, "batch", "queries_per_second", "batched (MPC)", "batched")
    _line(time_ax, rows, "batch", "batched_seconds_per_query", "batched (MPC)", "batched")
    _line(time_ax, rows, "batch", "plaintext_seconds_per_query", "plaintext ensemble", "plaintext")
    for ax, ylabel in ((tput_ax, "throughput (queries per second)"), (time_ax, "seconds per query")):
        ax.set(xlabel="batch size (queries per call)", ylabel=ylabel)
        _log_x_at(ax, sorted({r["batch"] for r in rows}))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    _plain_log_y(tput_ax)
    time_ax.set_yscale("log")
    fig.suptitle("Batch size (K = 10, N = 2), measured on one host (median, min–max)")
    return _save(fig, path)


def privacy_plot(rows: Rows, dataset: str, path: Path) -> str:
    """Private accuracy vs epsilon per (aggregation, mechanism), with the plaintext reference lines."""
    rows = [r for r in rows if r["dataset"] == dataset]
    aggregations = list(dict.fromkeys(r["aggregation"] for r in rows))
    mechanisms = list(dict.fromkeys(r["mechanism"] for r in rows))
    finite = sorted({r["epsilon"] for r in rows if math.isfinite(r["epsilon"])})
    inf_at = 2 * finite[-1] if finite else 1.0  # where epsilon = inf is drawn
    fig, axes = plt.subplots(len(aggregations), len(mechanisms), squeeze=False,
                             figsize=(5.5 * len(mechanisms), 4 * len(aggregations)))
    for i, agg in enumerate(aggregations):
        for j, mech in enumerate(mechanisms):
            ax = axes[i][j]
            group = sorted((r for r in rows if r["aggregation"] == agg and r["mechanism"] == mech),
                           key=lambda r: r["epsilon"])
            xs = [r["epsilon"] if math.isfinite(r["epsilon"]) else inf_at for r in group]
            measured = [(x, r["private_accuracy"]) for x, r in zip(xs, group) if r["private_accuracy"] is not None]
            if measured:
                ax.plot(*zip(*measured), "o-", color="tab:blue", label="private (MPC + DP)")
            ax.plot(xs, [r["reference_noisy_accuracy"] for r in group], "--", color="tab:green",
                    label="plaintext + same noise (mean)")
            ax.axhline(group[0]["plaintext_ensemble_accuracy"], color="tab:gray", label="plaintext ensemble")
            ax.axhline(group[0]["best_single_owner_accuracy"], color="tab:orange", linestyle=":",
                       label="best single owner")
            _log_x_at(ax, [*finite, inf_at], [*(f"{e:g}" for e in finite), "∞"])
            ax.set(xlabel="ε per query (calibration unit, not the client's total)", ylabel="test accuracy", title=f"{dataset}: {agg}, {mech}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize="small")
    return _save(fig, path)


def make_plots(results: dict[str, Rows], out: Path) -> list[str]:
    """Every plot the available results allow; returns the file names."""
    made = []
    if results.get("owners"):
        made.append(comparison_plot(results["owners"], "owners", "owners K", out / "owners.png", log_x=True))
        made.append(model_plot(results["owners"], "owners", "owners K", out / "owners_netmodel.png"))
    if results.get("servers"):
        made.append(comparison_plot(results["servers"], "servers", "servers N", out / "servers.png", log_x=False))
    if results.get("batch"):
        made.append(batch_plot(results["batch"], out / "batch.png"))
    for dataset in dict.fromkeys(r["dataset"] for r in results.get("privacy", [])):
        made.append(privacy_plot(results["privacy"], dataset, out / f"privacy_{dataset}.png"))
    return made
