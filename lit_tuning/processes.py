"""Child processes that die with their parent, so that a killed command never leaves work running on its own."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Looked up once, here: a child between fork and exec (a preexec_fn) must not load a library.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent(parent: int | None = None) -> None:
    """Ask Linux to SIGKILL this process when its parent dies, so that no child of a killed process runs on.

    parent: the parent's pid, given when this runs as a subprocess's preexec_fn (default: this process's parent).
    Linux sends the signal when the parent *thread* that started the child ends: start children from a thread that
    outlives them (one that waits for them).
    """
    if _prctl is None:
        return
    parent = os.getppid() if parent is None else parent
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
