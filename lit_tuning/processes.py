"""Child processes that die with their parent, so that a killed command never leaves work running on its own."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent(parent: int | None = None) -> None:
    """Ask Linux to SIGKILL this process when its parent dies, so that no child of a killed process runs on.

    parent: the parent's pid (default: this process's parent as it is now).
    Linux sends the signal when the parent *thread* that started the child ends: start children from a thread that
    outlives them (one that waits for them).
    """
    if _prctl is None:
        return
    parent = os.getppid() if parent is None else parent
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def tied_to_this_process(command: list[str]) -> list[str]:
    """`command`, run so that it dies with this process: a small launcher asks for that, then becomes the command.

    The child asks for itself, after exec, because a subprocess's preexec_fn may deadlock in a process with threads
    (Python's subprocess docs); the request survives the launcher's exec of the command.
    """
    return [sys.executable, "-m", "lit_tuning.processes", str(os.getpid()), *command]


def main(argv: list[str]) -> None:
    """The launcher: `python -m lit_tuning.processes PARENT_PID COMMAND...`."""
    die_with_parent(int(argv[0]))
    os.execvp(argv[1], argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
