"""Read replicas: which one may serve a read, and what each is known to have replayed.

A ``ReplicaSet`` (built by the container from DATABASE_REPLICA_URLS) holds a ``Replica`` per
streaming standby: its engine, its session factory and its last known state. ``Reader``
asks it which replicas may serve a read, in what order; ``monitor()`` refreshes their
state in the background, in worker threads, every DB_REPLICA_CHECK_SECONDS. A WAL position
is an LSN as an integer (``app.replicas.positions``).
"""

import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import anyio
import anyio.to_thread
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.db.session import AppSession
from app.observability import metrics
from app.replicas.positions import REPLAYED, parse_lsn

__all__ = [
    "CHECK_TIMEOUT_SECONDS",
    "PRIMARY",
    "Replica",
    "ReplicaSet",
    "build_replicas",
]

log = logging.getLogger("app")

PRIMARY = "engine"
"""The primary's name in metrics and logs (its engine provider's)."""
CHECK_TIMEOUT_SECONDS = 2.0
"""A replica whose check has not answered within this is unreachable until one does."""

# The replica's own view of its lag: none when it has replayed all it received, else the age
# of the last transaction it replayed (an overestimate after an idle spell, until it has
# replayed the new WAL). Blind to WAL the primary has not sent yet: see ReplicaSet._behind.
_STATE = text(
    f"SELECT ({REPLAYED})::text, CASE WHEN NOT pg_is_in_recovery() "
    "OR pg_last_wal_receive_lsn() IS NULL "
    "OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0 "
    "ELSE GREATEST(0, EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())) END"
)
# What the primary has flushed, so may send: a replica can replay up to here.
_FLUSHED = text("SELECT pg_current_wal_flush_lsn()::text")


@dataclass(eq=False)
class Replica:
    """One replica and what the last check (or read) found out about it."""

    name: str
    engine: Engine
    sessions: Callable[[], Session]
    up: bool = False
    """It answered its last check, and no read has failed on it since."""
    lag: float | None = None
    """Seconds behind the primary, at its last check; None while down."""
    replayed: int = 0
    """A WAL position it is known to have replayed."""
    failed_at: float = -math.inf
    """When a read last failed on it (``time.monotonic()``)."""
    probing: bool = False
    """A check is running in a worker thread (perhaps one that gave up waiting for it)."""
    problem: str = ""
    """Why it is down or skipped, for the log."""

    def reached(self, position: int) -> bool:
        return self.replayed >= position

    def saw_replayed(self, position: int) -> None:
        if position > self.replayed:
            self.replayed = position


class ReplicaSet:
    """The replicas that ``Read`` units may run on, taking turns; each is skipped while it is
    down (its check or a read on it failed) or more than ``max_lag`` seconds behind."""

    def __init__(
        self,
        replicas: Sequence[Replica],
        *,
        primary: Engine | None = None,
        max_lag: float,
        check_interval: float,
        check_timeout: float = CHECK_TIMEOUT_SECONDS,
        metrics_enabled: bool = False,
    ) -> None:
        if not replicas:
            raise ValueError("a ReplicaSet needs at least one replica")
        self.replicas = tuple(replicas)
        self.primary = primary
        self.max_lag = max_lag
        self.check_interval = check_interval
        self.check_timeout = check_timeout
        self.metrics_enabled = metrics_enabled
        if metrics_enabled:
            metrics.declare_engines([PRIMARY, *(r.name for r in self.replicas)])
        self._turn = itertools.count()
        self._serving: dict[str, bool | None] = dict.fromkeys(r.name for r in self.replicas)
        self._flushed: deque[tuple[float, int]] = deque()
        """(``time.monotonic()``, the primary's flushed WAL position then), oldest first,
        one per check, going back a little further than ``max_lag``."""
        # The checks' own threads (one per replica, one for the primary): they never wait
        # behind requests for one.
        self._limiter = anyio.CapacityLimiter(len(self.replicas) + 1)

    def serves(self, replica: Replica) -> bool:
        """Whether ``replica`` may serve reads now: up, and not too far behind."""
        return replica.up and replica.lag is not None and replica.lag <= self.max_lag

    def candidates(self, position: int | None) -> list[Replica]:
        """The replicas to try for a read, in order: those that serve, taking turns; for a
        read that must see ``position``, the ones known to have replayed it first."""
        serving = [r for r in self.replicas if self.serves(r)]
        if len(serving) > 1:
            turn = next(self._turn) % len(serving)
            serving = serving[turn:] + serving[:turn]
            if position is not None:
                serving.sort(key=lambda r: not r.reached(position))
        return serving

    def failed(self, replica: Replica, error: BaseException) -> None:
        """A read on ``replica`` failed for a reason of the database's: skip it until a check
        that starts after now succeeds. Called from the read's worker thread."""
        replica.failed_at = time.monotonic()
        replica.up, replica.lag = False, None
        replica.problem = f"a read failed: {str(error).splitlines()[0]}"
        self._observe(replica)

    def served(self, name: str) -> None:
        """A read was answered by the engine ``name`` (``engine`` for the primary)."""
        if self.metrics_enabled:
            metrics.count_read(name)

    async def check(self) -> None:
        """Note where the primary is, then check every replica once, at the same time; each
        within ``check_timeout``."""
        await self._sample_primary()
        async with anyio.create_task_group() as group:
            for replica in self.replicas:
                group.start_soon(self._check, replica)

    async def monitor(self) -> None:
        """Check every replica every ``check_interval`` seconds, until cancelled."""
        while True:
            await anyio.sleep(self.check_interval)
            await self.check()

    async def _check(self, replica: Replica) -> None:
        if replica.probing:
            # Its last check is still waiting for an answer (it was marked down then).
            return
        started = time.monotonic()
        state: tuple[int, float] | None = None
        with anyio.move_on_after(self.check_timeout) as timeout:
            state = await anyio.to_thread.run_sync(
                self._probe, replica, limiter=self._limiter, abandon_on_cancel=True
            )
        if replica.failed_at > started:
            return  # a read failed on it meanwhile: that is the newer news
        if state is None:
            if timeout.cancelled_caught:
                replica.problem = f"no answer to its check within {self.check_timeout:g}s"
            replica.up, replica.lag = False, None
        else:
            replayed, own_lag = state
            replica.lag = max(own_lag, self._behind(replayed, time.monotonic()))
            replica.up = True
            replica.saw_replayed(replayed)
            replica.problem = (
                f"{replica.lag:.1f}s behind (DB_REPLICA_MAX_LAG_SECONDS={self.max_lag:g})"
            )
        self._observe(replica)

    async def _sample_primary(self) -> None:
        if self.primary is None:
            return
        position: int | None = None
        with anyio.move_on_after(self.check_timeout):
            position = await anyio.to_thread.run_sync(
                self._primary_position, limiter=self._limiter, abandon_on_cancel=True
            )
        if position is None:
            return  # down or too busy to say: see _behind
        now = time.monotonic()
        self._flushed.append((now, position))
        keep = now - self.max_lag - 2 * self.check_interval
        while len(self._flushed) > 1 and self._flushed[1][0] < keep:
            self._flushed.popleft()

    def _primary_position(self) -> int | None:
        assert self.primary is not None
        try:
            with self.primary.connect() as connection:
                connection.execution_options(isolation_level="AUTOCOMMIT")
                return parse_lsn(connection.execute(_FLUSHED).scalar() or "")
        except SQLAlchemyError:
            return None

    def _behind(self, replayed: int, now: float) -> float:
        """How long ago the primary had flushed WAL that the replica has not replayed yet:
        its lag, to within a check, whether or not the replica has received that WAL. 0 when
        it has replayed what the primary had flushed at the last check, and when the primary
        has not said for longer than ``max_lag`` (it is down): then the replicas' own view of
        their lag is all there is, and reads go on from them."""
        if not self._flushed or now - self._flushed[-1][0] > self.max_lag:
            return 0.0
        for at, position in self._flushed:
            if position > replayed:
                return now - at
        return 0.0

    def _probe(self, replica: Replica) -> tuple[int, float] | None:
        """Its replay position and lag, in one round trip; None when it cannot be reached."""
        replica.probing = True
        try:
            with replica.engine.connect() as connection:
                connection.execution_options(isolation_level="AUTOCOMMIT")
                position, lag = connection.execute(_STATE).one()
            return parse_lsn(position or "") or 0, float(lag)
        except SQLAlchemyError as error:
            replica.problem = str(error).splitlines()[0]
            return None
        finally:
            replica.probing = False

    def _observe(self, replica: Replica) -> None:
        """Log when a replica starts or stops serving reads; keep its gauges current."""
        serving = self.serves(replica)
        if serving != self._serving[replica.name]:
            self._serving[replica.name] = serving
            if serving:
                log.info("%s serves reads (%.1fs behind)", replica.name, replica.lag or 0.0)
            else:
                log.warning(
                    "%s serves no reads until it recovers: %s", replica.name, replica.problem
                )
        if self.metrics_enabled:
            metrics.observe_replica(replica.name, up=replica.up, lag=replica.lag)


def build_replicas(
    engines: Sequence[Engine],
    primary: Engine,
    *,
    max_lag: float,
    check_interval: float,
    metrics_enabled: bool,
) -> ReplicaSet | None:
    """The replicas that reads may run on, ``replica-1`` first; None without any: every
    read on the primary, as without replicas."""
    if not engines:
        return None
    replicas = [
        Replica(f"replica-{n}", engine, partial(AppSession, bind=engine, expire_on_commit=False))
        for n, engine in enumerate(engines, 1)
    ]
    return ReplicaSet(
        replicas,
        primary=primary,
        max_lag=max_lag,
        check_interval=check_interval,
        metrics_enabled=metrics_enabled,
    )
