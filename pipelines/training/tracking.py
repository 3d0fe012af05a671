"""Log a fitted window as an MLflow run and register its model as a new version.

Everything a person comparing models in the MLflow UI needs is logged here: params (the recipe's
choices and the data's provenance), the windows it was trained on as dataset inputs (Kafka topic
and offsets, window digest), metrics per candidate k, the segments and cluster reports, and the
whole Spark pipeline model with its signature (saved by Spark to a local directory, then
uploaded: Spark never writes to the artifact store itself, see `Recorder._log_model`). From the
second window of a training on, the run also carries the drift against the window before
(pipelines/training/drift.py): metrics, the segment map and a chart of the drift so far. The
registered version carries its segments (tag `segments`, names in the description), which is
what the server's `GET /models` shows.
"""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from importlib.metadata import version as installed_version
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, Schema
from mlflow.utils.time import get_current_time_millis

from pipelines.config import PROJECT_ROOT, Settings
from pipelines.contract import CONTRACT
from pipelines.ingest.window_files import Manifest, combine_digests
from pipelines.training import registry
from pipelines.training.datasets import WindowDataset
from pipelines.training.drift import plot_history
from pipelines.training.features import CLEANING_RULES
from pipelines.training.fitting import PreviousWindow, Spec, WindowFit
from pipelines.training.recipe import PREDICTION_COL
from pipelines.training.report import (
    comparison_table,
    plot_comparison,
    plot_profile,
    write_centers,
)
from pipelines.training.segments import describe_segments, segment_names_line, segments_json
from pipelines.training.silhouette import SILHOUETTE_DISTANCE

log = logging.getLogger(__name__)

MODEL_ARTIFACT_PATH = "model"
SEGMENTS_TABLE = "segments.json"  # mlflow.log_table: the run's Evaluation / Artifacts view
SEGMENT_NAMES_TAG = "segment_names"  # on the run and the version: "0 occasional; 1 wholesale; ..."
DRIFT_AGAINST_TAG = "drift_against"  # "window-2", or "none: ..." on a training's first window
SEGMENT_MAP = "segment_map.json"  # drift.Drift.segment_map_json
DRIFT_CHART = "drift.png"  # drift.plot_history
CLUSTER_SIZE_METRIC = "cluster_size_"  # + cluster id: customers in that cluster
REGISTRATION_ARTIFACT = "registration.json"  # the run's Registration (description, tags)

# MLflow's experiment-kind tag and its value for classic model training (MLflow 3.17 spells them
# so in its UI and in mlflow/demo; the other kind is "genai_development").
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"

# Explicit, so no run pays MLflow's requirement inference (a subprocess, ~17 s per model).
PIP_PACKAGES = ("mlflow", "pyspark", "pandas", "numpy", "pyarrow")

# The inputs are the feature contract's, typed as training produces them.
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(f.spark_type, f.name) for f in CONTRACT]),
    outputs=Schema([ColSpec("integer", PREDICTION_COL)]),
)


@dataclass(frozen=True)
class TrainedWindow:
    """What one window's training left in MLflow."""

    window: int
    run_id: str
    version: int
    alias: str
    k: int
    silhouette: float


@dataclass(frozen=True)
class Registration:
    """What a run's model is registered with. The run keeps it as REGISTRATION_ARTIFACT, so a
    version can be registered from a finished run alone (the stream service, after a crash)."""

    window: int
    description: str
    tags: dict[str, str]
    k: int
    silhouette: float

    @classmethod
    def of_run(cls, client: MlflowClient, run_id: str) -> Registration:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run_id, REGISTRATION_ARTIFACT, tmp)
            return cls(**json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class Recorder:
    """Logs a fitted window as an MLflow run and registers its model."""

    client: MlflowClient
    settings: Settings
    experiment_id: str
    parent_run_id: str | None
    windows_dir: Path
    manifests: dict[int, Manifest]
    spec: Spec

    def record(self, fit: WindowFit, previous: PreviousWindow | None) -> TrainedWindow:
        """Log `fit` as run window-<i> and register its model; `previous` is what `fit_window`
        was given (None for a training's first window)."""
        run_id, registration = self.log_run(fit, previous)
        version = self.register(run_id, registration)
        return TrainedWindow(
            window=fit.window,
            run_id=run_id,
            version=int(version.version),
            alias=self.spec.alias(fit.window),
            k=registration.k,
            silhouette=registration.silhouette,
        )

    def log_run(
        self, fit: WindowFit, previous: PreviousWindow | None, tags: dict[str, str] | None = None
    ) -> tuple[str, Registration]:
        """Log the run `window-<i>`; `tags` go on the run and on the version registered from it."""
        tags = tags or {}
        with mlflow.start_run(
            experiment_id=self.experiment_id,
            run_name=f"window-{fit.window}",
            parent_run_id=self.parent_run_id,
        ) as run:
            run_id = run.info.run_id
            self.client.log_batch(
                run_id,
                metrics=_metrics(fit),
                params=[Param(key, str(value)) for key, value in self._params(fit).items()],
                tags=[
                    *(RunTag(key, value) for key, value in self._tags(fit.window).items()),
                    RunTag(SEGMENT_NAMES_TAG, segment_names_line(fit.segments)),
                    RunTag(DRIFT_AGAINST_TAG, _against(fit.window, previous)),
                    *(RunTag(key, value) for key, value in tags.items()),
                ],
            )
            mlflow.log_inputs(  # one batch: the windows this model was trained on
                [WindowDataset(self.manifests[i]) for i in fit.ids],
                contexts=["training"] * len(fit.ids),
                tags_list=[None] * len(fit.ids),
            )
            with tempfile.TemporaryDirectory() as tmp:
                fit.segments.to_csv(Path(tmp, "segments.csv"), index=False)
                self._log_reports(run_id, Path(tmp), fit, previous)
            self.client.log_table(run_id, fit.segments, SEGMENTS_TABLE)
            self._log_model(run_id, fit)
            registration = self._registration(fit, run_id, tags)
            mlflow.log_dict(asdict(registration), REGISTRATION_ARTIFACT)
        return run_id, registration

    def _log_model(self, run_id: str, fit: WindowFit) -> None:
        """The Spark pipeline as the run's artifact `model`, written by Spark to a local
        directory only.

        `mlflow.spark.log_model` first has Spark save the model straight to the run's artifact
        URI; against a tracking server that is `mlflow-artifacts:/...`, a scheme Hadoop does not
        know, so Spark logs `No FileSystem for scheme "mlflow-artifacts"` with a stack trace
        before MLflow falls back to saving locally and uploading. This is that fallback without
        the attempt, for every store alike: save locally, upload through the client (the
        server's artifact proxy, or a local copy), record the model on the run (its tag
        `mlflow.log-model.history`, which the UI's Models column reads).
        """
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp, MODEL_ARTIFACT_PATH)
            model = Model(artifact_path=MODEL_ARTIFACT_PATH, run_id=run_id)
            mlflow.spark.save_model(
                fit.chosen.model,
                str(local),
                mlflow_model=model,
                signature=SIGNATURE,
                input_example=fit.example,
                pip_requirements=[f"{p}=={installed_version(p)}" for p in PIP_PACKAGES],
            )
            self.client.log_artifacts(run_id, str(local), MODEL_ARTIFACT_PATH)
        # What mlflow.spark.log_model's own fallback calls; MlflowClient has no public twin.
        self.client._record_logged_model(run_id, model)

    def register(self, run_id: str, registration: Registration) -> ModelVersion:
        """A new version of the registered model, from the model the run logged."""
        version = registry.register_version(
            self.client,
            self.settings.model_name,
            run_id,
            MODEL_ARTIFACT_PATH,
            registration.description,
            tags=registration.tags,
        )
        log.info(
            "window %d: k=%d silhouette=%.4f -> %s version %s",
            registration.window,
            registration.k,
            registration.silhouette,
            self.settings.model_name,
            version.version,
        )
        return version

    def _registration(self, fit: WindowFit, run_id: str, tags: dict[str, str]) -> Registration:
        chosen = fit.chosen
        description = (
            f"Window {fit.window} ({self.spec.mode}, trained on windows {_ids(fit.ids)}): "
            f"k={chosen.k}, silhouette={chosen.silhouette:.4f}, {fit.cleaned.rows_kept} rows, "
            f"{fit.customers} customers. Run {run_id}. Segments: {describe_segments(fit.segments)}."
        )
        version_tags = {
            "window": str(fit.window),
            "mode": self.spec.mode,
            "k": str(chosen.k),
            SEGMENT_NAMES_TAG: segment_names_line(fit.segments),
            registry.SEGMENTS_TAG: segments_json(fit.segments),
            **tags,
        }
        return Registration(fit.window, description, version_tags, chosen.k, chosen.silhouette)

    def _params(self, fit: WindowFit) -> dict[str, object]:
        spec, cleaned = self.spec, fit.cleaned
        low, high = (spec.k, spec.k) if spec.k else spec.k_range
        params: dict[str, object] = {
            "k": fit.chosen.k,
            "k_range": f"{low}..{high}",
            # fixed | silhouette | fallback-largest-smallest-cluster (no k met the share rule)
            "k_selection": fit.selection.rule,
            "min_cluster_share": spec.min_cluster_share,
            "transform": spec.transform,
            "seed": spec.seed,
            "max_iter": spec.max_iter,
            "distance_measure": spec.distance_measure,
            "silhouette_distance": SILHOUETTE_DISTANCE[spec.distance_measure],
            "mode": spec.mode,
            "windows": _ids(fit.ids),
            "rows_read": cleaned.rows_read,
            "rows": cleaned.rows_kept,
            "customers": fit.customers,
            **{f"dropped_{rule}": cleaned.dropped[rule] for rule in CLEANING_RULES},
            "first_invoice_date": cleaned.first_invoice_date,
            "last_invoice_date": cleaned.last_invoice_date,
            "kafka_topic": ",".join(sorted({self.manifests[i].topic for i in fit.ids})),
            "digest": combine_digests([self.manifests[i].digest for i in fit.ids]),
        }
        for i in fit.ids:
            manifest = self.manifests[i]
            offsets = ",".join(f"{p}:{s}-{e}" for p, (s, e) in sorted(manifest.offsets.items()))
            params[f"window_{i}_offsets"] = offsets
            params[f"window_{i}_digest"] = manifest.digest
            params[f"window_{i}_rows"] = manifest.rows
        return params

    def _tags(self, window: int) -> dict[str, str]:
        topics = sorted({m.topic for m in self.manifests.values()})
        return {
            "window": str(window),
            "data_source": ",".join(f"kafka:{t}" for t in topics),
            "windows_dir": str(self.windows_dir.resolve()),
            "mlflow.source.git.commit": _git_commit(),
        }

    def _log_reports(
        self, run_id: str, folder: Path, fit: WindowFit, previous: PreviousWindow | None
    ) -> None:
        profile = fit.profile
        before = previous.profile if previous else None
        write_centers(profile, folder / "cluster_centers.csv")
        plot_profile(profile, folder / "cluster_profile.png")
        against = _against(fit.window, previous)
        if previous is not None:
            against += " of this training"
        table = comparison_table(profile, before, against)
        table.to_csv(folder / "comparison.csv", index=False)
        plot_comparison(table, profile, before, folder / "comparison.png")
        plot_history(fit.history, folder / DRIFT_CHART)
        if fit.drift is not None:
            (folder / SEGMENT_MAP).write_text(fit.drift.segment_map_json())
        self.client.log_artifacts(run_id, str(folder))


def _against(window: int, previous: PreviousWindow | None) -> str:
    """What the window's drift and comparison are measured against."""
    if previous is None:
        return f"none: window {window} is the first of this training"
    return f"window-{previous.profile.window}"


def _metrics(fit: WindowFit) -> list[Metric]:
    candidates, chosen = fit.candidates, fit.chosen
    now = get_current_time_millis()
    kmeans = chosen.model.stages[-1]
    metrics = [
        Metric("silhouette", chosen.silhouette, now, 0),
        Metric("training_cost", chosen.cost, now, 0),
    ]
    metrics += [Metric("silhouette_by_k", c.silhouette, now, c.k) for c in candidates]
    metrics += [Metric("training_cost_by_k", c.cost, now, c.k) for c in candidates]
    # Beside silhouette_by_k: a k whose smallest cluster is below min_cluster_share cannot win.
    metrics += [Metric("min_cluster_share_by_k", c.min_share, now, c.k) for c in candidates]
    metrics += [
        Metric(f"{CLUSTER_SIZE_METRIC}{cluster}", size, now, 0)
        for cluster, size in enumerate(kmeans.summary.clusterSizes)
    ]
    if fit.drift is not None:
        metrics += [Metric(key, value, now, 0) for key, value in fit.drift.metrics().items()]
    return metrics


def experiment_id(client: MlflowClient, settings: Settings) -> str:
    """The experiment, created on first use; a SQLite store keeps its artifacts beside the file.

    MLflow would put them under ./mlruns of whatever the working directory is. That is its own
    default, kept when the database is in the working directory (`sqlite:///mlflow.db`).

    The experiment is marked as model development (EXPERIMENT_KIND_TAG), also when an existing
    one lacks the mark; a kind someone chose is left alone.
    """
    experiment = client.get_experiment_by_name(settings.experiment_name)
    if experiment is not None:
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            client.set_experiment_tag(
                experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT
            )
        return experiment.experiment_id
    location = None
    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).resolve().parent
        if folder != Path.cwd().resolve():
            location = (folder / "mlruns").as_uri()
    return client.create_experiment(
        settings.experiment_name,
        artifact_location=location,
        tags={EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT},
    )


def experiment_page(ui_url: str, experiment_id: str) -> str:
    """The experiment in the MLflow UI at `ui_url` (e.g. http://127.0.0.1:5001), on its runs.

    MLflow 3.17's UI opens every experiment on the GenAI overview while its sidebar switch
    "GenAI / Model training" (kept per browser, GenAI at first) says GenAI: the experiment-kind
    tag alone does not change that. The `workflowType` parameter sets the switch for the visit,
    so this link opens on the runs table in any browser.
    """
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


@functools.cache  # the same for every window of a training
def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def _ids(ids: list[int]) -> str:
    return ",".join(str(i) for i in ids)
