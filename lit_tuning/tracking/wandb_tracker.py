"""A Lightning W&B logger that never rewrites WANDB_MODE, finishes its run, and records how the run ended."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import wandb
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from lit_tuning.tracking.outcome import ERROR_TAG, STATE_TAG, WANDB_EXIT_CODE, Outcome
from lit_tuning.tracking.settings import WandbMode

MAX_TAG_LENGTH = 64  # W&B refuses longer tags


class WandbTracker(WandbLogger):
    """One W&B run per Lightning run, in the study's group; `finalize` always calls `finish()`."""

    def __init__(
        self,
        *,
        mode: WandbMode,
        project: str,
        entity: str | None,
        save_dir: Path,
        run_name: str,
        run_id: str | None = None,
        group: str | None,
        job_type: str,
        tags: Mapping[str, str],
        config: Mapping[str, Any],
    ) -> None:
        save_dir.mkdir(parents=True, exist_ok=True)
        if wandb.run is not None:  # a previous run in this process was left open: close it, never merge into it
            wandb.finish()
        # The mode goes to wandb.init directly; Lightning's offline=True would set WANDB_MODE for the whole process.
        super().__init__(
            name=run_name,
            id=run_id,
            save_dir=str(save_dir),
            project=project,
            entity=entity,
            group=group,
            job_type=job_type,
            tags=[f"{k}={v}"[:MAX_TAG_LENGTH] for k, v in tags.items()],
            config={**config, "lit_tuning_tags": dict(tags)},
            mode=mode,
            offline=False,
        )
        self.outcome: Outcome | None = None
        self._finished = False
        _ = self.experiment  # start the run now, so its id and files exist from the first step

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The full resolved config is the run's config from the start; Lightning's subset is not logged again."""

    @rank_zero_only
    def log_artifact_dir(self, path: Path, name: str, max_mb: float) -> bool:
        """Log a folder as a model artifact unless it is larger than max_mb; return whether it was logged."""
        size_mb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
        if size_mb > max_mb:
            self.experiment.summary["lit_tuning.adapter_skipped"] = f"{size_mb:.1f} MB > {max_mb} MB"
            return False
        artifact = wandb.Artifact(re.sub(r"[^A-Za-z0-9._-]", "-", name), type="model")
        artifact.add_dir(str(path))
        self.experiment.log_artifact(artifact)
        return True

    def run_file(self) -> Path | None:
        """Return the run's `.wandb` transaction log, if the run writes one (offline or online)."""
        run_dir = Path(self.experiment.dir).parent
        found = sorted(run_dir.glob("run-*.wandb"))
        return found[0] if found else None

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Record the outcome in the summary and finish the run (Lightning alone leaves it open)."""
        if self._finished or self._experiment is None:
            return
        outcome = self.outcome or Outcome.from_lightning_status(status)
        summary = self.experiment.summary
        summary[STATE_TAG] = outcome.state
        if outcome.error:
            summary[ERROR_TAG] = outcome.error[:5000]
        self.experiment.finish(exit_code=WANDB_EXIT_CODE[outcome.state])
        self._finished = True
