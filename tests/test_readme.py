"""The README stays true: its settings table lists every ``Settings`` field, and nothing else,
with the field's default."""

import re
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def configuration_rows() -> list[tuple[list[str], list[str]]]:
    """(setting names, their defaults) for each row of the README's settings table."""
    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("| `"):
            name_cell, default_cell = [cell.strip() for cell in line.strip("|").split("|")][:2]
            names = re.findall(r"`([A-Z][A-Z0-9_]*)`", name_cell)
            rows.append((names, [d.strip().strip("`") for d in default_cell.split(" / ")]))
    return rows


def documents(text: str, default: Any) -> bool:
    """Whether the README's ``text`` states ``default``."""
    if isinstance(default, bool):
        return text == str(default).lower()
    if isinstance(default, int | float):
        return float(text) == default
    if isinstance(default, list):
        return text == "empty" if not default else text == ",".join(default)
    return text == str(default)


def test_the_settings_table_lists_every_setting_once_and_nothing_else() -> None:
    listed = [name for names, _ in configuration_rows() for name in names]
    assert sorted(listed) == sorted(Settings.model_fields)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (name, text)
        for names, defaults in configuration_rows()
        if len(names) == len(defaults)
        for name, text in zip(names, defaults, strict=True)
        # A default computed from the rest (the backend, DATABASE_URL) is described, not set.
        if Settings.model_fields[name].default is not None
    ],
)
def test_the_settings_table_gives_each_default(name: str, text: str) -> None:
    assert documents(text, Settings.model_fields[name].default), (name, text)


def test_a_wrong_default_in_the_table_would_be_caught() -> None:
    assert not documents("6", 5)
    assert not documents("false", True)
    assert not documents("`text`", "json")
