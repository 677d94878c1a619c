"""`make dashboard`: optuna-dashboard serves the study storage on 127.0.0.1, checked in a real headless browser."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import requests
from conftest import ROOT
from web_helpers import chromium, free_port, rendered_dom, screenshot, wait_until_up


@pytest.fixture
def study_storage(tmp_path: Path) -> str:
    """A SQLite storage holding a small finished study with the sweep's kind of trials."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="dash-study", storage=storage, direction="maximize")
    for number, (lr, value) in enumerate([(1e-3, 0.41), (3e-3, 0.47), (1e-2, 0.38)]):
        trial = study.ask({"model.learning_rate": optuna.distributions.FloatDistribution(1e-4, 3e-2, log=True)})
        assert trial.params["model.learning_rate"] > 0 and trial.number == number
        trial.report(value / 2, step=10)
        trial.set_user_attr("steps", 20)
        study.tell(trial, value)
    return storage


def test_make_dashboard_lists_the_trials_of_a_study(study_storage, tmp_path):
    chromium()  # before the server starts: skips (or fails, in CI) without a browser
    port = free_port()
    # The target as users run it, with this interpreter's environment (-o install: never reinstall it from a test)
    command = ["make", "--no-print-directory", "-o", "install", "dashboard", f"VENV={sys.prefix}",
               f"STORAGE={study_storage}", f"DASHBOARD_PORT={port}"]  # fmt: skip
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/api/meta", server)
        studies = requests.get(f"{url}/api/studies", timeout=30).json()["study_summaries"]
        (study,) = [s for s in studies if s["study_name"] == "dash-study"]
        home = rendered_dom(f"{url}/dashboard", tmp_path / "home")
        assert "dash-study" in home
        page = f"{url}/dashboard/studies/{study['study_id']}/trials"
        dom = rendered_dom(page, tmp_path / "dom")
        for number in range(3):
            assert f"Trial {number}" in dom, f"trial {number} is not listed by the dashboard"
        assert "model.learning_rate" in dom
        assert screenshot(page, "optuna_dashboard_trials.png", tmp_path / "shot").stat().st_size > 10_000
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # make and the dashboard it started
        server.wait(timeout=30)
