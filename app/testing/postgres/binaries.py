"""Where the PostgreSQL and PgBouncer binaries are, and which are missing; stdlib only."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

__all__ = ["find_bindir", "find_pgbouncer", "missing_binaries", "pgbouncer_version", "tool"]

_SERVER_BINARIES = ("initdb", "postgres")


def find_bindir(explicit: str | None = None) -> str:
    """The first directory holding initdb and postgres: PATH, /usr/local/bin, then Debian's."""
    if explicit:
        candidates = [explicit]
    else:
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
        candidates = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/local/bin", *versions]
    for directory in candidates:
        if directory and all(_executable(directory, name) for name in _SERVER_BINARIES):
            return directory
    where = explicit or "PATH, /usr/local/bin or /usr/lib/postgresql/*/bin"
    raise RuntimeError(f"no initdb and postgres found in {where}; install PostgreSQL")


def find_pgbouncer(explicit: str | None = None) -> str:
    """The pgbouncer binary: ``explicit``, on PATH, or Debian's /usr/sbin/pgbouncer."""
    candidates = [explicit] if explicit else [shutil.which("pgbouncer"), "/usr/sbin/pgbouncer"]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        f"no pgbouncer at {explicit}" if explicit else "no pgbouncer on PATH or in /usr/sbin"
    )


def missing_binaries(bindir: str | None = None) -> list[str]:
    """What this package needs and cannot find; empty when everything is there."""
    missing: list[str] = []
    try:
        directory = find_bindir(bindir)
    except RuntimeError:
        missing.extend(_SERVER_BINARIES)
    else:
        try:
            tool(directory, "pg_basebackup")
        except RuntimeError:
            missing.append("pg_basebackup")
    try:
        find_pgbouncer()
    except RuntimeError:
        missing.append("pgbouncer")
    return missing


def tool(bindir: str, name: str) -> str:
    """A PostgreSQL client binary: in ``bindir``, else beside the real postgres it links to."""
    # /usr/local/bin may hold symlinks to the server binaries only; Debian's /usr/bin
    # pg_basebackup is a wrapper that guesses a version, so we take the matching one.
    for directory in (bindir, os.path.dirname(os.path.realpath(os.path.join(bindir, "postgres")))):
        if _executable(directory, name):
            return os.path.join(directory, name)
    raise RuntimeError(f"no {name} in {bindir} or beside the postgres it links to")


def pgbouncer_version(binary: str) -> tuple[int, ...]:
    try:
        output = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise RuntimeError(f"{binary} --version failed: {error}") from None
    found = re.search(r"PgBouncer (\d+)\.(\d+)(?:\.(\d+))?", output)
    if not found:
        raise RuntimeError(f"cannot read the version of {binary} from {output!r}")
    return tuple(int(n) for n in found.groups(default="0"))


def _executable(directory: str, name: str) -> bool:
    return os.access(os.path.join(directory, name), os.X_OK)


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))
