"""The registry contract (docs/architecture.md) in one place, for the training job and the server.

Registered model `customer-segmentation`; each window's model is a new version; alias
`model<i>` points at the version trained on the i-th window of the latest training. Nothing here
deletes: a re-run adds versions and moves aliases, so older versions stay loadable by number.
"""

from __future__ import annotations

from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

from pipelines.contract import spoken_list

MODEL_DESCRIPTION = (
    "Customer segmentation: a Spark ML PipelineModel (signed log1p SQLTransformer -> "
    f"VectorAssembler -> StandardScaler -> KMeans) over {spoken_list()} per customer. "
    "Aliases `model1`, `model2` and `model3` are the versions trained on the first, second and "
    "third window of the latest training; under continuous training (`pipelines.stream`), the "
    "three newest versions that passed its quality gate, `model3` the newest."
)

# The registered version's tag holding its segments as JSON (segments.segment_records): a list of
# {"id", "name", "customers", "share", "revenue_share", "median": {feature: value}}.
SEGMENTS_TAG = "segments"


def alias_for(position: int) -> str:
    """The alias of the `position`-th window (from 1) of a training."""
    return f"model{position}"


def model_uri(name: str, alias: str) -> str:
    """The URI that resolves an alias at load time, e.g. models:/customer-segmentation@model1."""
    return f"models:/{name}@{alias}"


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    """Create the registered model with its description on first use; keep it as is afterwards."""
    try:
        client.create_registered_model(name, description=MODEL_DESCRIPTION)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise


def register_version(
    client: MlflowClient,
    name: str,
    run_id: str,
    artifact_path: str,
    description: str,
    tags: dict[str, Any],
) -> ModelVersion:
    """Add a version for the model a run logged, described so the registry UI says what it is."""
    ensure_registered_model(client, name)
    source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
    return client.create_model_version(
        name, source, run_id=run_id, tags=tags, description=description
    )
