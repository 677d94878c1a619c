"""Helpers for the web UI tests: a real MLflow server, headless Chromium's rendered DOM and screenshots."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"  # screenshots kept for a person to look at (git-ignored)
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=20000", "--window-size=1400,900",
]  # fmt: skip


def chromium() -> str:
    """The Chromium executable. Without one the calling test skips, saying how to install it, unless
    LIT_TUNING_REQUIRE_CHROMIUM=1 (set by .ci/run, which installs it) makes that a failure."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    message = "needs headless Chromium: apt-get install chromium"
    if os.environ.get("LIT_TUNING_REQUIRE_CHROMIUM") == "1":
        pytest.fail(f"{message}, and LIT_TUNING_REQUIRE_CHROMIUM=1 says it must be there")
    pytest.skip(f"{message}; set LIT_TUNING_REQUIRE_CHROMIUM=1 to make this a failure")


def rendered_dom(url: str, profile: Path) -> str:
    """Return the DOM of url after its scripts ran (up to 20 s of virtual time)."""
    command = [chromium(), *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120).stdout


def screenshot(url: str, name: str, profile: Path) -> Path:
    """Save a screenshot of url to tests/artifacts/<name> and return its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    command = [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--screenshot={path}", url]
    subprocess.run(command, capture_output=True, timeout=120, check=True)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, timeout_s: float = 180) -> None:
    """Wait until url answers 200; fail if the server exits first or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the server of {url} exited during start-up"
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout_s:.0f} s")


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, artifacts: Path) -> Iterator[str]:
    """Run `mlflow server` on 127.0.0.1 over a store (artifacts proxied into a folder); yield its URL, then stop it."""
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--backend-store-uri", backend_store_uri, "--artifacts-destination", str(artifacts),
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/health", server)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
