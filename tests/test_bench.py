"""``python -m bench --quick``: the benchmark's smoke mode runs and prints every table."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HTTP_REQUESTS = ("GET /users/{id}", "GET /items/?limit=100", "POST /users/{id}/items/")


def _tables(output: str) -> dict[str, list[list[str]]]:
    """Markdown tables by title: the rows under the header, as stripped cells."""
    tables: dict[str, list[list[str]]] = {}
    title = ""
    for line in output.splitlines():
        if line.startswith("### "):
            title = line.removeprefix("### ")
            tables[title] = []
        elif line.startswith("| ") and title:
            tables[title].append([cell.strip() for cell in line.strip(" |").split(" | ")])
    return {name: rows[1:] for name, rows in tables.items()}


def _table(tables: dict[str, list[list[str]]], prefix: str) -> list[list[str]]:
    matches = [rows for name, rows in tables.items() if name.startswith(prefix)]
    assert len(matches) == 1, f"expected one table titled {prefix!r}, got {list(tables)}"
    return matches[0]


def _number(cell: str) -> float:
    match = re.fullmatch(r"([\d,.]+)\s*(µs|ns|MiB|x|%)?", cell)
    assert match is not None, f"not a measurement: {cell!r}"
    return float(match.group(1).replace(",", ""))


def test_quick_benchmark_prints_every_table_with_its_rows() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tables = _tables(result.stdout)

    sessions = _table(tables, "1. Session factory")
    assert [row[0] for row in sessions] == [
        "SessionLocal() + close() vs sessionmaker",
        "AsyncSessionLocal() + await close() vs async_sessionmaker",
    ]
    for row in sessions:
        assert _number(row[1]) > 0
        assert _number(row[2]) > 0
        assert row[5] in ("yes", "NO")

    providers = _table(tables, "2. Provider resolution")
    assert [row[0].split(" vs ")[0] for row in providers] == [
        "app.database.engine",
        "@inject call (Provide[Container.item_service])",
    ]
    assert all(_number(row[1]) > 0 for row in providers)

    targets = 2
    if shutil.which("wrk"):
        http = _table(tables, "3. HTTP under wrk")
        assert [(row[0], row[1]) for row in http] == [(r, "1") for r in HTTP_REQUESTS]
        for row in http:
            assert _number(row[2]) > 0, f"this app served no 2xx: {row}"
            assert _number(row[3]) > 0, f"the baseline served no 2xx: {row}"
        memory = _table(tables, "Memory")
        assert [row[0] for row in memory] == ["1"]
        assert _number(memory[0][1]) > 10
        assert _number(memory[0][2]) > 10
        targets += 2  # the two reads; the write target needs 2 workers
    else:
        assert "wrk is not installed" in result.stdout
        assert "apt-get install wrk" in result.stdout

    floor = _table(tables, "4. SQLite write floor")
    assert [row[0] for row in floor] == [
        "raw sqlite3",
        "SessionLocal.begin() + add(Item)",
        "AsyncSessionLocal.begin() + add(Item)",
    ]
    assert all(_number(row[1]) > 0 for row in floor)

    summary = re.search(r"^### Targets: (\d+) of (\d+) met$", result.stdout, re.MULTILINE)
    assert summary is not None
    assert int(summary.group(2)) == targets
