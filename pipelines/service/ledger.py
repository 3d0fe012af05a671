"""What the MLflow store already holds for a window: how the service registers each window
exactly once, even across crashes.

Every run and version the service makes is tagged with its window's id (`window`) and content
digest (WINDOW_DIGEST_TAG, the manifest's). A window is one of three states:
a registered version (only its verdict still has to reach the aliases), a finished run without a
version (register from that run), or neither (train). Runs left RUNNING by a crash are marked
failed and trained again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities import RunStatus
from mlflow.entities.model_registry import ModelVersion

from pipelines.ingest.window_files import Manifest
from pipelines.service.gate import ACCEPTED, VERDICT_TAG

log = logging.getLogger(__name__)

WINDOW_TAG = "window"
WINDOW_DIGEST_TAG = "window_digest"


@dataclass(frozen=True)
class WindowState:
    version: ModelVersion | None
    finished_run_id: str | None


def window_tags(manifest: Manifest) -> dict[str, str]:
    """The tags that identify a window's run and version."""
    return {WINDOW_TAG: str(manifest.window), WINDOW_DIGEST_TAG: manifest.digest}


def _match(manifest: Manifest) -> str:
    return " AND ".join(f"tags.{k} = '{v}'" for k, v in window_tags(manifest).items())


def registered_version(client: MlflowClient, name: str, manifest: Manifest) -> ModelVersion | None:
    """The version the window was registered as, if it was."""
    versions = client.search_model_versions(f"name = '{name}' AND {_match(manifest)}")
    return min(versions, key=lambda v: int(v.version)) if versions else None


def lookup(client: MlflowClient, name: str, experiment_id: str, manifest: Manifest) -> WindowState:
    """The window's version, else its finished run; marks its crashed (RUNNING) runs failed."""
    version = registered_version(client, name, manifest)
    if version is not None:
        return WindowState(version, None)
    match = _match(manifest)
    runs = client.search_runs([experiment_id], match, order_by=["attributes.start_time ASC"])
    finished = None
    for run in runs:
        status = run.info.status
        if status == RunStatus.to_string(RunStatus.FINISHED):
            finished = finished or run.info.run_id
        elif status == RunStatus.to_string(RunStatus.RUNNING):
            log.info(
                "window %d: run %s was cut short; marked failed", manifest.window, run.info.run_id
            )
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
    return WindowState(None, finished)


def accepted_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    """The versions that passed the gate, in registration order."""
    versions = client.search_model_versions(
        f"name = '{name}' AND tags.{VERDICT_TAG} = '{ACCEPTED}'"
    )
    return sorted(versions, key=lambda v: int(v.version))
