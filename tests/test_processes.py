"""Children tied to their parent: a killed parent takes them along, even when a worker thread started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from sweep_helpers import alive, processes_naming

from lit_tuning.processes import tied_to_this_process

# A parent that starts a tied `sleep` from a worker thread (as confirm does), prints the child's pid, then waits.
PARENT = """
import subprocess, sys, threading
from lit_tuning.processes import tied_to_this_process
def start():
    child = subprocess.Popen(tied_to_this_process(["sleep", sys.argv[1]]))
    print(child.pid, flush=True)
    child.wait()
threading.Thread(target=start).start()
"""


def test_a_tied_child_started_from_a_thread_dies_with_its_killed_parent() -> None:
    marker = "987.25"  # a sleep length no other process uses, to find the child by its command line
    parent = subprocess.Popen([sys.executable, "-c", PARENT, marker], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 10
        while processes_naming(f"sleep\0{marker}") != [child] and time.monotonic() < deadline:  # launcher exec'd
            time.sleep(0.05)
        assert processes_naming(f"sleep\0{marker}") == [child]
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_a_tied_command_runs_as_itself_with_its_exit_status() -> None:
    result = subprocess.run(tied_to_this_process(["sh", "-c", "echo $0 $1; exit 3", "a", "b"]), capture_output=True)
    assert (result.returncode, result.stdout) == (3, b"a b\n")
