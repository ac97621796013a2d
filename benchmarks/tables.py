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
  written). ``"views": {"VIEW": {"columns": [...], "where": {"col": [values]}}}``
  defines further tables of the same file (other columns, a subset of rows).
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


def _selection(root: Path, meta: dict[str, Any], rows: list[dict[str, str]], name: str, view: str | None,
               ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    label = f"{name}:{view}" if view else name
    spec: dict[str, Any] | None = display_specs(root).get(label)
    if spec is None and view is not None:
        views = meta.get("views") or {}
        if view not in views:
            raise TableError(f"result {name!r} has no view {view!r} (in {name}.json or {VIEWS_FILE})")
        spec = views[view]
    spec = meta if spec is None else spec
    columns = spec.get("columns") or [{"column": c, "header": c} for c in (rows[0] if rows else {})]
    missing = [c["column"] for c in columns if rows and c["column"] not in rows[0]]
    if missing:
        raise TableError(f"result {name!r}: columns {missing} are not in {name}.csv")
    where = spec.get("where") or {}
    selected = [r for r in rows if all(str(r.get(col, "")) in {str(v) for v in allowed}
                                        for col, allowed in where.items())]
    return columns, selected


def render(root: Path, name: str, view: str | None, document: Path) -> str:
    """The Markdown table of one marker, and the note naming its source and command."""
    meta, rows = load_result(root, name)
    columns, selected = _selection(root, meta, rows, name, view)
    lines = ["| " + " | ".join(c.get("header", c["column"]) for c in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_cell(r.get(c["column"], ""), c) for c in columns) + " |" for r in selected]
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
