"""The local MLflow store: created whole or not at all, repaired if an older start-up was killed mid-migration."""

from __future__ import annotations

import functools
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import sqlalchemy
from mlflow import MlflowClient
from mlflow.store.db.utils import _get_latest_schema_revision
from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from lit_tuning.files import file_lock
from lit_tuning.paths import sqlite_file

log = logging.getLogger("lit_tuning.tracking")
# MLflow's own head revision (reads its migration scripts once); there is no public API for it.
head_revision = functools.cache(_get_latest_schema_revision)
CREATING = ".creating-"  # <store>.creating-<pid>: a store being built; left behind only by a killed builder
BROKEN = ".broken-"  # <store>.broken-<time>: a half-migrated store moved aside (kept, never deleted)


def server_problem(tracking_uri: str, timeout_s: float = 5.0) -> str | None:
    """Return why an MLflow server URI cannot be used (one line), or None; local stores are not probed.

    MLflow's client retries a refused connection for minutes before it fails with a traceback: ask /health first.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout_s):
            return None
    except urllib.error.HTTPError as error:
        return f"MLflow server {tracking_uri} answered /health with HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return f"MLflow server {tracking_uri} is not reachable ({reason})"


def open_client(tracking_uri: str) -> MlflowClient:
    """Return an MLflow client for the URI, making sure a local SQLite store exists whole first."""
    ensure_store(tracking_uri)
    return MlflowClient(tracking_uri)


def ensure_store(tracking_uri: str) -> Path | None:
    """Create or repair the SQLite store of tracking_uri under its lock; return its file (None for a server).

    MLflow migrates a new store in place, in ~100 steps that are not one transaction: a kill in between
    leaves a store every later start-up refuses ("table ... already exists"). So the store is built in a
    temporary file and renamed into place, and a half-built store from before is moved aside and rebuilt.
    """
    database = sqlite_file(tracking_uri) if "://" in tracking_uri else None
    if database is None:
        return None
    database = database.resolve()
    with file_lock(database.with_name(database.name + ".lock")):
        for leftover in database.parent.glob(f"{database.name}{CREATING}*"):  # a builder killed before its rename
            leftover.unlink(missing_ok=True)
        if database.exists() and not _is_half_built(database):
            return database
        if database.exists():
            aside = database.with_name(f"{database.name}{BROKEN}{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(database, aside)
            log.warning("MLflow store %s was half-migrated by a killed start-up; moved to %s, rebuilt", database, aside)
        _build(database)
    return database


def _build(database: Path) -> None:
    """Create and migrate a store in a temporary file beside database, then rename it into place."""
    database.parent.mkdir(parents=True, exist_ok=True)
    building = database.with_name(f"{database.name}{CREATING}{os.getpid()}")
    uri = f"sqlite:///{building}"
    try:
        store = SqlAlchemyStore(uri, Path(DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH).resolve().as_uri())
        store.engine.dispose()
        SqlAlchemyStore._engine_map.pop(uri, None)  # MLflow caches one engine per URL (private map); this one is done
        with open(building, "rb+") as handle:
            os.fsync(handle.fileno())  # the rename must not land before the bytes do
        os.replace(building, database)
    finally:
        building.unlink(missing_ok=True)


def _is_half_built(database: Path) -> bool:
    """True for a store whose migration stopped before the last revision and which holds no run yet."""
    engine = sqlalchemy.create_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            tables = set(sqlalchemy.inspect(connection).get_table_names())
            revision = None
            if "alembic_version" in tables:
                revision = connection.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar()
            if revision == head_revision():
                return False
            # An out-of-date store that holds runs was made by an older MLflow: MLflow's own upgrade message applies.
            return "runs" not in tables or not connection.execute(sqlalchemy.text("SELECT 1 FROM runs LIMIT 1")).first()
    finally:
        engine.dispose()
