"""``python -m bench [--quick]``: every benchmark and its baseline, in one run, as Markdown."""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.floor import floor_table
from bench.micro import provider_table, session_table
from bench.report import Table, machine, render, summary
from bench.web import WRK_MISSING, web_tables


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="smoke mode: short runs, 1 worker (~15 s)"
    )
    parser.add_argument(
        "--duration",
        type=int,
        help="seconds of load per server and request (default 8, quick 1)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="alternating rounds the duration is split into (default 4, quick 1)",
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        help="uvicorn worker counts to compare (default 1 2, quick 1)",
    )
    return parser


def _show(table: Table) -> Table:
    print(render(table) + "\n", flush=True)
    return table


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quick: bool = args.quick
    seconds: int = args.duration or (1 if quick else 8)
    rounds: int = args.rounds or (1 if quick else 4)
    workers: tuple[int, ...] = tuple(args.workers or ((1,) if quick else (1, 2)))
    has_wrk = shutil.which("wrk") is not None
    started = time.monotonic()
    print(f"## Benchmarks{' (quick smoke run)' if quick else ''}\n\n{machine()}\n", flush=True)
    tables: list[Table] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        folder = Path(tmp)
        tables.append(_show(session_table(folder, quick=quick)))
        tables.append(_show(provider_table(quick=quick)))
        if has_wrk:
            for table in web_tables(
                folder,
                workers=workers,
                seconds=seconds,
                rounds=rounds,
                warmup=0 if quick else 1,
                connections=args.connections,
            ):
                tables.append(_show(table))
        else:
            print(f"### 3. HTTP under wrk: not run\n\n{WRK_MISSING}\n", flush=True)
        tables.append(_show(floor_table(folder, quick=quick)))
    print(summary(tables))
    if not has_wrk:
        print("\nThe HTTP targets were not measured: wrk is not installed (see section 3).")
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
