"""Checks that every run is in MLflow and in W&B, closed, and with the same final metric as its own metrics.csv."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException

from lit_tuning.tracking.outcome import STATE_TAG
from lit_tuning.tracking.settings import TRACKING_RECORD
from lit_tuning.tracking.store import open_client
from lit_tuning.tracking.wandb_reader import read_wandb_run


@dataclasses.dataclass
class RunCheck:
    """One run's final metric as each place records it, and what disagrees."""

    run_dir: Path
    name: str
    local: float | None = None
    mlflow_status: str = "-"
    mlflow: float | None = None
    wandb_state: str = "-"
    wandb: float | None = None
    problems: list[str] = dataclasses.field(default_factory=list)


def find_runs(runs_root: Path, study: str | None = None) -> list[Path]:
    """Return the run directories under runs_root that recorded tracking, optionally those of one study."""
    runs = []
    for record_path in sorted(runs_root.rglob(TRACKING_RECORD)):
        record = json.loads(record_path.read_text())
        if study is None or record.get("study") == study:
            runs.append(record_path.parent)
    return runs


def check_run(run_dir: Path, metric: str | None = None) -> RunCheck:
    """Compare a run's metrics.csv with its MLflow run and its W&B run file (metric: default, the run's own)."""
    record = json.loads((run_dir / TRACKING_RECORD).read_text())
    metric = metric or record.get("metric", "")  # a record the sweep wrote for a killed run has none
    check = RunCheck(run_dir=run_dir, name=record.get("run_name", run_dir.name))
    csv_path = run_dir / "metrics.csv"
    if csv_path.is_file():
        column = pd.read_csv(csv_path).get(metric)
        values = column.dropna() if column is not None else []
        check.local = float(values.iloc[-1]) if len(values) else None
    if record.get("closed_after_kill"):
        # The process died mid-run: the trackers hold what was flushed before the kill, metrics.csv may hold more.
        check.local = None
    mlflow_state = _check_mlflow(record.get("mlflow"), metric, check)
    wandb_state = _check_wandb(record.get("wandb"), metric, check)
    if mlflow_state and wandb_state and mlflow_state != wandb_state:
        check.problems.append(f"state differs: MLflow {mlflow_state}, W&B {wandb_state}")
    return check


def _check_mlflow(entry: dict | None, metric: str, check: RunCheck) -> str | None:
    if entry is None:
        return None
    try:
        run = open_client(entry["tracking_uri"]).get_run(entry["run_id"])
    except MlflowException:
        check.problems.append(f"MLflow run {entry['run_id']} is missing")
        return None
    check.mlflow_status = run.info.status
    if run.info.lifecycle_stage == "deleted":
        check.problems.append(f"MLflow run {entry['run_id']} is deleted")
    if run.info.status == "RUNNING":
        check.problems.append("MLflow run left RUNNING")
    check.mlflow = run.data.metrics.get(metric)
    _compare("MLflow", check.mlflow, check)
    return run.data.tags.get(STATE_TAG)


def _check_wandb(entry: dict | None, metric: str, check: RunCheck) -> str | None:
    if entry is None:
        return None
    run_file = Path(entry.get("run_file") or "")
    closing_file = Path(entry.get("closing_run_file") or "")
    if not run_file.is_file() and closing_file.is_file():  # killed before W&B wrote anything; closed by the sweep
        run_file = closing_file
    if not run_file.is_file():
        check.problems.append(f"W&B run file {entry.get('run_file') or '(none recorded)'} is missing")
        return None
    record = read_wandb_run(run_file)
    if record.exit_code is None and closing_file.is_file():  # killed, then closed by the sweep in a resumed run
        closing = read_wandb_run(closing_file)
        record.exit_code, record.summary = closing.exit_code, {**record.summary, **closing.summary}
    state = record.summary.get(STATE_TAG)
    check.wandb_state = state or ("running" if record.exit_code is None else f"exit {record.exit_code}")
    if record.exit_code is None:
        check.problems.append("W&B run never finished")
    check.wandb = record.last(metric)
    _compare("W&B", check.wandb, check)
    return state


def _compare(tracker: str, value: float | None, check: RunCheck) -> None:
    if check.local is None:
        return
    if value is None:
        check.problems.append(f"{tracker} has no final metric")
    elif not math.isclose(value, check.local, rel_tol=1e-6, abs_tol=1e-7):
        check.problems.append(f"{tracker} final metric {value:.6f} != metrics.csv {check.local:.6f}")


def format_table(checks: list[RunCheck]) -> str:
    """Render the checks as a text table, one run a line."""

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    header = f"{'run':<32} {'csv':>8} {'mlflow':>8} {'status':<9} {'wandb':>8} {'state':<11} problems"
    lines = [header, "-" * len(header)]
    for c in checks:
        lines.append(
            f"{c.name:<32} {number(c.local):>8} {number(c.mlflow):>8} {c.mlflow_status:<9} {number(c.wandb):>8} "
            f"{c.wandb_state:<11} {'; '.join(c.problems) or 'ok'}"
        )
    return "\n".join(lines)
