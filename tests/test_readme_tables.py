"""The README's and docs' result tables are exactly what their committed sources render.

Every table between ``<!-- table: NAME -->`` and ``<!-- /table -->`` in
README.md or docs/*.md is rendered from ``docs/results/NAME.csv`` (data) and
``docs/results/NAME.json`` (the command that regenerates it, and the
columns shown). The checks run ``python -m benchmarks.tables --check`` as a
subprocess (tests do not import from ``benchmarks``), on this checkout and on
copies that are broken on purpose, so each check is shown to fail when it
should.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

MARKED = re.compile(r"<!-- table: ([^ >]+) -->\n(.*?)<!-- /table -->", re.S)


def _check(root: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.tables", "--check", "--root", str(root), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    """README.md, docs/*.md and docs/results/ of this checkout, in a scratch folder."""
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    (tmp_path / "docs").mkdir()
    for page in (REPO / "docs").glob("*.md"):
        shutil.copy(page, tmp_path / "docs" / page.name)
    shutil.copytree(REPO / "docs" / "results", tmp_path / "docs" / "results")
    return tmp_path


def _documents(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def test_every_marked_table_matches_its_committed_source() -> None:
    done = _check(REPO)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]


def test_the_readme_shows_marked_tables_and_names_their_sources() -> None:
    readme = (REPO / "README.md").read_text()
    blocks = MARKED.findall(readme)
    assert any(name.split(":")[0] == "cost" for name, _ in blocks), "the README's cost table is not marked"
    for name, body in blocks:
        result = name.split(":")[0]
        assert f"docs/results/{result}.csv" in body, name
        command = json.loads((REPO / "docs" / "results" / f"{result}.json").read_text())["command"]
        assert f"`{command}`" in body, name


def test_every_table_in_results_at_a_glance_is_marked() -> None:
    """A table of numbers in the README's results section that no marker covers would escape the check."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Results at a glance", 1)[1].split("\n## ", 1)[0]
    unmarked = MARKED.sub("", section)
    assert not re.search(r"^\|.*\|\s*$", unmarked, flags=re.M), "an unmarked table in 'Results at a glance'"


def test_every_result_file_names_its_command() -> None:
    results = sorted((REPO / "docs" / "results").glob("*.csv"))
    assert results
    for path in results:
        meta = json.loads(path.with_suffix(".json").read_text())
        assert isinstance(meta.get("command"), str) and "python -m " in meta["command"], path.name


def test_an_edited_table_is_detected_and_the_renderer_restores_it(copy: Path) -> None:
    readme = copy / "README.md"
    text = readme.read_text()
    match = next(m for m in MARKED.finditer(text) if m.group(1) == "cost")
    body = match.group(2)
    header = [h.strip() for h in body.splitlines()[0].strip("|").split("|")]
    row = next(line for line in body.splitlines() if line.startswith("| README call"))
    cells = row.split(" | ")
    at = header.index("rounds, dealer on-line")
    cells[at] = str(int(cells[at]) + 1)  # the rounds: an exact count, off by one
    edited_row = " | ".join(cells)
    readme.write_text(text.replace(row, edited_row))

    stale = _check(copy)
    assert stale.returncode == 1, stale.stdout + stale.stderr
    assert f"-{edited_row}" in stale.stdout and f"+{row}" in stale.stdout, stale.stdout
    assert "README.md" in stale.stderr

    rewritten = subprocess.run([sys.executable, "-m", "benchmarks.tables", "--root", str(copy)],
                               cwd=REPO, capture_output=True, text=True, timeout=120)
    assert rewritten.returncode == 0, rewritten.stderr
    assert readme.read_text() == text
    assert _check(copy).returncode == 0


def test_a_changed_result_file_makes_the_committed_table_stale(copy: Path) -> None:
    csv_path = copy / "docs" / "results" / "cost.csv"
    lines = csv_path.read_text().splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    column = header.index("live_rounds_per_batch")
    cells = lines[1].rstrip("\n").split(",")
    cells[column] = str(int(cells[column]) + 1)
    csv_path.write_text("".join([lines[0], ",".join(cells) + "\n", *lines[2:]]))
    assert _check(copy).returncode == 1


def test_a_marker_naming_a_missing_result_is_refused(copy: Path) -> None:
    page = copy / "docs" / "extra.md"
    page.write_text("# extra\n\n<!-- table: no-such-result -->\n<!-- /table -->\n")
    done = _check(copy)
    assert done.returncode == 2
    assert "no-such-result" in done.stderr and "does not exist" in done.stderr


def test_an_unclosed_marker_is_refused(copy: Path) -> None:
    page = copy / "docs" / "extra.md"
    page.write_text("# extra\n\n<!-- table: cost -->\n| a |\n")
    done = _check(copy)
    assert done.returncode == 2
    assert "extra.md" in done.stderr and "<!-- /table -->" in done.stderr


def test_a_result_without_its_command_is_refused(copy: Path) -> None:
    meta_path = copy / "docs" / "results" / "cost.json"
    meta = json.loads(meta_path.read_text())
    del meta["command"]
    meta_path.write_text(json.dumps(meta))
    done = _check(copy)
    assert done.returncode == 2
    assert "cost" in done.stderr and "command" in done.stderr


def test_a_result_csv_without_metadata_is_refused(copy: Path) -> None:
    (copy / "docs" / "results" / "orphan.csv").write_text("a,b\n1,2\n")
    done = _check(copy)
    assert done.returncode == 2 and "orphan.json" in done.stderr


def test_cells_are_formatted_as_the_metadata_says(copy: Path) -> None:
    """An independent reading of a rendered table: the rounds are the CSV's integers, the MB its bytes / 1e6."""
    import csv

    rows = list(csv.DictReader(open(copy / "docs" / "results" / "cost.csv", newline="")))
    readme = (copy / "README.md").read_text()
    body = next(m.group(2) for m in MARKED.finditer(readme) if m.group(1) == "cost")
    table = [line.strip("|").split("|") for line in body.splitlines() if line.startswith("|")]
    header = [h.strip() for h in table[0]]
    shown = {cells[0].strip(): [c.strip() for c in cells] for cells in table[2:]}
    readme_call = next(r for r in rows if r["workload"] == "README call")
    cells = shown["README call"]
    assert cells[header.index("rounds, dealer on-line")] == readme_call["live_rounds_per_batch"]
    megabytes = float(cells[header.index("MB/query, dealer on-line")])
    assert megabytes == pytest.approx(float(readme_call["live_bytes_per_query"]) / 1e6, rel=5e-3)


def test_views_json_takes_precedence_over_the_result_metadata(copy: Path) -> None:
    views_path = copy / "docs" / "results" / "views.json"
    views = json.loads(views_path.read_text()) if views_path.exists() else {}
    views["cost"] = {"columns": [{"column": "workload", "header": "only this column"}]}
    views_path.write_text(json.dumps(views))
    assert _check(copy).returncode == 1
    done = subprocess.run([sys.executable, "-m", "benchmarks.tables", "--root", str(copy)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    body = next(m.group(2) for m in MARKED.finditer((copy / "README.md").read_text()) if m.group(1) == "cost")
    assert body.splitlines()[0] == "| only this column |"


LONG_CSV = """dataset,owners,estimator,accuracy,accuracy_lo,accuracy_hi,attack,auc
mnist,10,mean owner,0.9,0.85,0.95,gap,0.51
mnist,10,private,0.8,0.7,0.9,gap,0.52
mnist,1,mean owner,0.97,0.96,0.98,gap,0.55
mnist,1,private,inf,,,shift,0.61
mnist,1,private,0.5,0.4,0.6,noise,
fashion,1,mean owner,0.8,0.7,0.9,gap,0.5
"""


def test_a_long_format_result_is_pivoted_as_its_view_says(tmp_path: Path) -> None:
    """group_by + match + template + where + sort_by + keep_max, against tables written out by hand."""
    (tmp_path / "docs" / "results").mkdir(parents=True)
    (tmp_path / "docs" / "results" / "long.csv").write_text(LONG_CSV)
    (tmp_path / "docs" / "results" / "long.json").write_text(json.dumps({"command": "python -m make_long"}))
    acc = "{accuracy:.2f} [{accuracy_lo:.2f}, {accuracy_hi:.2f}]"
    (tmp_path / "docs" / "results" / "views.json").write_text(json.dumps({
        "long:wide": {"where": {"dataset": "mnist", "attack": ["gap"]}, "group_by": ["owners"], "sort_by": ["owners"],
                      "columns": [{"header": "K", "column": "owners", "format": "d"},
                                  {"header": "mean", "match": {"estimator": "mean owner"}, "template": acc},
                                  {"header": "private", "match": {"estimator": "private"}, "template": acc}]},
        "long:best": {"where": {"dataset": "mnist"}, "group_by": ["owners"], "keep_max": "auc",
                      "caption": "On {dataset}, first K = {owners:d}.",
                      "columns": [{"header": "K", "column": "owners"}, {"header": "attack", "column": "attack"},
                                  {"header": "accuracy", "template": acc}]},
    }))
    (tmp_path / "README.md").write_text("<!-- table: long:wide -->\n<!-- /table -->\n\n"
                                        "<!-- table: long:best -->\n<!-- /table -->\n")
    done = subprocess.run([sys.executable, "-m", "benchmarks.tables", "--root", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    tables = [[line for line in body.splitlines() if line.startswith("|")]
              for _, body in MARKED.findall((tmp_path / "README.md").read_text())]
    assert tables[0] == ["| K | mean | private |", "|---|---|---|",
                         "| 1 | 0.97 [0.96, 0.98] | – |",
                         "| 10 | 0.90 [0.85, 0.95] | 0.80 [0.70, 0.90] |"]
    assert "On mnist, first K = 10.\n\n| K | attack | accuracy |" in (tmp_path / "README.md").read_text()
    assert tables[1] == ["| K | attack | accuracy |", "|---|---|---|",
                         "| 10 | gap | 0.80 [0.70, 0.90] |",
                         "| 1 | shift | ∞ [–, –] |"]
