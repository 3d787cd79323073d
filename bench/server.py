"""CPU time and peak memory of the server processes under test (from /proc)."""

import os
from pathlib import Path

from app.testing.processes import proc_stat_fields

__all__ = ["cpu_seconds", "peak_rss_kib"]


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time the processes have used so far."""
    ticks = 0
    for pid in pids:
        fields = proc_stat_fields(pid)
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set size (``VmHWM``), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for process {pid}")
