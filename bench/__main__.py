"""``python -m bench [--quick]``: every benchmark and its baseline, in one run, as Markdown."""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.floor import floor_table
from bench.growth import GROWTH, TINY, growth_table
from bench.idempotency import idempotency_table
from bench.micro import provider_table, session_table
from bench.operations import overhead_table
from bench.outbox import outbox_table
from bench.replicas import replicas_missing, replicas_table
from bench.report import Table, machine, render, summary
from bench.tail import tail_table
from bench.web import WRK_MISSING, postgres_table, sqlite_tables

POSTGRES_ENV = "BENCH_POSTGRES_URL"
POSTGRES_MISSING = (
    f"PostgreSQL (section 5 and growth on PostgreSQL) not run: {POSTGRES_ENV} is unset. "
    "`make bench` starts a throwaway server and sets it: "
    f"`python scripts/with_postgres.py --export {POSTGRES_ENV} -- .venv/bin/python -m bench`."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke mode: short runs, 1 worker, growth on 10,000 items (~30 s)",
    )
    parser.add_argument(
        "--duration",
        type=int,
        help="seconds of load per server and request on SQLite (default 8, quick 1); "
        "PostgreSQL gets three quarters of it",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="alternating rounds the duration is split into (default 4, quick 1); "
        "PostgreSQL gets one fewer",
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        help="uvicorn worker counts to compare on SQLite (default 1 2, quick 1)",
    )
    parser.add_argument(
        "--growth-seconds",
        type=int,
        help="seconds of load per growth request (default 3, quick 1)",
    )
    parser.add_argument(
        "--growth-connections", type=int, default=8, help="wrk connections for growth"
    )
    parser.add_argument(
        "--operations-only",
        action="store_true",
        help="only section 7: the cost of request ids, the access log and metrics",
    )
    parser.add_argument(
        "--outbox-only",
        action="store_true",
        help="only section 9: the outbox's cost on POST /users/{id}/items/ and the worker's "
        "delivery rate (on PostgreSQL too with BENCH_POSTGRES_URL)",
    )
    parser.add_argument(
        "--idempotency-only",
        action="store_true",
        help="only section 10: POST items with a fresh Idempotency-Key per request against "
        "without one, on SQLite (and PostgreSQL when BENCH_POSTGRES_URL is set)",
    )
    parser.add_argument(
        "--tail-only",
        action="store_true",
        help="only section 11: the latency distribution of GET /users/{id} at 32 and 128 "
        "connections, app serve against a plain baseline, on SQLite (and PostgreSQL when "
        "BENCH_POSTGRES_URL is set)",
    )
    parser.add_argument(
        "--sections",
        type=_sections,
        help="run only these sections of the full run, e.g. 1-6 or 7,9 (default: all)",
    )
    parser.add_argument(
        "--replicas-only",
        "--replicas",
        action="store_true",
        help="only section 8: reads with one streaming standby versus the primary only, "
        "under writes (starts its own PostgreSQL primary and standby)",
    )
    return parser


def _sections(spec: str) -> frozenset[int]:
    """``"1-6"``, ``"7,9"``: section numbers."""
    numbers: set[int] = set()
    try:
        for part in spec.split(","):
            first, _, last = part.partition("-")
            numbers.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of section numbers: {spec!r}") from None
    return frozenset(numbers)


def _show(table: Table) -> Table:
    print(render(table) + "\n", flush=True)
    return table


def _operations(
    folder: Path, args: argparse.Namespace, seconds: int, rounds: int, warmup: int
) -> Table:
    return overhead_table(
        folder, seconds=seconds, rounds=rounds, warmup=warmup, connections=args.connections
    )


def _replicas(
    folder: Path, args: argparse.Namespace, seconds: int, rounds: int, warmup: int
) -> Table:
    # The durations of section 5, the other one on PostgreSQL.
    postgres_rounds = max(1, rounds - 1)
    return replicas_table(
        folder,
        seconds=max(postgres_rounds, seconds * 3 // 4),
        rounds=postgres_rounds,
        warmup=warmup,
        connections=args.connections,
    )


def _outbox(
    folder: Path, args: argparse.Namespace, seconds: int, rounds: int, warmup: int
) -> Table:
    return outbox_table(
        folder,
        postgres_url=os.environ.get(POSTGRES_ENV, ""),
        seconds=seconds,
        rounds=rounds,
        warmup=warmup,
        connections=args.connections,
        writes=100 if args.quick else 400,
    )


def _idempotency(
    folder: Path, args: argparse.Namespace, seconds: int, rounds: int, warmup: int
) -> Table:
    return idempotency_table(
        folder,
        os.environ.get(POSTGRES_ENV, ""),
        seconds=seconds,
        rounds=rounds,
        warmup=warmup,
        connections=args.connections,
    )


def _tail(folder: Path, args: argparse.Namespace, seconds: int, rounds: int, warmup: int) -> Table:
    # Rounds long enough to see a request outlive DB_QUEUE_TIMEOUT (5 s): 6 s by default,
    # in half as many rounds as the other sections.
    return tail_table(
        folder,
        os.environ.get(POSTGRES_ENV, ""),
        seconds=max(1, seconds * 3 // 4),
        rounds=max(1, rounds // 2),
        warmup=warmup,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quick: bool = args.quick
    seconds: int = args.duration or (1 if quick else 8)
    rounds: int = args.rounds or (1 if quick else 4)
    workers: tuple[int, ...] = tuple(args.workers or ((1,) if quick else (1, 2)))
    warmup = 0 if quick else 1
    growth_seconds: int = args.growth_seconds or (1 if quick else 3)
    postgres_url = os.environ.get(POSTGRES_ENV, "")
    has_wrk = shutil.which("wrk") is not None
    started = time.monotonic()
    print(f"## Benchmarks{' (quick smoke run)' if quick else ''}\n\n{machine()}\n", flush=True)
    only = (
        args.operations_only
        or args.replicas_only
        or args.outbox_only
        or args.idempotency_only
        or args.tail_only
    )
    if not postgres_url and not only:
        print(f"{POSTGRES_MISSING}\n", flush=True)
    tables: list[Table] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        folder = Path(tmp)
        # One section alone (--operations-only, --outbox-only, --idempotency-only, --tail-only).
        alone = [
            section
            for asked, section in (
                (args.operations_only, _operations),
                (args.outbox_only, _outbox),
                (args.idempotency_only, _idempotency),
                (args.tail_only, _tail),
            )
            if asked
        ]
        if alone:
            if not has_wrk:
                print(WRK_MISSING)
                return 1
            tables.append(_show(alone[0](folder, args, seconds, rounds, warmup)))
            print(summary(tables))
            return 0
        if args.replicas_only:
            missing = replicas_missing() or ("" if has_wrk else WRK_MISSING)
            if missing:
                print(missing)
                return 1
            tables.append(_show(_replicas(folder, args, seconds, rounds, warmup)))
            print(summary(tables))
            return 0
        sections: frozenset[int] | None = args.sections

        def wanted(section: int) -> bool:
            return sections is None or section in sections

        if wanted(1):
            tables.append(_show(session_table(folder, quick=quick)))
        if wanted(2):
            tables.append(_show(provider_table(quick=quick)))
        if has_wrk and wanted(3):
            for table in sqlite_tables(
                folder,
                workers=workers,
                seconds=seconds,
                rounds=rounds,
                warmup=warmup,
                connections=args.connections,
            ):
                tables.append(_show(table))
        elif wanted(3):
            print(f"### 3. HTTP under wrk: not run\n\n{WRK_MISSING}\n", flush=True)
        if wanted(4):
            tables.append(_show(floor_table(folder, quick=quick)))
        if has_wrk and postgres_url and wanted(5):
            postgres_rounds = max(1, rounds - 1)
            table = postgres_table(
                postgres_url,
                folder,
                seconds=max(postgres_rounds, seconds * 3 // 4),
                rounds=postgres_rounds,
                warmup=warmup,
                connections=args.connections,
            )
            tables.append(_show(table))
        if has_wrk and wanted(6):
            backends = ("SQLite", "PostgreSQL") if postgres_url else ("SQLite",)
            for backend in backends:
                table = growth_table(
                    backend,
                    folder,
                    data=TINY if quick else GROWTH,
                    seconds=growth_seconds,
                    warmup=warmup,
                    connections=args.growth_connections,
                    server_url=postgres_url,
                )
                tables.append(_show(table))
        if has_wrk:
            for section, run in (
                (7, _operations),
                (9, _outbox),
                (10, _idempotency),
                (11, _tail),
            ):
                if wanted(section):
                    tables.append(_show(run(folder, args, seconds, rounds, warmup)))
            missing = replicas_missing()
            if wanted(8) and missing:
                print(f"{missing}\n", flush=True)
            elif wanted(8):
                tables.append(_show(_replicas(folder, args, seconds, rounds, warmup)))
    print(summary(tables))
    if not has_wrk:
        print("\nThe HTTP targets were not measured: wrk is not installed (see section 3).")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\n(total {time.monotonic() - started:.0f} s; load average at the end {load})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
