"""docs/fidelity.md, the list of differences from the original code: every row names where the original does it
(file:line) and one of the three reasons, every `key: value` switch is a real parameter or config key, and the
count in the intro is the number of rows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from vislib import catalog

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "fidelity.md"
HEADER = ["#", "what", "original (file:line)", "original behaviour", "vislib default", "reason",
          "switch that restores the original"]
REASONS = ("bug in the original", "the paper over the code", "our choice")
FILE_LINE = re.compile(r"[\w./-]+\.(?:py|m|cpp|c|h|sh|md|txt|json|yml):\d+")
SWITCH = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*): [^`]+`")


def cells(line: str) -> list[str]:
    """The cells of a Markdown table row (no `|` inside cells in this document)."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def difference_rows(text: str) -> list[list[str]]:
    """The rows of every table whose header is HEADER."""
    rows, in_table = [], False
    for line in text.splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        row = cells(line)
        if row == HEADER:
            in_table = True
        elif in_table and not set(line) <= set("|-: "):
            rows.append(row)
    return rows


def preset_rows(text: str) -> list[list[str]]:
    """The rows of the table under "## Presets"."""
    section = text.split("\n## Presets\n", 1)[1]
    return [cells(line) for line in section.splitlines()[1:]
            if line.startswith("| `")]


def known_keys() -> set[str]:
    """Parameters of every registered method, metric and featvis method, and every key of config/schema.yaml."""
    keys = {p.name for kind in ("methods", "metrics", "featvis") for entry in catalog.entries(kind)
            for p in entry.params}

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                if name == "properties" and isinstance(value, dict):
                    keys.update(value)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(yaml.safe_load((REPO / "config" / "schema.yaml").read_text()))
    return keys


def problems(rows: list[list[str]], keys: set[str]) -> list[str]:
    """What is wrong with the rows: a missing file:line or reason, an unknown switch key, an empty switch."""
    found = []
    for row in rows:
        name = row[0] if row else "?"
        if len(row) != len(HEADER):
            found.append(f"{name}: {len(row)} cells, not {len(HEADER)}")
            continue
        if not FILE_LINE.search(row[2]):
            found.append(f"{name}: no file:line in {row[2]!r}")
        if not row[5].startswith(REASONS):
            found.append(f"{name}: the reason {row[5]!r} is none of {REASONS}")
        switches = SWITCH.findall(row[6])
        if not switches and not row[6].startswith("none"):
            found.append(f"{name}: the switch column names no `key: value` and does not say none")
        found += [f"{name}: unknown switch key {key!r}" for key in switches if key not in keys]
    return found


@pytest.fixture(scope="module")
def text() -> str:
    return DOC.read_text()


@pytest.fixture(scope="module")
def keys() -> set[str]:
    return known_keys()


def test_every_row_names_a_file_line_a_reason_and_a_real_switch(text, keys):
    rows = difference_rows(text)
    assert len(rows) > 100, "the tables were not found"
    assert problems(rows, keys) == []
    assert len({row[0] for row in rows}) == len(rows), "row ids must be unique"


def test_the_intro_count_is_the_number_of_rows(text):
    count = re.search(r"\*\*(\d+) differences\*\*", text)
    assert count, "the intro must say **N differences**"
    assert int(count.group(1)) == len(difference_rows(text))


def test_preset_switches_are_real_keys_and_every_preset_is_listed(text, keys):
    rows = preset_rows(text)
    listed = {row[0].strip("`") for row in rows}
    assert listed == {path.stem for path in (REPO / "config" / "presets").glob("*.yaml")}
    unknown = [key for row in rows for key in SWITCH.findall(row[2]) if key not in keys]
    assert unknown == []


def test_the_checks_catch_a_bad_row(keys):
    good = ["X-1", "what", "`vis.py:12`", "does", "default", "our choice: speed", "`init: ones`"]
    assert problems([good], keys) == []
    assert len(problems([["X-2", "what", "vis.py", "does", "default", "because", "`no_such_key: 1`"]], keys)) == 3
    assert problems([["X-3", "what", "`vis.py:12`", "does", "default", "our choice", "ask the lead"]], keys)
    assert "no_such_key" not in keys and "init" in keys and "resize" in keys


def test_the_page_does_not_point_outside_the_repository(text):
    assert "shared/" not in text and "/work/" not in text


def test_no_page_of_the_docs_points_outside_the_repository():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    outside = [page.name for page in pages if re.search(r"(?:\.\./|\b)shared/|/work/", page.read_text())]
    assert outside == []
