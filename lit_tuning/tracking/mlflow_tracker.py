"""A Lightning logger writing to MLflow in batches, with full params and a truthful final status."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

from lit_tuning.files import file_lock
from lit_tuning.paths import sqlite_file
from lit_tuning.tracking.outcome import ERROR_TAG, MLFLOW_STATUS, STATE_TAG, Outcome

TRUNCATED_SUFFIX = " …[truncated: full value in config.yaml]"
PARENT_RUN_TAG = "mlflow.parentRunId"
STUDY_PARENT_TAG = "lit_tuning.study_parent"


@contextlib.contextmanager
def store_setup_lock(tracking_uri: str) -> Iterator[None]:
    """Serialize the first use of a local SQLite store: two processes creating it at once race in its migration."""
    database = sqlite_file(tracking_uri) if "://" in tracking_uri else None  # a server URL or a local store
    if database is None:
        yield
        return
    with file_lock(database.with_name(database.name + ".lock")):
        yield


def experiment_id_of(client: MlflowClient, experiment: str, artifact_location: str | None = None) -> str:
    """Return the experiment's id, creating it if needed; a worker that loses the creation race uses the winner's."""
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(experiment, artifact_location=artifact_location)
    except MlflowException:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise
        return found.experiment_id


def prepare_study(tracking_uri: str, experiment: str, artifact_location: str | None, study: str) -> str:
    """Create the store, the experiment and the study's parent run before any worker starts; return the parent id.

    Two workers that create a fresh SQLite store at the same moment race in its schema migration.
    """
    client = MlflowClient(tracking_uri)
    with store_setup_lock(tracking_uri):
        experiment_id = experiment_id_of(client, experiment, artifact_location)
    return study_parent_run(client, experiment_id, study)


def study_parent_run(client: MlflowClient, experiment_id: str, study: str) -> str:
    """Return the id of the study's parent run, creating it once; concurrent workers settle on the oldest."""

    def parents() -> list:
        query = f"tags.`{STUDY_PARENT_TAG}` = '{study}'"
        return client.search_runs([experiment_id], query, order_by=["attributes.start_time ASC"], max_results=10)

    found = parents()
    if found:
        return found[0].info.run_id
    created = client.create_run(experiment_id, run_name=study, tags={STUDY_PARENT_TAG: study, "study": study})
    oldest = parents()[0].info.run_id
    if oldest != created.info.run_id:  # another worker created one first: keep a single parent
        client.delete_run(created.info.run_id)
    return oldest


class MLflowTracker(Logger):
    """Logs one MLflow run: metrics buffered and written in batches, params in full, status set from the outcome."""

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
        super().__init__()
        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        with store_setup_lock(tracking_uri):
            experiment_id = experiment_id_of(self.client, experiment, artifact_location)
        run_tags = dict(tags)
        if study is not None:  # a trial is a child run of its study's parent run
            run_tags[PARENT_RUN_TAG] = study_parent_run(self.client, experiment_id, study)
        self.run = self.client.create_run(experiment_id, run_name=run_name, tags=run_tags)
        self._buffer: list[Metric] = []
        self._flush_every = flush_every
        self.outcome: Outcome | None = None
        self._terminated = False

    @property
    def name(self) -> str:
        """The MLflow experiment id."""
        return self.run.info.experiment_id

    @property
    def version(self) -> str:
        """The MLflow run id."""
        return self.run.info.run_id

    @property
    @rank_zero_experiment
    def experiment(self) -> MlflowClient:
        """The MLflow client."""
        return self.client

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
            self.client.log_batch(self.version, params=params[start : start + MAX_PARAMS_TAGS_PER_BATCH])
        if shortened:
            self.client.set_tag(self.version, "lit_tuning.shortened_params", ",".join(shortened))
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
            self.client.log_batch(self.version, metrics=chunk)

    @rank_zero_only
    def log_artifacts(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file or a folder."""
        if path.is_dir():
            self.client.log_artifacts(self.version, str(path), artifact_path)
        elif path.is_file():
            self.client.log_artifact(self.version, str(path), artifact_path)

    @rank_zero_only
    def save(self) -> None:
        """Lightning's periodic save: write what is buffered."""
        self.flush()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Flush and close the run with the status of its outcome (Lightning's own `status` ignores pruning)."""
        if self._terminated:
            return
        self.flush()
        outcome = self.outcome or Outcome.from_lightning_status(status)
        tags = [RunTag(STATE_TAG, outcome.state)]
        if outcome.error:
            tags.append(RunTag(ERROR_TAG, outcome.error[:5000]))
        self.client.log_batch(self.version, tags=tags)
        self.client.set_terminated(self.version, MLFLOW_STATUS[outcome.state])
        self._terminated = True
