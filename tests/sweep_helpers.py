"""Helpers for the sweep tests: micro-model search spaces in a temp folder and the sweep command as a subprocess."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
import yaml

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"

MICRO_BASE = {
    "configs": ["configs/base.yaml", "configs/hyperparameters/training/quick.yaml"],
    "overrides": {
        "model.model_name_or_path": "embedded:micro",
        "data.num_words": 300,
        "trainer.max_steps": 40,
        "trainer.val_check_interval": 10,
        "trainer.enable_progress_bar": False,
        "trainer.enable_model_summary": False,
    },
}


def write_space(folder: Path, name: str, overrides: dict[str, Any] | None = None, **fields: Any) -> Path:
    """Write a search space on the micro model (40 steps, validation every 10) with the given top-level fields.

    ``overrides`` join the base overrides; a grid/oat space (no ``n_trials``) passes ``n_trials=None``.
    """
    document = {
        "name": name,
        "strategy": "random",
        "n_trials": 4,
        "seed": 0,
        "objective": {"metric": "val/letter_position_accuracy"},
        "pruner": "none",
        "base": {**MICRO_BASE, "overrides": {**MICRO_BASE["overrides"], **(overrides or {})}},
        "parameters": {"model.learning_rate": {"low": 1.0e-4, "high": 3.0e-2, "log": True}},
        **fields,
    }
    document = {key: value for key, value in document.items() if value is not None}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def with_base_file(space: Path, base: Path) -> Path:
    """Point a space's first base config file at `base`, a copy of configs/base.yaml that a test may edit."""
    base.write_text((ROOT / "configs/base.yaml").read_text())
    document = yaml.safe_load(space.read_text())
    document["base"]["configs"][0] = str(base)
    space.write_text(yaml.safe_dump(document, sort_keys=False))
    return space


def sweep_command(space: Path, root: Path, storage: str, *extra: str) -> list[str]:
    """The `python -m lit_tuning.sweep` command of a test study writing under root."""
    return [
        sys.executable,
        "-m",
        "lit_tuning.sweep",
        f"--search-space={space}",
        f"--storage={storage}",
        f"--results-root={root}",
        *extra,
    ]


def run_sweep(
    space: Path, root: Path, storage: str, *extra: str, timeout: int = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a sweep to its end and return the completed process (output captured)."""
    return subprocess.run(
        sweep_command(space, root, storage, *extra),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )


def require_postgres(url: str = POSTGRES_URL) -> None:
    """Skip the calling test when no PostgreSQL answers at url, unless LIT_TUNING_REQUIRE_POSTGRES=1 (then fail):
    nothing in the test suite starts that server, and CI (.ci/run) says it is there."""
    try:
        with sqlalchemy.create_engine(url).connect():
            return
    except sqlalchemy.exc.OperationalError as error:
        message = f"no PostgreSQL at {url} ({str(error.orig).strip().splitlines()[0]})"
    if os.environ.get("LIT_TUNING_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{message}, and LIT_TUNING_REQUIRE_POSTGRES=1 says it must be there")
    pytest.skip(f"{message}; set LIT_TUNING_REQUIRE_POSTGRES=1 to make this a failure")


def states(study: optuna.Study) -> list[str]:
    """The state names of a study's trials, in trial order."""
    return [trial.state.name for trial in study.get_trials(deepcopy=False)]


def sqlite_url(root: Path) -> str:
    """An SQLite storage URL in a test folder."""
    return f"sqlite:///{root / 'optuna.db'}"


@dataclasses.dataclass
class PrivatePostgres:
    """A PostgreSQL server of this test alone (initdb in a temp folder, its own port): safe to restart."""

    data: Path
    port: int

    @property
    def url(self) -> str:
        """The storage URL of its `postgres` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, *args: str) -> None:
        """Run pg_ctl on this server as the postgres user (PostgreSQL refuses to run as root)."""
        options = f"-p {self.port} -k {self.data.parent} -c listen_addresses=127.0.0.1"
        command = ["pg_ctl", "-D", str(self.data), "-l", str(self.data.parent / "server.log"), "-o", options, *args]
        subprocess.run(_as_postgres(command), check=True, capture_output=True, timeout=120)

    def restart(self) -> None:
        """Restart the server now, dropping every connection (what a database failover does to the workers)."""
        self.pg_ctl("-m", "fast", "-w", "restart")


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """Start a private PostgreSQL (skip when its binaries are missing) and stop it after the block."""
    if not shutil.which("initdb") or not shutil.which("pg_ctl"):
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed (apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="lit_tuning-pg-"))  # not under pytest's root-only tmp: postgres reads it
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = PrivatePostgres(folder / "data", port)
    try:
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres")
        initdb = ["initdb", "-D", str(server.data), "-A", "trust", "-U", "postgres"]
        subprocess.run(_as_postgres(initdb), check=True, capture_output=True, timeout=120)
        server.pg_ctl("-w", "start")
        yield server
    finally:
        subprocess.run(_as_postgres(["pg_ctl", "-D", str(server.data), "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def processes_naming(*texts: str) -> list[int]:
    """The pids of the live processes whose command line (NUL-separated) contains every text (from /proc)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes()
        except OSError:  # the process ended meanwhile
            continue
        if all(text.encode() in args for text in texts) and int(cmdline.parent.name) != os.getpid():
            pids.append(int(cmdline.parent.name))
    return [pid for pid in pids if alive(pid)]


def parent_of(pid: int) -> int | None:
    """The parent pid of a live process (from /proc), or None once it has ended."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not yet reaped by whoever adopted it, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False
