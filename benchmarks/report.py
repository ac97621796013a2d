"""Writing results: one CSV per suite, JSON, and the ``summary.md`` key tables."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Sequence

from .netmodel import NETWORKS
from .privacy import TOLERANCE, smallest_epsilon_within

Rows = Sequence[dict[str, Any]]


def write_csv(rows: Rows, path: Path) -> None:
    """All rows (same keys) to ``path``; None is written as an empty cell."""
    columns = list(dict.fromkeys(key for row in rows for key in row))  # rows may lack columns (failed points)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _parse(cell: str) -> Any:
    if cell == "":
        return None
    for kind in (int, float):
        try:
            return kind(cell)
        except ValueError:
            pass
    return cell


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows written by :func:`write_csv`, with numbers parsed back (empty cells as None)."""
    with open(path, newline="") as handle:
        return [{key: _parse(cell) for key, cell in row.items()} for row in csv.DictReader(handle)]


def write_json(data: dict[str, Any], path: Path) -> None:
    """``data`` as indented JSON (non-finite floats as strings)."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    path.write_text(json.dumps(clean(data), indent=2) + "\n")


def _fmt(value: Any, spec: str = ".3g", scale: float = 1.0) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return format(value * scale if scale != 1.0 else value, spec)


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(line) + " |" for line in lines), ""]


def _range(row: dict[str, Any], column: str, scale: float = 1.0) -> str:
    if row.get(column) is None:
        return "–"
    return (f"{_fmt(row[column], '.3g', scale)} ({_fmt(row[f'{column}_min'], '.3g', scale)}–"
            f"{_fmt(row[f'{column}_max'], '.3g', scale)})")


def _comparison_table(rows: Rows, key: str) -> list[str]:
    header = [key, "batched s/query (min–max)", "naive s/query (min–max)", "naive/batched time",
              "batched rounds/batch", "naive rounds/batch", "naive/batched rounds", "batched MB/query",
              "naive/batched bytes", "plaintext ms/query", "batched/plaintext time", "error"]
    lines = [[str(r[key]), _range(r, "batched_seconds_per_query"), _range(r, "naive_seconds_per_query"),
              _fmt(r["naive_over_batched_time"], ".2f"), _fmt(r["batched_rounds_per_batch"], "d"),
              _fmt(r["naive_rounds_per_batch"], "d"), _fmt(r["naive_over_batched_rounds"], ".2f"),
              _fmt(r["batched_bytes_per_query"], ".1f", 1e-6), _fmt(r["naive_over_batched_bytes"], ".3f"),
              _fmt(r["plaintext_seconds_per_query"], ".3g", 1e3), _fmt(r["batched_over_plaintext_time"], ".3g"),
              r["error"] or ""] for r in rows]
    return _table(header, lines)


def _model_table(rows: Rows, key: str) -> list[str]:
    header = [key]
    for n in NETWORKS:
        header += [f"{n.name.upper()} batched s/batch", f"{n.name.upper()} naive s/batch",
                   f"{n.name.upper()} naive/batched"]
    lines = []
    for r in rows:
        line = [str(r[key])]
        for n in NETWORKS:
            line += [_fmt(r[f"batched_model_{n.name}_seconds_per_batch"]),
                     _fmt(r[f"naive_model_{n.name}_seconds_per_batch"]),
                     _fmt(r[f"naive_over_batched_model_{n.name}"], ".2f")]
        lines.append(line)
    return _table(header, lines)


def _batch_table(rows: Rows) -> list[str]:
    header = ["batch", "queries/s (min–max)", "s/query (min–max)", "rounds/batch", "MB/query",
              "plaintext ms/query", "private/plaintext time", "server peak MiB", "error"]
    lines = [[str(r["batch"]), _range(r, "queries_per_second"), _range(r, "batched_seconds_per_query"),
              _fmt(r["batched_rounds_per_batch"], "d"), _fmt(r["batched_bytes_per_query"], ".1f", 1e-6),
              _fmt(r["plaintext_seconds_per_query"], ".3g", 1e3), _fmt(r["batched_over_plaintext_time"], ".3g"),
              _fmt(r["batched_server_peak_mib"], ".0f"), r["error"] or ""] for r in rows]
    return _table(header, lines)


def _privacy_tables(rows: Rows) -> list[str]:
    found = smallest_epsilon_within(rows)
    header = ["dataset", "aggregation", "mechanism", f"smallest ε within {TOLERANCE * 100:g} pts",
              "client's total ε there (all its queries, δ=1e-5, PLD)",
              "private acc. there", "plaintext ensemble acc.", "best single owner acc."]
    lines = [[f["dataset"], f["aggregation"], f["mechanism"], _fmt(f["epsilon"], "g"),
              f"{_fmt(f.get('client_total_epsilon'), '.3g')} ({_fmt(f.get('client_queries'), 'd')} queries)",
              _fmt(f["private_accuracy"], ".3f"), _fmt(f["plaintext_ensemble_accuracy"], ".3f"),
              _fmt(f["best_single_owner_accuracy"], ".3f")] for f in found]
    out = _table(header, lines)
    epsilons = sorted({r["epsilon"] for r in rows})
    groups: dict[tuple, dict[float, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["aggregation"], r["mechanism"]), {})[r["epsilon"]] = r
    header = ["dataset", "aggregation", "mechanism", *(f"ε={_fmt(e, 'g')}" for e in epsilons)]
    lines = [[*key, *(_fmt(group[e]["private_accuracy"], ".3f") + " / " +
                      _fmt(group[e]["reference_noisy_accuracy"], ".3f") if e in group else "–"
                      for e in epsilons)] for key, group in groups.items()]
    out += ["Private accuracy (one MPC run) / expected accuracy of the plaintext histogram with the "
            "same noise (mean of 20 draws):", "", *_table(header, lines)]
    return out


def _largest_completed(rows: Rows, key: str, column: str) -> int | None:
    done = [r[key] for r in rows if r.get(column) is not None]
    return max(done) if done else None


def _memory_lines(results: dict[str, Rows]) -> list[str]:
    lines = []
    owners, servers = results.get("owners", []), results.get("servers", [])
    if owners:
        batched = _largest_completed(owners, "owners", "batched_rounds_per_batch")
        lines.append(f"- largest K completed: batched {batched}, "
                     f"naive {_largest_completed(owners, 'owners', 'naive_rounds_per_batch')} "
                     f"(naive capped at --naive-max-owners)")
    if servers:
        lines.append(f"- largest N completed: {_largest_completed(servers, 'servers', 'batched_rounds_per_batch')}")
    for suite, rows in results.items():
        peaks = [r[c] for r in rows for c in r if c.endswith("server_peak_mib") and r[c] is not None]
        dealer = [r[c] for r in rows for c in r if c.endswith("dealer_peak_mib") and r[c] is not None]
        parent = max((r["parent_peak_mib"] for r in rows if "parent_peak_mib" in r), default=None)
        lines.append(f"- {suite}: largest server peak RSS {_fmt(max(peaks, default=None), '.0f')} MiB, "
                     f"dealer {_fmt(max(dealer, default=None), '.0f')} MiB, "
                     f"parent (cumulative) {_fmt(parent, '.0f')} MiB")
    return lines + [""]


def _key_figures(results: dict[str, Rows]) -> list[str]:
    lines = []
    owners = [r for r in results.get("owners", []) if r["batched_rounds_per_batch"] is not None]
    if owners:
        flat = sorted({r["batched_rounds_per_batch"] for r in owners})
        lines.append(f"- MPC rounds per batch, batched: {', '.join(map(str, flat))} for K = "
                     f"{owners[0]['owners']}..{owners[-1]['owners']}")
    both = [r for r in owners if r["naive_rounds_per_batch"] is not None]
    if both:
        first, last = both[0], both[-1]
        lines += [f"- MPC rounds per batch, naive: {first['naive_rounds_per_batch']} at K = {first['owners']} → "
                  f"{last['naive_rounds_per_batch']} at K = {last['owners']} "
                  f"({_fmt(last['naive_over_batched_rounds'], '.1f')}× the batched protocol)",
                  f"- seconds per query at K = {last['owners']}: batched {_fmt(last['batched_seconds_per_query'])}, "
                  f"naive {_fmt(last['naive_seconds_per_query'])}: naive/batched = "
                  f"{_fmt(last['naive_over_batched_time'], '.2f')} measured on one host; MODEL: "
                  + ", ".join(f"{n.name.upper()} {_fmt(last[f'naive_over_batched_model_{n.name}'], '.2f')}"
                              for n in NETWORKS)]
    batches = [r for r in results.get("batch", []) if r["batched_over_plaintext_time"] is not None]
    if batches:
        big = batches[-1]
        lines.append(f"- private/plaintext time at K = {big['owners']}, batch {big['batch']}: "
                     f"{_fmt(big['batched_over_plaintext_time'], ',.0f')} "
                     f"(private {_fmt(big['batched_seconds_per_query'])} s/query, "
                     f"plaintext {_fmt(big['plaintext_seconds_per_query'], '.3g', 1e3)} ms/query)")
    return ["## Key figures", "", *lines, ""] if lines else []


def summary_markdown(results: dict[str, Rows], env: dict[str, Any], plots: Sequence[str]) -> str:
    """The key tables of a run as Markdown (``env`` is the content of environment.json)."""
    grid = env["run"]["grid"]
    out = ["# pricure-crypten benchmarks", "",
           f"Command: `{env['command']}`; commit `{env['git_commit']}`{' (dirty tree)' if env['git_dirty'] else ''}; "
           f"{env['cpu_count']} CPUs, {env['platform']}; Python {env['python']}, torch {env['torch']}, "
           f"crypten {env['crypten']}; wall time {_fmt(env['run']['wall_seconds'], '.0f')} s.", "",
           "All N servers and the dealer run as processes on this one machine (loopback communication), "
           f"so times are compute-bound measurements; each point: one ensemble start, one warm-up call, "
           f"then {grid['repeats']} measured call(s): median (min–max). Rounds are per server per batch; "
           "bytes are summed over the servers. Scaling sweeps use untrained small CNNs on 1x28x28 inputs, "
           f"batch {grid['owners_batch']}, Laplace noise at ε = 1, vote aggregation.", "",
           *_key_figures(results)]
    if "owners" in results:
        out += [f"## Owners (K), N = {grid['fixed_servers']}", "", *_comparison_table(results["owners"], "owners")]
    if "servers" in results:
        out += [f"## Servers (N), K = {grid['fixed_owners']}", "",
                *_comparison_table(results["servers"], "servers")]
    if "owners" in results or "servers" in results:
        out += ["## Network MODEL (an estimate, not a measurement)", "",
                "est. seconds per batch = measured MPC seconds + rounds × RTT + 8 × bytes (all servers) / "
                "bandwidth; " + "; ".join(n.label for n in NETWORKS) + ". See benchmarks/netmodel.py.", ""]
        for key in ("owners", "servers"):
            out += [*_model_table(results[key], key)] if key in results else []
    if "batch" in results:
        out += [f"## Batch size, K = {grid['fixed_owners']}, N = {grid['fixed_servers']} (batched protocol)", "",
                *_batch_table(results["batch"])]
    if "privacy" in results:
        out += ["## Private accuracy vs the noise's calibration ε (K = 10 trained owners, Dirichlet α = 1 shards, "
                "N = 2); ε names one release's noise, the guarantee is the client's TOTAL ε over its queries", "",
                "Smallest ε from which on (that ε and every larger one in the grid) the private accuracy is "
                f"within {TOLERANCE * 100:g} points of the plaintext ensemble:", "",
                *_privacy_tables(results["privacy"])]
    out += ["## Memory", "", *_memory_lines(results), "## Plots", "", *(f"- `{p}`" for p in plots), ""]
    return "\n".join(out)
