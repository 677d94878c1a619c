"""Reads a W&B run's `.wandb` transaction log back (offline runs included) with `wandb leet inspect --json`."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class WandbRunRecord:
    """What a W&B run file holds: identity, config, every history row, the final summary and the exit code."""

    run_id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = dataclasses.field(default_factory=list)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    exit_code: int | None = None  # None: the run never finished (still running, or killed)

    def last(self, metric: str) -> float | None:
        """Return the last logged value of a metric, if any."""
        values = [row[metric] for row in self.history if metric in row]
        return values[-1] if values else None


def find_wandb_run_file(wandb_dir: Path, run_id: str) -> Path | None:
    """Return the first `.wandb` file of a run id under <wandb_dir>/wandb (a resumed run adds later ones)."""
    found = sorted(wandb_dir.glob(f"wandb/*-{run_id}/run-{run_id}.wandb"))
    return found[0] if found else None


def wandb_run_files(wandb_dir: Path) -> dict[str, list[Path]]:
    """Return every run's `.wandb` files under <wandb_dir>/wandb, by run id, oldest first."""
    files: dict[str, list[Path]] = {}
    for path in sorted(wandb_dir.glob("wandb/*/run-*.wandb")):
        files.setdefault(path.stem.removeprefix("run-"), []).append(path)
    return files


def _wandb_command() -> list[str]:
    executable = Path(sys.executable).with_name("wandb")
    return [str(executable)] if executable.exists() else [shutil.which("wandb") or "wandb"]


def read_wandb_run(run_file: Path) -> WandbRunRecord:
    """Parse a `.wandb` file into a WandbRunRecord."""
    result = subprocess.run(
        [*_wandb_command(), "leet", "inspect", "--json", str(run_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    record = WandbRunRecord()
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            _apply(record, json.loads(line))
    return record


def _apply(record: WandbRunRecord, entry: dict[str, Any]) -> None:
    kind = entry.get("type")
    if kind == "run":
        run = entry["run"]
        record.run_id, record.name = run.get("run_id", ""), run.get("display_name", "")
        record.group, record.job_type = run.get("run_group", ""), run.get("job_type", "")
        record.tags = list(run.get("tags", []))
        record.config.update(_config_values(run.get("config", {})))
    elif kind == "config":
        record.config.update(_config_values(entry["config"]))
    elif kind == "history":
        record.history.append(entry["history"].get("item", {}))
    elif kind == "summary":
        record.summary.update(entry["summary"].get("update", {}))
    elif kind == "exit":
        record.exit_code = int(entry["exit"].get("exit_code", 0))


def _config_values(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.get("update", {}).items() if k != "_wandb"}
