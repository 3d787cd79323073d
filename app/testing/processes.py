"""The harness's process toolkit: free ports, ``/proc``, child processes; stdlib only."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["HOST", "Process", "alive", "children", "free_port", "proc_stat_fields", "wait_gone"]

HOST = "127.0.0.1"

Process = tuple[int, str]
"""A process is its pid and its start time (clock ticks since boot): pids are reused."""


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def proc_stat_fields(pid: int | str) -> list[str]:
    """``/proc/<pid>/stat`` from field 3 (state) on: the command name before it, field 2,
    may contain spaces and parentheses, so the fields are counted from its last ")".
    OSError when there is no such process."""
    stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    return stat[stat.rfind(")") + 2 :].split()


def _fields(pid: int | str) -> list[str]:
    try:
        return proc_stat_fields(pid)
    except OSError:
        return []


def children(pid: int, *, cmdline_contains: bytes = b"") -> list[Process]:
    """The processes whose parent is ``pid`` (and whose command line holds
    ``cmdline_contains``), by pid."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _fields(entry.name)
        if len(fields) <= 19 or fields[1] != str(pid):
            continue
        if cmdline_contains:
            try:
                if cmdline_contains not in (entry / "cmdline").read_bytes():
                    continue
            except OSError:
                continue
        found.append((int(entry.name), fields[19]))
    return sorted(found)


def alive(process: Process) -> bool:
    """Whether the process runs: a zombie does not."""
    fields = _fields(process[0])
    return len(fields) > 19 and fields[19] == process[1] and fields[0] != "Z"


def wait_gone(processes: Sequence[Process], timeout: float = 10.0) -> None:
    """Wait up to ``timeout`` for ``processes`` to exit; SIGKILL the stragglers and wait
    again; RuntimeError if some survive that too."""
    for kill in (False, True):
        running = [p for p in processes if alive(p)]
        for pid, _ in running if kill else ():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while any(alive(p) for p in running):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        else:
            return
    raise RuntimeError(f"processes {[p for p, _ in processes]} survived SIGKILL")
