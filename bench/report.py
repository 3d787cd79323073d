"""Result tables (Markdown), targets and the description of the machine they ran on."""

import datetime
import os
import platform
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

__all__ = ["Table", "Target", "machine", "render", "summary"]


@dataclass(frozen=True)
class Target:
    name: str
    wanted: str
    met: bool


@dataclass
class Table:
    title: str
    headers: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def add(self, *cells: str) -> None:
        assert len(cells) == len(self.headers), (cells, self.headers)
        self.rows.append(cells)


def render(table: Table) -> str:
    widths = [
        max(len(cells[i]) for cells in [table.headers, *table.rows])
        for i in range(len(table.headers))
    ]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [f"### {table.title}", "", line(table.headers)]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out += [line(row) for row in table.rows]
    if table.notes:
        out += ["", *table.notes]
    return "\n".join(out)


def summary(tables: list[Table]) -> str:
    targets = [t for table in tables for t in table.targets]
    met = sum(t.met for t in targets)
    out = [f"### Targets: {met} of {len(targets)} met", ""]
    out += [f"- {'met    ' if t.met else 'MISSED '} {t.name}: {t.wanted}" for t in targets]
    return "\n".join(out)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024**2
    return 0.0


def _wrk_version() -> str:
    if shutil.which("wrk") is None:
        return "wrk missing"
    result = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10)
    words = (result.stdout + result.stderr).split()
    return f"wrk {words[1]}" if len(words) > 1 else "wrk"


def machine() -> str:
    """One paragraph: date, hardware, load, and the versions that shape the numbers."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    packages = ", ".join(
        f"{name} {version(name)}"
        for name in ("fastapi", "starlette", "uvicorn", "sqlalchemy", "dependency-injector")
    )
    return (
        f"{now}; {_cpu_model()}, {os.cpu_count()} CPUs, {_memory_gib():.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}; load average at start {load}; "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{_wrk_version()}; {packages}."
    )
