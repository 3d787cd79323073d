"""The app behind PgBouncer's transaction pooling needs DB_PREPARE_THRESHOLD=none (before
PgBouncer 1.22 with max_prepared_statements > 0): with psycopg's default, a statement run a
few times is prepared on one server connection, and the next transaction, on another server
connection, fails with 'prepared statement "_pg3_0" does not exist'.

Only writes show it: psycopg forgets its prepared statements at every ROLLBACK, which is how
every read ends (app.units), so reads never get to prepare one."""

from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import ProgrammingError

from app.config import Settings
from app.database import ensure_database_schema
from app.main import app
from app.testing.plugin import engine_pair
from app.testing.postgres import PgBouncer, PostgresServer
from containers import container

pytestmark = pytest.mark.pgbouncer

SHARES_SERVERS = True  # module-scoped: under xdist, its tests run on one worker

REQUESTS = 12


@pytest.fixture(scope="module")
def bouncer() -> Iterator[PgBouncer]:
    """A server of the module's own, behind PgBouncer 1.18 (Debian 12's): transaction
    pooling, no support for named prepared statements."""
    with ExitStack() as stack:
        server = stack.enter_context(PostgresServer.create(databases=["app"]))
        yield stack.enter_context(PgBouncer(server, pool_mode="transaction"))


@pytest.fixture(params=[5, None], ids=["threshold-5", "threshold-none"])
async def through_pgbouncer(
    request: pytest.FixtureRequest, bouncer: PgBouncer
) -> AsyncIterator[int | None]:
    """The container's engines through PgBouncer, one connection each, with the param's
    DB_PREPARE_THRESHOLD."""
    threshold: int | None = request.param
    s = Settings(
        DATABASE_URL=bouncer.url("app"),
        DB_PREPARE_THRESHOLD=threshold,
        DB_POOL_SIZE=1,
        DB_MAX_OVERFLOW=0,
    )
    async with engine_pair(s) as (engine, async_engine):
        with (
            container.settings.override(s),
            container.engine.override(engine),
            container.async_engine.override(async_engine),
        ):
            ensure_database_schema()
            yield threshold


def _writes_on_alternating_server_connections(bouncer: PgBouncer) -> list[int]:
    """The same write, a transaction each; every other time, another client holds the server
    connection the app used last, so that PgBouncer hands the app a different one."""
    statuses: list[int] = []
    with (
        TestClient(app) as client,
        psycopg.connect(bouncer.url("app"), prepare_threshold=None) as holder,
    ):
        email = f"pgbouncer-{id(statuses)}@example.com"
        user = client.post("/users/", json={"email": email, "password": "pw"})
        assert user.status_code == 200, user.text
        for i in range(REQUESTS):
            if i % 2:
                holder.execute("SELECT 1")  # its open transaction pins a server connection
            item = client.post(f"/users/{user.json()['id']}/items/", json={"title": f"t{i}"})
            statuses.append(item.status_code)
            holder.rollback()
    return statuses


def test_only_unprepared_statements_work_behind_transaction_pooling(
    through_pgbouncer: int | None, bouncer: PgBouncer
) -> None:
    if through_pgbouncer is None:
        assert _writes_on_alternating_server_connections(bouncer) == [200] * REQUESTS
    else:
        # psycopg's default breaks, as documented: the request is a 500.
        with pytest.raises(ProgrammingError, match=r'prepared statement "_pg3_\d+" does not'):
            _writes_on_alternating_server_connections(bouncer)
