"""The ``app`` command: ``app serve``, ``app init-db``, ``app routes``, ``app db ...`` (Alembic),
``app worker`` and ``app outbox ...`` (the outbox, docs/outbox.md)."""

import argparse
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TypeVar

__all__ = ["main"]

T = TypeVar("T")


_METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Read by prometheus-client when it is first imported: set before the app is."""


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.config import settings as s
    from app.observability import tracing
    from app.observability.logs import logging_config

    problem = tracing.problem()
    if problem is not None:  # before any worker starts: one line, no traceback
        print(f"app: {problem}", file=sys.stderr)
        return 2

    log_level = args.log_level or s.LOG_LEVEL
    access_log = _or(args.access_log, s.ACCESS_LOG)
    options = {
        "host": args.host,
        "port": _or(args.port, s.PORT),
        "workers": args.workers,
        "log_level": log_level,
        "log_config": logging_config(
            level=log_level, log_format=s.LOG_FORMAT, access_log=access_log
        ),
        "access_log": False,  # app.access replaces it
        "timeout_graceful_shutdown": _or(
            args.timeout_graceful_shutdown, s.TIMEOUT_GRACEFUL_SHUTDOWN
        ),
        "proxy_headers": _or(args.proxy_headers, s.PROXY_HEADERS),
        "forwarded_allow_ips": _or(args.forwarded_allow_ips, s.FORWARDED_ALLOW_IPS),
        # asyncio's loop, not uvloop: see the --loop help and docs/concurrency.md ("The tail").
        "loop": args.loop,
    }
    # After a graceful shutdown uvicorn raises the signal again, to the handler that was
    # there before it: exit 0 instead of dying of SIGTERM.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    with _metrics_directory(s.METRICS_ENABLED):
        if args.workers > 1:
            from app.supervisor import Supervisor

            config = uvicorn.Config("app.main:app", **options)
            Supervisor(config, sockets=[config.bind_socket()]).run()
        else:
            uvicorn.run("app.main:app", **options)
    return 0


def _or(flag: T | None, setting: T) -> T:
    return setting if flag is None else flag


def _exit_cleanly(sig: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


@contextmanager
def _metrics_directory(enabled: bool) -> Iterator[None]:
    """A fresh directory for prometheus-client's multiprocess mode, which every worker
    writes its figures to; removed when the server exits."""
    if not enabled:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="app-metrics-") as directory:
        os.environ[_METRICS_DIR_ENV] = directory
        try:
            yield
        finally:
            del os.environ[_METRICS_DIR_ENV]


def _init_db(args: argparse.Namespace) -> int:
    from alembic.util import CommandError
    from sqlalchemy import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from app import migrations
    from app.database import ensure_database_schema
    from app.exceptions import UnversionedDatabaseError
    from containers import container

    s = container.settings()
    try:
        if migrations.schema_setup(s, s.DATABASE_URL) == "create_all":
            ensure_database_schema()
            print("app: schema is up to date (create_all)")
        else:
            with _alembic_progress():
                migrations.upgrade()
            print("app: database is at the head revision")
    except (SQLAlchemyError, CommandError, UnversionedDatabaseError) as error:
        where = make_url(s.DATABASE_URL).render_as_string(hide_password=True)
        print(f"app: cannot create the schema on {where}: {_reason(error)}", file=sys.stderr)
        return 1
    return 0


def _routes(args: argparse.Namespace) -> int:
    from app.routers import policy_table

    print(policy_table())
    return 0


def _reason(error: Exception) -> str:
    """The first line of the driver's own message (no "(psycopg.OperationalError)" prefix)."""
    from sqlalchemy.exc import DBAPIError

    cause = error.orig if isinstance(error, DBAPIError) else error
    return (str(cause).strip() or type(cause).__name__).splitlines()[0]


def _db(args: argparse.Namespace) -> int:
    from alembic import command
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from app import migrations
    from app.exceptions import UnversionedDatabaseError

    config = migrations.alembic_config()
    actions: dict[str, Callable[[], object]] = {
        "upgrade": lambda: migrations.upgrade(args.revision, sql=args.sql, config=config),
        "downgrade": lambda: command.downgrade(config, args.revision, sql=args.sql),
        "revision": lambda: command.revision(
            config, message=args.message, autogenerate=args.autogenerate
        ),
        "current": lambda: command.current(config, verbose=args.verbose),
        "stamp": lambda: command.stamp(config, args.revision),
        "check": lambda: command.check(config),
    }
    try:
        with _alembic_progress():
            actions[args.db_command]()
    except (SQLAlchemyError, CommandError, UnversionedDatabaseError) as error:
        print(f"app db {args.db_command}: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


@contextmanager
def _alembic_progress() -> Iterator[None]:
    """Alembic's steps ("Running upgrade 0001 -> 0002, ...") on stderr, as its own CLI shows."""
    logger = logging.getLogger("alembic.runtime.migration")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(lambda record: record.getMessage().startswith("Running "))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _db_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    db = commands.add_parser("db", help="schema migrations (Alembic); see docs/migrations.md")
    db.set_defaults(handler=_db)
    actions = db.add_subparsers(dest="db_command", required=True)

    upgrade = actions.add_parser("upgrade", help="migrate up to REVISION (default: head)")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.add_argument("--sql", action="store_true", help="print the SQL instead of running it")

    downgrade = actions.add_parser("downgrade", help="migrate down to REVISION (-1, base, ...)")
    downgrade.add_argument("revision")
    downgrade.add_argument(
        "--sql", action="store_true", help="print the SQL (REVISION is then FROM:TO)"
    )

    revision = actions.add_parser("revision", help="write a new revision script")
    revision.add_argument("-m", "--message", required=True)
    revision.add_argument(
        "--autogenerate", action="store_true", help="diff the models against the database"
    )

    current = actions.add_parser("current", help="show the database's revision")
    current.add_argument("-v", "--verbose", action="store_true")

    stamp = actions.add_parser(
        "stamp", help="record REVISION without migrating (adopt a create_all database)"
    )
    stamp.add_argument("revision")

    actions.add_parser("check", help="fail if the models differ from the migrated database")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="app", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the HTTP service with uvicorn",
        description="Serve app.main:app with uvicorn; each option defaults to its setting.",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, help="default: PORT (8000)")
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--log-level",
        choices=("critical", "error", "warning", "info", "debug", "trace"),
        help="default: LOG_LEVEL (info)",
    )
    serve.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        help="one line per request (default: ACCESS_LOG, on)",
    )
    serve.add_argument(
        "--timeout-graceful-shutdown",
        type=int,
        metavar="SECONDS",
        help="after SIGTERM, how long requests in flight may take to finish "
        "(default: TIMEOUT_GRACEFUL_SHUTDOWN, 20)",
    )
    serve.add_argument(
        "--proxy-headers",
        action=argparse.BooleanOptionalAction,
        help="trust X-Forwarded-For/-Proto from --forwarded-allow-ips (default: PROXY_HEADERS, on)",
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help="proxies whose X-Forwarded-* headers are trusted, comma-separated, or * "
        "(default: FORWARDED_ALLOW_IPS, 127.0.0.1)",
    )
    serve.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the event loop (default: asyncio). uvloop accepts one new connection per turn "
        "of the loop, so under load a burst of new connections waits seconds to be accepted "
        "while the first ones are served; asyncio's accepts every waiting one at once",
    )
    serve.set_defaults(handler=_serve)

    init_db = commands.add_parser(
        "init-db", help="create the schema: create_all on a default SQLite, else upgrade head"
    )
    init_db.set_defaults(handler=_init_db)

    routes = commands.add_parser(
        "routes", help="print every operation and who may call it with AUTH_ENABLED on"
    )
    routes.set_defaults(handler=_routes)

    _db_parser(commands)
    from app.outbox.commands import add_commands

    add_commands(commands)  # worker, outbox
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from pydantic import ValidationError

    try:
        import app.config  # noqa: F401  (validates the settings)
    except ValidationError as error:
        print(f"app: invalid configuration:\n{error}", file=sys.stderr)
        return 2
    handler = args.handler
    result: int = handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
