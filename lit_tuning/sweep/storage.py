"""Optuna storage: SQLite by default, PostgreSQL to share a study across machines; heartbeats; the study lock."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from lit_tuning.files import file_lock
from lit_tuning.paths import DEFAULT_STORAGE, sqlite_file

SUPPORTED_SCHEMES = ("sqlite", "postgresql")
# A worker that misses heartbeats for this long is taken for dead: its trial is failed and retried.
DEFAULT_HEARTBEAT_S = 30
MAX_RETRIES = 2  # a trial whose worker dies twice more is left failed, not retried forever
OPEN_ATTEMPTS = 5  # opening a storage whose schema another process is creating at the same moment
SCHEMA_RACE_CODES = {"42P07", "42710"}  # PostgreSQL's duplicate_table and duplicate_object


class StorageError(ValueError):
    """A storage URL the sweep cannot use; the message says what is allowed."""


def scheme(url: str) -> str:
    """Return the database kind of a storage URL (sqlite, postgresql, ...)."""
    return sqlalchemy.engine.make_url(url).get_backend_name()


def open_storage(url: str = DEFAULT_STORAGE, heartbeat_s: int = DEFAULT_HEARTBEAT_S) -> RDBStorage:
    """Open (creating tables if needed) the RDB storage with heartbeats and retry of trials whose worker died."""
    try:
        kind = scheme(url)
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(f"--storage {url!r} is not a database URL; allowed: {_allowed()}") from None
    if kind not in SUPPORTED_SCHEMES:
        raise StorageError(f"--storage {url!r} uses {kind!r}; allowed: {_allowed()}")
    engine_kwargs: dict = {"pool_pre_ping": True}
    database = sqlite_file(url)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
        # Several workers write one file: wait for the lock instead of failing with "database is locked".
        engine_kwargs = {"connect_args": {"timeout": 120}}
    callback = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES, inherit_intermediate_values=True)
    for attempt in range(1, OPEN_ATTEMPTS + 1):
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_s,
                              grace_period=3 * heartbeat_s, heartbeat_stale_trial_callback=callback)  # fmt: skip
        except sqlalchemy.exc.DatabaseError as error:  # OperationalError, or "file is not a database", or a race
            failure = error
            if not is_schema_race(error):
                break
            time.sleep(0.2 * attempt)
    raise StorageError(f"--storage {url!r} cannot be opened: {failure.orig}; allowed: {_allowed()}")


def is_schema_race(error: sqlalchemy.exc.DatabaseError) -> bool:
    """Whether opening failed because another process created Optuna's schema at the same moment.

    Machines started at once on an empty database race to create it; the losers get a duplicate key (the version
    row) or "already exists" (a table, a type). The schema is there now, so opening again succeeds.
    """
    code = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)  # psycopg 3, psycopg2
    return isinstance(error, sqlalchemy.exc.IntegrityError) or code in SCHEMA_RACE_CODES


def _allowed() -> str:
    return "sqlite:///path/to/file.db (default " + DEFAULT_STORAGE + ") or postgresql://user@host:port/database"


@contextlib.contextmanager
def study_lock(storage: RDBStorage, study_name: str) -> Iterator[None]:
    """Hold a lock, shared by every worker on every machine, while deciding whether the study needs another trial.

    Without it two workers can both see "23 of 24" and start trial 25 (Optuna's MaxTrialsCallback has this race).
    SQLite: a file lock beside the database; PostgreSQL: an advisory lock in the database itself.
    """
    database = sqlite_file(storage.url)
    if database is not None:
        with file_lock(database.with_name(database.name + ".lock")):
            yield
        return
    key = int.from_bytes(hashlib.sha1(study_name.encode()).digest()[:8], "big", signed=True)
    with storage.engine.connect() as connection:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})


def silence_optuna() -> None:
    """Keep Optuna's per-trial INFO lines out of the progress display (warnings still show)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
