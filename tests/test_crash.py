"""Issue 4: kill -9 in the middle of a stream of writes loses no acknowledged write."""

import asyncio
import os
import signal
from dataclasses import dataclass, field

from sqlalchemy import Engine, text

from app.testing.server import LiveServer
from tests.load import Connection, ProtocolError

WORKERS = 2
CLIENTS = 8
MAX_ITEMS_PER_CLIENT = 5_000
REQUEST_TIMEOUT = 10.0
PROGRESS_TIMEOUT = 20.0


@dataclass
class Stream:
    """Items the server acknowledged (id -> title, owner), and requests cut off by a kill."""

    acknowledged: dict[int, tuple[str, int]] = field(default_factory=dict)
    interrupted: int = 0
    unexpected: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def acknowledge(self, item_id: int, title: str, user_id: int) -> None:
        async with self.changed:
            self.acknowledged[item_id] = (title, user_id)
            self.changed.notify_all()

    async def progress(self, writes: int) -> None:
        """Wait until ``writes`` more writes have been acknowledged."""
        target = len(self.acknowledged) + writes
        async with asyncio.timeout(PROGRESS_TIMEOUT), self.changed:
            await self.changed.wait_for(lambda: len(self.acknowledged) >= target)


async def _writer(url: str, n: int, user_id: int, stream: Stream) -> None:
    with Connection(url, timeout=REQUEST_TIMEOUT) as connection:
        for i in range(MAX_ITEMS_PER_CLIENT):
            if stream.stop.is_set():
                return
            title = f"crash {n}-{i}"
            try:
                response = await connection.request(
                    "POST", f"/users/{user_id}/items/", {"title": title}
                )
            except (OSError, asyncio.IncompleteReadError, ProtocolError):
                stream.interrupted += 1  # its worker died: not acknowledged, maybe written
                await asyncio.sleep(0.02)
                continue
            if response.status == 200:
                await stream.acknowledge(response.json()["id"], title, user_id)
            else:
                stream.unexpected.append(f"{title}: {response.status} {response.body[:200]!r}")


async def _create_users(url: str) -> list[int]:
    with Connection(url, timeout=REQUEST_TIMEOUT) as connection:
        ids = []
        for n in range(CLIENTS):
            body = {"email": f"crash-{n}@example.com", "password": "pw"}
            response = await connection.request("POST", "/users/", body)
            assert response.status == 200, response.body
            ids.append(response.json()["id"])
        return ids


async def test_acknowledged_writes_survive_kill_9(database_url: str, schema: Engine) -> None:
    schema.dispose()  # no connection of this process may outlive the crash
    env = {"DATABASE_URL": database_url}
    stream = Stream()
    with LiveServer(env, workers=WORKERS, extra_args=("--no-access-log",)) as server:
        user_ids = await _create_users(server.url)
        writers = [
            asyncio.create_task(_writer(server.url, n, user_id, stream))
            for n, user_id in enumerate(user_ids)
        ]
        try:
            await stream.progress(200)
            os.kill(server.worker_pids()[0], signal.SIGKILL)
            await stream.progress(200)  # the other worker, then the restarted one, go on
            os.killpg(server.pid, signal.SIGKILL)  # every process of the server at once
            await asyncio.sleep(0.3)
        finally:
            stream.stop.set()
            await asyncio.gather(*writers)
    assert stream.interrupted > 0, "the kills did not cut off any request"
    assert stream.unexpected == []

    with (
        LiveServer(env, workers=1, extra_args=("--no-access-log",)) as server,
        Connection(server.url, timeout=REQUEST_TIMEOUT) as connection,
    ):
        for user_id in user_ids:
            response = await connection.request("GET", f"/users/{user_id}")
            assert response.status == 200
            served = {item["id"] for item in response.json()["items"]}
            mine = {id_ for id_, (_, owner) in stream.acknowledged.items() if owner == user_id}
            assert mine <= served
        response = await connection.request(
            "POST", f"/users/{user_ids[0]}/items/", {"title": "after the crash"}
        )
        assert response.status == 200

    with schema.connect() as conn:
        rows = conn.execute(text("SELECT id, title, owner_id FROM items")).all()
        stored = {id_: (title, owner) for id_, title, owner in rows}
        assert stream.acknowledged.items() <= stored.items()
        orphans = conn.execute(
            text("SELECT count(*) FROM items WHERE owner_id NOT IN (SELECT id FROM users)")
        ).scalar()
        assert orphans == 0
        if schema.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA integrity_check").all() == [("ok",)]
    print(
        f"\n{len(stream.acknowledged)} acknowledged writes, {stream.interrupted} cut off by "
        f"the kills, {len(stored) - len(stream.acknowledged) - 1} written but unacknowledged"
    )
