"""The ``app`` command: ``app serve`` and ``app init-db``."""

import argparse
import sys

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run(
        "app.main:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
    )
    return 0


def _init_db(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from app.database import ensure_database_schema

    try:
        ensure_database_schema()
    except SQLAlchemyError as error:
        print(f"app: cannot create the schema: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    print("app: schema is up to date")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="app", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service with uvicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(handler=_serve)

    init_db = commands.add_parser("init-db", help="create the missing tables")
    init_db.set_defaults(handler=_init_db)
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
