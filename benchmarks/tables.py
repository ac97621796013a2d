"""``python -m benchmarks.tables``: the README's and docs' result tables, rendered from ``docs/results/``.

Every result the documentation shows is two small committed files under
``docs/results/``:

* ``NAME.csv``: the data, one row per table row (a header line of column names);
* ``NAME.json``: its metadata, at least ``"command"`` (the exact command that
  regenerates the CSV, run from the repository root), and usually
  ``"git_commit"``, ``"date"``, ``"machine"``, ``"notes"`` and ``"columns"``:
  which CSV columns a table shows, in order, each
  ``{"column": ..., "header": ..., "format": ".3g", "scale": 1e-6}``
  (``format`` is a Python format spec applied to the number times ``scale``;
  ``"d"`` rounds to an integer; without ``format`` the cell is shown as
  written), or ``{"template": "{auc:.2f} [{auc_low:.2f}, {auc_high:.2f}]",
  "header": ...}`` (``str.format`` over the row, numbers as floats, infinity
  as ∞). ``"views": {"VIEW": {...}}`` defines further tables of the same file.
  A spec may also have ``"where": {"col": value or [values]}`` (keep only
  those rows), ``"sort_by": [cols]`` (numbers numerically) and
  ``"group_by": [cols]``: one table row per group, each column taking the one
  row of the group that its own ``"match": {"col": value}`` selects (a
  long-format CSV shown as a wide table), or with ``"keep_max": col`` the row
  of the group with the largest value of ``col`` (e.g. the best attack).
  ``"caption"``: a template rendered from the first row kept by ``where``,
  shown above the table (for figures common to every row).
  The same specs may instead live in ``docs/results/views.json`` under
  ``"NAME"`` or ``"NAME:VIEW"`` (it takes precedence), for results whose
  command rewrites its JSON without them.

A Markdown file marks where a table goes::

    <!-- table: NAME -->            (or <!-- table: NAME:VIEW -->)
    ... rendered here, with a note naming the source file and its command ...
    <!-- /table -->

``python -m benchmarks.tables`` rewrites every marked block in ``README.md``
and ``docs/*.md``; ``--check`` rewrites nothing, prints a diff and exits 1
when any block differs from what its source renders. Either mode exits 2,
naming the problem, when a marker names a result that does not exist, a
marker is not closed, or a result's JSON lacks its command. Standard library
only, so it runs anywhere the repository is checked out.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import math
import os
import re
import string
import sys
from pathlib import Path
from typing import Any, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path("docs") / "results"
VIEWS_FILE = "views.json"
MARKER = re.compile(r"<!-- table: (?P<name>[A-Za-z0-9_.-]+)(?::(?P<view>[A-Za-z0-9_.-]+))? -->\n"
                    r"(?P<body>.*?)<!-- /table -->", re.S)
OPENING = re.compile(r"<!-- table: ([^>]*?) -->")


class TableError(Exception):
    """A marker or result file that cannot be rendered (the message names it)."""


def documents(root: Path) -> list[Path]:
    """The files whose tables are rendered: README.md and docs/*.md."""
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.exists()]


def load_result(root: Path, name: str) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The metadata and rows of result ``name``; TableError when either file or the command is missing."""
    csv_path, json_path = root / RESULTS / f"{name}.csv", root / RESULTS / f"{name}.json"
    for path in (csv_path, json_path):
        if not path.exists():
            raise TableError(f"result {name!r}: {path.relative_to(root)} does not exist")
    try:
        meta = json.loads(json_path.read_text())
    except json.JSONDecodeError as err:
        raise TableError(f"result {name!r}: {json_path.relative_to(root)} is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("command"), str) or not meta["command"].strip():
        raise TableError(f"result {name!r}: {json_path.relative_to(root)} has no \"command\" "
                         "(the exact command that regenerates it)")
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return meta, rows


def format_cell(value: str, spec: dict[str, Any]) -> str:
    """One cell: the CSV text formatted as ``spec`` says (text that is not a number is kept)."""
    if value is None or value.strip() == "":
        return "–"
    fmt = spec.get("format")
    if fmt is None:
        return value.replace("|", "\\|")
    try:
        number = float(value) * float(spec.get("scale", 1.0))
    except ValueError:
        return value.replace("|", "\\|")
    if math.isinf(number):
        return "∞" if number > 0 else "-∞"
    if math.isnan(number):
        return "–"
    if fmt.endswith("d"):
        return format(int(round(number)), fmt)
    return format(number, fmt)


class _CellFormatter(string.Formatter):
    """``str.format`` over a row whose numbers are floats: infinity as ∞, NaN and empty cells as –."""

    def format_field(self, value: Any, format_spec: str) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            if math.isnan(value):
                return "–"
            if math.isinf(value):
                return "∞" if value > 0 else "-∞"
            if format_spec.endswith("d"):
                return format(int(round(value)), format_spec)
        return format(value, format_spec)


def _number(text: str) -> Any:
    if text is None or text.strip() == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def cell(row: dict[str, str] | None, spec: dict[str, Any]) -> str:
    """One cell of a column spec: ``template`` (``str.format`` over the row) or ``column`` with ``format``."""
    if row is None:
        return "–"
    if "template" in spec:
        values = {key: _number(value) for key, value in row.items()}
        try:
            text = _CellFormatter().format(spec["template"], **values)
        except (KeyError, IndexError) as err:
            raise TableError(f"template {spec['template']!r} names a column that is not in the CSV ({err})") from None
        except (ValueError, TypeError):
            text = "–"  # e.g. a number format applied to text
        return text.replace("|", "\\|")
    return format_cell(row.get(spec["column"], ""), spec)


def _sort_key(text: str) -> tuple:
    number = _number(text)
    return (0, number, "") if isinstance(number, float) else (1, 0.0, str(text))


def _matches(row: dict[str, str], condition: dict[str, Any]) -> bool:
    def allowed(value: Any) -> set[str]:
        return {str(v) for v in value} if isinstance(value, list) else {str(value)}

    return all(str(row.get(col, "")) in allowed(value) for col, value in condition.items())


def _table_rows(spec: dict[str, Any], columns: list[dict[str, Any]], rows: list[dict[str, str]],
                name: str) -> list[list[str]]:
    """The body: one line per row, or per group of ``group_by`` (each column then picks its row by ``match``)."""
    selected = [r for r in rows if _matches(r, spec.get("where") or {})]
    for key in reversed(spec.get("sort_by") or []):  # stable sorts: the first key decides first
        selected.sort(key=lambda r: _sort_key(r.get(key, "")))
    group_by = spec.get("group_by") or []
    groups: dict[tuple, list[dict[str, str]]] = {}
    for index, row in enumerate(selected):
        groups.setdefault(tuple(row.get(c, "") for c in group_by) if group_by else (index,), []).append(row)
    body = []
    for members in groups.values():
        if spec.get("keep_max"):  # e.g. the best attack per target
            def value(row: dict[str, str]) -> float:
                number = _number(row.get(spec["keep_max"], ""))
                return number if isinstance(number, float) and not math.isnan(number) else -math.inf

            members = [max(members, key=value)]
        line = []
        for column in columns:
            picked = [r for r in members if _matches(r, column.get("match") or {})]
            if len(picked) > 1 and column.get("match") is not None:
                raise TableError(f"result {name!r}: column {column.get('header')!r} matches {len(picked)} rows "
                                 "of one group (add a condition to its match or to group_by)")
            line.append(cell(picked[0] if picked else None, column))
        body.append(line)
    return body


def display_specs(root: Path) -> dict[str, Any]:
    """``docs/results/views.json``: display specs kept apart from results whose command rewrites their JSON."""
    path = root / RESULTS / VIEWS_FILE
    if not path.exists():
        return {}
    try:
        specs = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TableError(f"{path.relative_to(root)} is not valid JSON ({err})") from None
    if not isinstance(specs, dict):
        raise TableError(f"{path.relative_to(root)} must be an object: {{\"NAME\" or \"NAME:VIEW\": spec}}")
    return specs


def _spec(root: Path, meta: dict[str, Any], name: str, view: str | None) -> dict[str, Any]:
    label = f"{name}:{view}" if view else name
    spec: dict[str, Any] | None = display_specs(root).get(label)
    if spec is None and view is not None:
        views = meta.get("views") or {}
        if view not in views:
            raise TableError(f"result {name!r} has no view {view!r} (in {name}.json or {VIEWS_FILE})")
        spec = views[view]
    return meta if spec is None else spec


def _columns(spec: dict[str, Any], rows: list[dict[str, str]], name: str) -> list[dict[str, Any]]:
    columns = spec.get("columns") or [{"column": c, "header": c} for c in (rows[0] if rows else {})]
    for column in columns:
        if "template" not in column and "column" not in column:
            raise TableError(f"result {name!r}: a column spec needs \"column\" or \"template\": {column}")
    missing = [c["column"] for c in columns if "column" in c and rows and c["column"] not in rows[0]]
    named = (spec.get("group_by") or []) + (spec.get("sort_by") or []) + list(spec.get("where") or {})
    named += [spec["keep_max"]] if spec.get("keep_max") else []
    missing += [c for c in named if rows and c not in rows[0]]
    if missing:
        raise TableError(f"result {name!r}: columns {missing} are not in {name}.csv")
    return columns


def render(root: Path, name: str, view: str | None, document: Path) -> str:
    """The Markdown table of one marker, and the note naming its source and command."""
    meta, rows = load_result(root, name)
    spec = _spec(root, meta, name, view)
    columns = _columns(spec, rows, name)
    lines = ["| " + " | ".join(c.get("header", c.get("column", "")) for c in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(line) + " |" for line in _table_rows(spec, columns, rows, name)]
    if spec.get("caption"):  # a sentence above the table, its numbers taken from the first shown row
        first = next((r for r in rows if _matches(r, spec.get("where") or {})), None)
        lines = [cell(first, {"template": spec["caption"]}).replace("\\|", "|"), ""] + lines
    source = Path(os.path.relpath(root / RESULTS / f"{name}.csv", document.parent)).as_posix()
    provenance = ", ".join(str(meta[k])[:7] if k == "git_commit" else str(meta[k])
                           for k in ("git_commit", "date") if meta.get(k))
    note = f"<sub>Source: [`{RESULTS.as_posix()}/{name}.csv`]({source})"
    note += f" ({provenance})" if provenance else ""
    note += f"; regenerate: `{meta['command']}`"
    note += f"; machine: {meta['machine']}.</sub>" if meta.get("machine") else ".</sub>"
    return "\n".join(lines) + "\n\n" + note + "\n"


def rewrite(root: Path, document: Path) -> str:
    """The text of ``document`` with every marked block re-rendered."""
    text = document.read_text()
    opened = len(OPENING.findall(text))
    blocks = list(MARKER.finditer(text))
    if opened != len(blocks):
        raise TableError(f"{document.relative_to(root)}: {opened} table markers but {len(blocks)} closed by "
                         "<!-- /table --> (or a marker's name is malformed)")

    def replace(match: re.Match[str]) -> str:
        name, view = match["name"], match["view"]
        try:
            body = render(root, name, view, document)
        except TableError as err:
            raise TableError(f"{document.relative_to(root)}: {err}") from None
        label = f"{name}:{view}" if view else name
        return f"<!-- table: {label} -->\n{body}<!-- /table -->"

    return MARKER.sub(replace, text)


def check_results(root: Path) -> None:
    """Every CSV under docs/results/ has its JSON with a command (also results no document shows)."""
    for csv_path in sorted((root / RESULTS).glob("*.csv")):
        load_result(root, csv_path.stem)
    display_specs(root)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tables", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="rewrite nothing; print a diff and exit 1 when stale")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root (default: this checkout)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    root = args.root.resolve()
    stale = []
    try:
        check_results(root)
        for document in documents(root):
            old, new = document.read_text(), rewrite(root, document)
            if old == new:
                continue
            stale.append(document.relative_to(root).as_posix())
            if args.check:
                sys.stdout.writelines(difflib.unified_diff(
                    old.splitlines(keepends=True), new.splitlines(keepends=True),
                    fromfile=f"{stale[-1]} (committed)", tofile=f"{stale[-1]} (rendered from docs/results)"))
            else:
                document.write_text(new)
    except TableError as err:
        print(f"tables: {err}", file=sys.stderr)
        return 2
    if args.check and stale:
        print(f"tables: stale tables in {', '.join(stale)}; run `python -m benchmarks.tables`", file=sys.stderr)
        return 1
    print(f"tables: {'rewrote ' + ', '.join(stale) if stale else 'all tables match docs/results'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
