"""`make mlflow-ui` and `make dashboard` serve only an existing store of their kind: else one line, nothing written."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from conftest import ROOT
from web_helpers import free_port, wait_until_up

from lit_tuning.tracking.store import ensure_store, head_revision

TARGETS = {"mlflow": ("mlflow-ui", "MLFLOW_STORE"), "optuna": ("dashboard", "STORAGE")}


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real MLflow store (built as every run builds it) and a real Optuna storage with one study."""
    root = tmp_path_factory.mktemp("stores")
    mlflow_db = ensure_store(f"sqlite:///{root / 'mlflow.db'}")
    optuna.create_study(study_name="served", storage=f"sqlite:///{root / 'optuna.db'}")
    return {"mlflow": mlflow_db, "optuna": root / "optuna.db"}


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its bytes (None for a folder): equal snapshots mean nothing was written."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def run_make(target: str, variable: str, url: str) -> subprocess.CompletedProcess[str]:
    """Run the real target as users do (-o install: never reinstall from a test); stop all it started on a hang."""
    command = ["make", "--no-print-directory", "-o", "install", target, f"VENV={sys.prefix}", f"{variable}={url}",
               f"MLFLOW_PORT={free_port()}", f"DASHBOARD_PORT={free_port()}"]  # fmt: skip
    # start_new_session: if the check let a server start, the whole group is stopped rather than left listening
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            pytest.fail(f"make {target} {variable}={url} started a server instead of refusing")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


Setup = Callable[[Path, dict[str, Path]], str]  # (a test's empty folder, the real stores) -> the URL to serve


def url_of(path: str) -> Setup:
    """A case whose URL names path under the test's folder, which holds nothing."""
    return lambda tmp, stores: f"sqlite:///{tmp / path}"


def given(url: str) -> Setup:
    """A case whose URL is url itself ({tmp}: the test's folder)."""
    return lambda tmp, stores: url.format(tmp=tmp)


def file_with(data: bytes) -> Setup:
    """A case whose URL names a file holding data."""

    def setup(tmp: Path, stores: dict[str, Path]) -> str:
        (tmp / "store.db").write_bytes(data)
        return f"sqlite:///{tmp / 'store.db'}"

    return setup


def folder(tmp: Path, stores: dict[str, Path]) -> str:
    """A case whose URL names a folder."""
    (tmp / "store.db").mkdir()
    return f"sqlite:///{tmp / 'store.db'}"


def copy_of(kind: str) -> Setup:
    """A case whose URL names a copy of the real store of kind (served as the other kind: a mistyped URL)."""

    def setup(tmp: Path, stores: dict[str, Path]) -> str:
        shutil.copy(stores[kind], tmp / "store.db")
        return f"sqlite:///{tmp / 'store.db'}"

    return setup


def other_mlflow_version(tmp: Path, stores: dict[str, Path]) -> str:
    """A copy of the MLflow store at another schema revision, as another MLflow version leaves it."""
    url = copy_of("mlflow")(tmp, stores)
    connection = sqlite3.connect(tmp / "store.db")
    with connection:
        connection.execute("UPDATE alembic_version SET version_num = '0000older'")
    connection.close()
    return url


STORE = "{tmp}/store.db"
ALLOWED = "; allowed: sqlite:///"
FILE_STORE = "an MLflow file store (a folder), which lit_tuning never writes" + ALLOWED
SERVER = "{scheme}:// is not a database it can serve" + ALLOWED
# (kind, case, its setup, the start of what follows "error: VARIABLE=URL: " on the one error line)
CASES: list[tuple[str, str, Setup, str]] = []
for _kind, _writer in (("mlflow", "make sweep or make fit"), ("optuna", "make sweep")):
    CASES += [
        (_kind, "missing-file", url_of("typo.db"), f"{{tmp}}/typo.db does not exist; run {_writer} first"),
        (_kind, "missing-folder", url_of("no/x.db"), "{tmp}/no/x.db does not exist (nor does its folder {tmp}/no)"),
        (_kind, "text-file", file_with(b"notes\n"), f"{STORE} is not an SQLite database (file is not a database)"),
        (_kind, "empty-file", file_with(b""), f"{STORE} is not an "),
        (_kind, "folder", folder, f"{STORE} is not a file{ALLOWED}"),
        (_kind, "in-memory", given("sqlite://"), "an in-memory SQLite database, which holds nothing"),
        (_kind, "server-url", given("http://127.0.0.1:5000"), SERVER.format(scheme="http")),
    ]
OTHER_VERSION = (
    f"{STORE} has MLflow schema 0000older, this MLflow needs {{head}}; back it up, then run: mlflow db upgrade"
)
CASES += [
    ("mlflow", "file-uri", given("file://{tmp}/mlruns"), FILE_STORE),
    ("mlflow", "plain-folder", given("{tmp}"), FILE_STORE),
    ("mlflow", "optuna-storage", copy_of("optuna"), f"{STORE} is not an MLflow store (it has no experiments table)"),
    ("mlflow", "other-version", other_mlflow_version, f"{OTHER_VERSION} sqlite:///{STORE}"),
    ("optuna", "plain-path", given("{tmp}/optuna.db"), f"not a database URL{ALLOWED}"),
    ("optuna", "mlflow-store", copy_of("mlflow"), f"{STORE} is not an Optuna storage (it has no studies table)"),
    ("optuna", "mysql-url", given("mysql://u@host/db"), SERVER.format(scheme="mysql")),
]


@pytest.mark.parametrize(
    ("kind", "setup", "expected"), [(k, s, e) for k, _, s, e in CASES], ids=[f"{k}-{case}" for k, case, _, _ in CASES]
)
def test_make_refuses_a_store_it_would_create_or_cannot_open_in_one_line_writing_nothing(
    kind: str, setup: Setup, expected: str, stores: dict[str, Path], tmp_path: Path
) -> None:
    target, variable = TARGETS[kind]
    url = setup(tmp_path, stores)
    before = snapshot(tmp_path)
    result = run_make(target, variable, url)
    assert result.returncode != 0, result.stderr
    # make adds its own "make: *** [...] Error 2" line ("make[1]: ***" under another make, as in `make test`);
    # everything else is the check's one line
    lines = [line for line in result.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)]
    assert len(lines) == 1, result.stderr
    expected = f"error: {variable}={url}: " + expected.format(tmp=tmp_path, head=head_revision())
    assert lines[0].startswith(expected), lines[0]
    assert snapshot(tmp_path) == before, f"make {target} wrote under {tmp_path}"
    assert "Traceback" not in result.stderr + result.stdout


def test_make_mlflow_ui_serves_an_existing_store(stores: dict[str, Path]) -> None:
    port = free_port()
    before = stores["mlflow"].read_bytes()
    command = ["make", "--no-print-directory", "-o", "install", "mlflow-ui", f"VENV={sys.prefix}",
               f"MLFLOW_STORE=sqlite:///{stores['mlflow']}", f"MLFLOW_PORT={port}"]  # fmt: skip
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # fmt: skip
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", server)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # make and the UI it started
        server.wait(timeout=30)
    assert stores["mlflow"].read_bytes() == before  # an up-to-date store is served as it is, not migrated
