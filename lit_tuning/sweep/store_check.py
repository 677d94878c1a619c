"""`python -m lit_tuning.sweep.store_check KIND NAME URL`: the check `make dashboard` and `make mlflow-ui` run first.

optuna-dashboard and `mlflow ui` both create (or migrate) whatever SQLite database their URL names, so a mistyped
or not-yet-written path, or the other tool's store, silently becomes a new empty store; other bad URLs end in a
traceback. This check refuses all of them in one line, reading the file read-only and writing nothing.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import sqlalchemy

from lit_tuning.commands import command_parser, parse_or_exit
from lit_tuning.paths import DEFAULT_STORAGE, RESULTS_ROOT, sqlite_file
from lit_tuning.sweep.storage import SUPPORTED_SCHEMES

StoreKind = Literal["optuna", "mlflow"]
# The databases each store may live in: the sweep's own for Optuna; for MLflow, its DATABASE_ENGINES (spelled out:
# importing MLflow costs a second that most checks never need).
SCHEMES: dict[str, tuple[str, ...]] = {
    "optuna": SUPPORTED_SCHEMES,
    "mlflow": ("sqlite", "postgresql", "mysql", "mssql"),
}
# A table every store of the kind has (and the other kind's store has not): how a mistyped store is told apart.
MARK_TABLE = {"optuna": "studies", "mlflow": "experiments"}
WHAT = {"optuna": "an Optuna storage", "mlflow": "an MLflow store"}
WRITER = {"optuna": "make sweep", "mlflow": "make sweep or make fit"}  # what creates the store


def allowed(kind: StoreKind) -> str:
    """Return the URLs a kind of store may be served from, for the error line."""
    default = DEFAULT_STORAGE if kind == "optuna" else f"sqlite:///{(RESULTS_ROOT / 'mlflow.db').resolve()}"
    others = " or ".join(f"{scheme}://..." for scheme in SCHEMES[kind] if scheme != "sqlite")
    return f"sqlite:///path/to/an/existing.db (default {default}) or {others}"


def store_problem(kind: StoreKind, url: str) -> str | None:
    """Return why the store at url cannot be served as it is (one line), or None; never creates or changes a file."""
    try:
        database = sqlite_file(url) if "://" in url else None
        scheme = sqlalchemy.engine.make_url(url).get_backend_name() if "://" in url else None
    except (ValueError, sqlalchemy.exc.ArgumentError):
        scheme = None
    if kind == "mlflow" and scheme in (None, "file"):  # MLflow takes a folder or file: URI for a file store
        return f"an MLflow file store (a folder), which lit_tuning never writes; allowed: {allowed(kind)}"
    if scheme is None:
        return f"not a database URL; allowed: {allowed(kind)}"
    if scheme not in SCHEMES[kind]:
        return f"{scheme}:// is not a database it can serve; allowed: {allowed(kind)}"
    if scheme != "sqlite":
        return None  # a database server: the server itself says whether it can connect
    if database is None:
        return f"an in-memory SQLite database, which holds nothing to serve; allowed: {allowed(kind)}"
    if not database.exists():
        folder = "" if database.parent.is_dir() else f" (nor does its folder {database.parent})"
        return f"{database} does not exist{folder}; run {WRITER[kind]} first"
    return _sqlite_problem(kind, database, url)


def _sqlite_problem(kind: StoreKind, database: Path, url: str) -> str | None:
    """Return why an existing SQLite file is not a store of the kind at this code's schema, or None."""
    if not database.is_file():
        return f"{database} is not a file; allowed: {allowed(kind)}"
    # mode=ro: a probe must neither create the file nor write to it (no journal either)
    try:
        connection = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            revision = None
            if "alembic_version" in tables:
                revision = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:  # "file is not a database", or unreadable
        return f"{database} is not an SQLite database ({error}); allowed: {allowed(kind)}"
    if MARK_TABLE[kind] not in tables:
        return f"{database} is not {WHAT[kind]} (it has no {MARK_TABLE[kind]} table); allowed: {allowed(kind)}"
    if kind == "mlflow":
        from lit_tuning.tracking.store import head_revision  # imports MLflow: only when it is needed

        found = revision[0] if revision else None
        if found != head_revision():
            return (
                f"{database} has MLflow schema {found}, this MLflow needs {head_revision()}; "
                f"back it up, then run: mlflow db upgrade {url}"
            )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Check one store URL; print `error: NAME=URL: why` and return 2 when it cannot be served, else return 0."""
    parser = command_parser("python -m lit_tuning.sweep.store_check", __doc__.splitlines()[0])
    parser.add_argument("kind", type=StoreKind, help="what the store holds: optuna (studies) or mlflow (runs)")
    parser.add_argument("name", help="the setting the URL came from, for the error line (STORAGE, MLFLOW_STORE)")
    parser.add_argument("url", help="the store's URL")
    args = parse_or_exit(parser, argv)
    problem = store_problem(args.kind, args.url)
    if problem is None:
        return 0
    print(f"error: {args.name}={args.url}: {problem}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
