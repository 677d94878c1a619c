"""A study in MLflow: one parent run, its trials as child runs tagged study + trial, found and closed by tag."""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.entities import Run, RunTag
from mlflow.exceptions import MlflowException

from lit_tuning.tracking.outcome import ERROR_TAG, STATE_TAG
from lit_tuning.tracking.store import open_client

PARENT_RUN_TAG = "mlflow.parentRunId"
STUDY_PARENT_TAG = "lit_tuning.study_parent"
STUDY_TAG = "study"  # every run of a study carries it from creation, so a run is findable even if its id was lost
TRIAL_TAG = "trial"


def tag_filter(key: str, value: str) -> str:
    """Return an MLflow search clause matching runs whose tag `key` equals `value` (quoted as MLflow parses it)."""
    quote = '"' if "'" in value else "'"
    if quote in value:
        raise ValueError(f"{value!r} holds both quote characters; MLflow's search cannot match it")
    return f"tags.`{key}` = {quote}{value}{quote}"


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
    """Create the store, the experiment and the study's parent run before any worker starts; return the parent id."""
    client = open_client(tracking_uri)
    return study_parent_run(client, experiment_id_of(client, experiment, artifact_location), study)


def study_parent_run(client: MlflowClient, experiment_id: str, study: str) -> str:
    """Return the id of the study's parent run, creating it once; concurrent workers settle on the oldest."""

    def parents() -> list[Run]:
        query = tag_filter(STUDY_PARENT_TAG, study)
        return client.search_runs([experiment_id], query, order_by=["attributes.start_time ASC"], max_results=10)

    found = parents()
    if found:
        return found[0].info.run_id
    created = client.create_run(experiment_id, run_name=study, tags={STUDY_PARENT_TAG: study, STUDY_TAG: study})
    oldest = parents()[0].info.run_id
    if oldest != created.info.run_id:  # another worker created one first: keep a single parent
        client.delete_run(created.info.run_id)
    return oldest


def study_trial_runs(client: MlflowClient, experiment: str, study: str) -> list[Run]:
    """Return every trial run of a study in the experiment (all pages; the parent run excluded)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs([found.experiment_id], tag_filter(STUDY_TAG, study), page_token=token)
        runs += [run for run in page if STUDY_PARENT_TAG not in run.data.tags]
        token = page.token
        if not token:
            return runs


def fail_run(client: MlflowClient, run_id: str, reason: str) -> None:
    """Close a run left RUNNING by a killed process as FAILED, with the reason as its error tag."""
    client.log_batch(run_id, tags=[RunTag(STATE_TAG, "failed"), RunTag(ERROR_TAG, reason[:5000])])
    client.set_terminated(run_id, "FAILED")
