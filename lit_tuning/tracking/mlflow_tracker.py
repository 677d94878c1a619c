"""Lightning's MLflow logger with batched metrics, the full config as params and a truthful final status."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

from lit_tuning.tracking.mlflow_study import (
    PARENT_RUN_TAG,
    STUDY_PARENT_TAG,
    experiment_id_of,
    study_parent_run,
)
from lit_tuning.tracking.outcome import ERROR_TAG, MLFLOW_STATUS, STATE_TAG, Outcome
from lit_tuning.tracking.store import ensure_store

__all__ = ["MLflowTracker", "STUDY_PARENT_TAG", "TRUNCATED_SUFFIX"]
TRUNCATED_SUFFIX = " …[truncated: full value in config.yaml]"


class MLflowTracker(MLFlowLogger):
    """One MLflow run, created at once; a trial's run is a child of its study's parent run.

    Differs from MLFlowLogger in: metrics are buffered and written in batches (the base writes one request per
    step), the whole resolved config is logged untruncated where MLflow allows (the base cuts at 250 characters
    and logs Lightning's subset), the experiment is created race-free in a store built whole, and `finalize`
    records pruned and interrupted runs as KILLED with their state (the base calls every exception FAILED).
    """

    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        tags: Mapping[str, str],
        artifact_location: str | None = None,
        study: str | None = None,
        flush_every: int = 200,
    ) -> None:
        ensure_store(tracking_uri)
        super().__init__(
            experiment_name=experiment,
            run_name=run_name,
            tracking_uri=tracking_uri,
            tags=dict(tags),
            artifact_location=artifact_location,
        )
        client = self._mlflow_client
        self._experiment_id = experiment_id_of(client, experiment, artifact_location)  # workers may race here
        if study is not None:  # a trial is a child run of its study's parent run
            self.tags[PARENT_RUN_TAG] = study_parent_run(client, self._experiment_id, study)
        _ = self.experiment  # create the run now, tagged, so its id exists before the first step
        self._buffer: list[Metric] = []
        self._flush_every = flush_every
        self.outcome: Outcome | None = None
        self._terminated = False

    @property
    def tracking_uri(self) -> str:
        """The MLflow store or server URL."""
        return self._tracking_uri

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Lightning's own hparams are ignored: the CLI logs the whole resolved config with `log_config`."""

    @rank_zero_only
    def log_config(self, flat_config: Mapping[str, Any]) -> list[str]:
        """Log every config value as a param; return the keys whose values were too long and were shortened."""
        params, shortened = [], []
        for key, value in flat_config.items():
            text = str(value)
            if len(text) > MAX_PARAM_VAL_LENGTH:
                text = text[: MAX_PARAM_VAL_LENGTH - len(TRUNCATED_SUFFIX)] + TRUNCATED_SUFFIX
                shortened.append(key)
            params.append(Param(key, text))
        for start in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            self.experiment.log_batch(self.run_id, params=params[start : start + MAX_PARAMS_TAGS_PER_BATCH])
        if shortened:
            self.experiment.set_tag(self.run_id, "lit_tuning.shortened_params", ",".join(shortened))
        return shortened

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Buffer metrics; they are written in batches, so a training step never waits for the store."""
        timestamp = int(time.time() * 1000)
        self._buffer.extend(
            Metric(key, float(value), timestamp, step or 0) for key, value in metrics.items() if key != "epoch"
        )
        if len(self._buffer) >= self._flush_every:
            self.flush()

    @rank_zero_only
    def flush(self) -> None:
        """Write the buffered metrics."""
        while self._buffer:
            chunk, self._buffer = self._buffer[:MAX_METRICS_PER_BATCH], self._buffer[MAX_METRICS_PER_BATCH:]
            self.experiment.log_batch(self.run_id, metrics=chunk)

    @rank_zero_only
    def log_artifacts(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file or a folder."""
        if path.is_dir():
            self.experiment.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.is_file():
            self.experiment.log_artifact(self.run_id, str(path), artifact_path)

    @rank_zero_only
    def save(self) -> None:
        """Lightning's periodic save: write what is buffered."""
        self.flush()

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """Flush and close the run with the status of its outcome (Lightning's own `status` ignores pruning)."""
        if self._terminated or not self._initialized:
            return
        self.flush()
        outcome = self.outcome or Outcome.from_lightning_status(status)
        tags = [RunTag(STATE_TAG, outcome.state)]
        if outcome.error:
            tags.append(RunTag(ERROR_TAG, outcome.error[:5000]))
        self.experiment.log_batch(self.run_id, tags=tags)
        self.experiment.set_terminated(self.run_id, MLFLOW_STATUS[outcome.state])
        self._terminated = True
