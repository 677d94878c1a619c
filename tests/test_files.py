"""Atomic writes: a reader never sees a half-written file, and a writer killed mid-write leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lit_tuning.files import atomic_write

# Writes forever, so that the parent can kill it while its temporary file exists.
WRITER = """
import sys, time
from pathlib import Path
import lit_tuning.files as files
files.os.replace = lambda *args: time.sleep(60)  # hold the temporary: the kill comes before the rename
files.atomic_write(Path(sys.argv[1]), "new\\n")
"""


def test_atomic_write_replaces_whole_and_keeps_shared_permissions(tmp_path: Path) -> None:
    target = tmp_path / "table.csv"
    atomic_write(target, "old\n")
    atomic_write(target, "new\n")
    assert target.read_text() == "new\n"
    assert target.stat().st_mode & 0o044  # readable by group/others under the usual umask, not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_a_writer_killed_mid_write_leaves_the_old_file_and_its_temporary_is_removed_later(tmp_path: Path) -> None:
    target = tmp_path / "best.yaml"
    atomic_write(target, "old\n")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target)])
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".best.yaml.*.tmp")):
        assert time.monotonic() < deadline and writer.poll() is None, "the writer never created its temporary"
        time.sleep(0.05)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert target.read_text() == "old\n"  # the kill never exposes a half-written file
    assert len(list(tmp_path.glob(".best.yaml.*.tmp"))) == 1  # the killed writer's leftover
    atomic_write(target, "newer\n")
    assert target.read_text() == "newer\n"
    assert [p.name for p in tmp_path.iterdir()] == ["best.yaml"]  # the dead writer's temporary is gone
