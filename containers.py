"""The composition root: the only place that builds engines, session factories and services.

It only declares providers; how each object is built lives beside the object (engine options
in ``app.db.engines``, gate sizing in ``app.units.sizing``). Singletons are the objects that
hold state the whole process shares (engines, the replica set, the gates and the units of
work that queue at them); everything else is a factory, built at each use from the current
providers, so an override made at any time reaches every caller.
"""

from dependency_injector import containers, providers
from pwdlib import PasswordHash
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.authenticator import Authenticator
from app.auth.credentials import Passwords, Tokens
from app.auth.sessions import SessionStore
from app.auth.throttle import LoginThrottle
from app.config import settings
from app.db.engines import build_async_engine, build_engine, build_replica_engines
from app.db.session import AppSession
from app.outbox.events import session_info
from app.replicas.replica_set import build_replicas
from app.services import ItemService, UserService
from app.units.idempotency import IdempotencyKeys
from app.units.reader import Reader
from app.units.sizing import build_gates, inline_read_budget, write_batch_size
from app.units.writer import Writer

__all__ = ["Container", "container"]


class Container(containers.DeclarativeContainer):
    """Settings flow into engine singletons, session factories and services."""

    settings = providers.Object(settings)

    engine = providers.ThreadSafeSingleton(build_engine, settings)
    async_engine = providers.ThreadSafeSingleton(build_async_engine, settings)

    session = providers.Factory(
        AppSession,
        bind=engine,
        expire_on_commit=False,
        info=providers.Callable(session_info, settings),
    )
    async_session = providers.Factory(
        AsyncSession, bind=async_engine, expire_on_commit=False, sync_session_class=AppSession
    )

    # Read replicas (DATABASE_REPLICA_URLS): sync engines for Read units only; None without.
    replica_engines = providers.ThreadSafeSingleton(build_replica_engines, settings)
    replicas = providers.ThreadSafeSingleton(
        build_replicas,
        replica_engines,
        engine,
        max_lag=settings.provided.DB_REPLICA_MAX_LAG_SECONDS,
        check_interval=settings.provided.DB_REPLICA_CHECK_SECONDS,
        metrics_enabled=settings.provided.METRICS_ENABLED,
    )

    gates = providers.ThreadSafeSingleton(build_gates, settings, engine)
    reader = providers.ThreadSafeSingleton(
        Reader,
        gates.provided.read,
        session.provider,
        inline_budget=providers.Callable(inline_read_budget, settings, engine),
        replicas=replicas,
    )
    writer = providers.ThreadSafeSingleton(
        Writer,
        gates.provided.write,
        session.provider,
        batch_size=providers.Callable(write_batch_size, settings, engine),
        wal_positions=providers.Callable(bool, replicas),
    )

    # Idempotency-Key: one per process, for the cadence of its sweep of expired keys.
    idempotency_keys = providers.ThreadSafeSingleton(
        IdempotencyKeys,
        ttl_hours=settings.provided.IDEMPOTENCY_KEY_TTL_HOURS,
        lock_wait=settings.provided.DB_QUEUE_TIMEOUT,
        secret=settings.provided.SECRET_KEY,
    )

    password_hasher = providers.Singleton(PasswordHash.recommended)
    passwords = providers.Factory(Passwords, password_hasher)
    tokens = providers.Factory(Tokens.from_settings, settings)

    user_service = providers.Factory(UserService, passwords=passwords)
    item_service = providers.Factory(ItemService)
    login_throttle = providers.Factory(LoginThrottle.from_settings, settings)
    session_store = providers.Factory(SessionStore, tokens.provided.refresh_lifetime)
    authenticator = providers.Factory(
        Authenticator,
        reader,
        writer,
        user_service,
        passwords,
        tokens,
        throttle=login_throttle,
        sessions=session_store,
    )


container = Container()
