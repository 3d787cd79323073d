"""``app worker`` and ``app outbox stats|dead|redrive``: their arguments and what they run."""

import argparse
import logging.config
import sys
from datetime import UTC, datetime

__all__ = ["add_commands"]


def add_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    worker = commands.add_parser(
        "worker",
        help="deliver the outbox's events: webhooks and the handlers of app.jobs",
        description="Claim due outbox events, run their handlers, retry with backoff; exit 0 "
        "after SIGTERM once the deliveries in flight are done (docs/outbox.md).",
    )
    worker.add_argument(
        "--metrics-port", type=int, help="serve Prometheus /metrics (default: OUTBOX_METRICS_PORT)"
    )
    worker.set_defaults(handler=_worker)

    outbox = commands.add_parser(
        "outbox", help="the outbox's figures; list and redrive dead events"
    )
    outbox.set_defaults(handler=_outbox)
    actions = outbox.add_subparsers(dest="outbox_command", required=True)
    actions.add_parser("stats", help="pending, oldest pending age and dead events")
    dead = actions.add_parser("dead", help="list the dead events, oldest first")
    dead.add_argument("--limit", type=int, default=100)
    redrive = actions.add_parser("redrive", help="make dead events due again (fresh attempts)")
    redrive.add_argument("ids", nargs="*", metavar="ID")
    redrive.add_argument("--all", action="store_true", help="every dead event")


def _worker(args: argparse.Namespace) -> int:
    import anyio
    from prometheus_client import start_http_server

    from app.observability import metrics, tracing
    from app.observability.logs import logging_config
    from app.outbox.handlers import discover, registry
    from app.outbox.store import Outbox
    from app.outbox.webhooks import Webhooks
    from app.outbox.worker import Worker, WorkerOptions
    from containers import container

    problem = tracing.problem()
    if problem is not None:  # one line, as app serve says it
        print(f"app worker: {problem}", file=sys.stderr)
        return 2
    s = container.settings()
    logging.config.dictConfig(
        logging_config(level=s.LOG_LEVEL, log_format=s.LOG_FORMAT, access_log=False)
    )
    log = logging.getLogger("app.outbox")
    # Its own line per request would show the whole URL, which may hold a token.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    jobs = discover()
    webhooks = None
    if s.WEBHOOK_URLS:
        assert s.WEBHOOK_SECRET is not None  # the settings refuse URLs without it
        webhooks = Webhooks(
            s.WEBHOOK_URLS,
            s.WEBHOOK_SECRET,
            connect_timeout=s.WEBHOOK_CONNECT_TIMEOUT_SECONDS,
            timeout=s.WEBHOOK_TIMEOUT_SECONDS,
        )
        webhooks.register(registry)
    port = args.metrics_port or s.OUTBOX_METRICS_PORT
    metrics.register_outbox()
    if port:
        start_http_server(port)
    options = WorkerOptions(
        batch_size=s.OUTBOX_BATCH_SIZE,
        lease=s.OUTBOX_LEASE_SECONDS,
        poll=s.OUTBOX_POLL_SECONDS,
        max_attempts=s.OUTBOX_MAX_ATTEMPTS,
        backoff_base=s.OUTBOX_BACKOFF_SECONDS,
        backoff_max=s.OUTBOX_BACKOFF_MAX_SECONDS,
        retention=s.OUTBOX_RETENTION_HOURS * 3600,
    )
    worker = Worker(Outbox(container.engine()), registry, options)
    log.info(
        "outbox worker started: %d webhook URLs, jobs %s, handlers %s%s",
        len(s.WEBHOOK_URLS),
        jobs,
        registry.names(),
        f", metrics on :{port}" if port else "",
    )

    async def main() -> None:
        try:
            await worker.run()
        finally:
            if webhooks is not None:
                await webhooks.aclose()

    if tracing.wanted():  # each delivery a span, linked to the request that wrote the event
        tracing.start([("primary", container.engine())])
    try:
        anyio.run(main)
    finally:
        tracing.shutdown()
    container.engine().dispose()
    log.info("outbox worker stopped")
    return 0


def _outbox(args: argparse.Namespace) -> int:
    import time

    from app.outbox.store import Outbox
    from containers import container

    outbox = Outbox(container.engine())
    if args.outbox_command == "stats":
        stats = outbox.stats()
        oldest = stats.oldest_created_at
        age = f"{time.time() - oldest:.1f}s" if oldest is not None else "-"
        print(f"pending {stats.pending}  oldest pending {age}  dead {stats.dead}")
    elif args.outbox_command == "dead":
        rows = outbox.dead(args.limit)
        for event_id, event_type, attempts, dead_at, error in rows:
            when = datetime.fromtimestamp(dead_at, UTC).isoformat(timespec="seconds")
            print(f"{event_id}  {event_type}  attempts={attempts}  dead_at={when}  {error or ''}")
        print(f"{len(rows)} dead events{' (--limit reached)' if len(rows) >= args.limit else ''}")
    else:
        if bool(args.ids) == args.all:
            print("app outbox redrive: name event IDs or pass --all", file=sys.stderr)
            return 2
        count = outbox.redrive(None if args.all else args.ids)
        print(f"{count} dead events made due again")
    return 0
