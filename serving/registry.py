"""Aliases -> loaded models, kept current by polling the MLflow Model Registry.

Each alias (`model1`..`model3`) has a `Slot`: the model it serves and, if the last attempt failed,
why. A refresh resolves every alias; when one has moved, the new version is downloaded and read
*before* the slot is replaced, in a single reference assignment. A request reads its slot once,
so it finishes on the model it started with, and no request ever sees a half-loaded model.

If the registry cannot be reached, loaded models keep serving and the error is reported; an alias
that never loaded answers 503 until a later poll succeeds.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow.artifacts
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipelines.contract import FEATURES
from pipelines.training.registry import SEGMENTS_TAG
from serving.predictor import SegmentationModel, load_pipeline
from serving.reload import ReloadBoard

log = logging.getLogger(__name__)

# Error codes meaning "this alias or model does not exist", as opposed to the registry failing.
_NOT_FOUND = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}


@dataclass(frozen=True, eq=False)  # compared by identity: one object per load
class LoadedModel:
    """One registered version, read into memory, with what `GET /models` reports about it."""

    version: int
    run_id: str | None
    model: SegmentationModel
    window: int | str | None
    silhouette: float | None
    # Per cluster: id, name, customers, share, revenue_share, median per feature (training's
    # report.segment_records, from the version's `segments` tag); None for versions without it.
    segments: list[dict[str, Any]] | None = None
    loaded_at: float = field(default_factory=time.time)

    def describe(self) -> dict[str, Any]:
        centers = self.model.kmeans.centers
        return {
            "version": self.version,
            "run_id": self.run_id,
            "window": self.window,
            "k": self.model.k,
            "silhouette": self.silhouette,
            "features": list(self.model.input_cols),
            "centers": {
                "scaled": centers.tolist(),
                "original_units": self.model.to_original(centers).tolist(),
            },
            "segments": self.segments,
            "loaded_at": self.loaded_at,
        }


@dataclass(frozen=True)
class Slot:
    """What an alias serves now (`model`) and why the last refresh of it failed (`error`)."""

    model: LoadedModel | None = None
    error: str | None = "not loaded yet"

    def state(self) -> dict[str, Any]:
        """What `/ready` and `/admin/reload` report for the alias."""
        return {"version": self.model.version if self.model else None, "error": self.error}


class ModelRegistry:
    """The registered model's aliases, resolved and loaded; `refresh()` picks up moved aliases."""

    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        aliases: tuple[str, ...],
        on_change: Callable[[str, Slot], None] = lambda alias, slot: None,
    ) -> None:
        # MLflow's HTTP client retries 7 times with exponential backoff (minutes) by default: too
        # long for start-up, a poll or `POST /admin/reload`. A user's explicit setting wins.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.aliases = aliases
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._slots: dict[str, Slot] = {alias: Slot() for alias in aliases}
        self._refresh_lock = threading.Lock()
        self._on_change = on_change

    def slot(self, alias: str) -> Slot:
        return self._slots[alias]

    @property
    def all_loaded(self) -> bool:
        return all(s.model is not None for s in self._slots.values())

    def refresh(self) -> dict[str, Slot]:
        """Re-resolve every alias and swap in any version that moved. Returns the new slots."""
        with self._refresh_lock:
            outage: str | None = None
            for alias in self.aliases:
                current = self._slots[alias]
                if outage is None:
                    slot, outage = self._refresh_one(alias, current)
                else:  # the registry just failed: do not wait on it once per alias
                    slot = Slot(model=current.model, error=outage)
                if slot != current:
                    self._slots = {**self._slots, alias: slot}
                    self._on_change(alias, slot)
            return dict(self._slots)

    def _refresh_one(self, alias: str, current: Slot) -> tuple[Slot, str | None]:
        """The alias's new slot, and the error if the registry itself is failing."""
        try:
            version = self._client.get_model_version_by_alias(self.model_name, alias)
        except Exception as exc:
            error = f"cannot resolve alias {alias!r} of {self.model_name!r}: {_reason(exc)}"
            log.warning("%s", error)
            missing = isinstance(exc, MlflowException) and exc.error_code in _NOT_FOUND
            return Slot(model=current.model, error=error), None if missing else error
        return self._update(alias, current, version.version, version.run_id, version.tags), None

    def _update(
        self, alias: str, current: Slot, version: str, run_id: str | None, tags: dict[str, str]
    ) -> Slot:
        number = int(version)
        if current.model is not None and current.model.version == number:
            return current if current.error is None else Slot(model=current.model, error=None)
        try:
            loaded = self._load(number, run_id, tags)
        except Exception as exc:
            error = f"cannot load version {number} for alias {alias!r}: {_reason(exc)}"
            log.exception("%s", error)
            return Slot(model=current.model, error=error)
        previous = current.model.version if current.model else None
        log.info("alias %s: now serving version %s (was %s)", alias, loaded.version, previous)
        return Slot(model=loaded, error=None)

    def _load(self, version: int, run_id: str | None, tags: dict[str, str]) -> LoadedModel:
        with tempfile.TemporaryDirectory(prefix="serving-model-") as tmp:
            # The version's storage location, not `models:/...`: MLflow would resolve that
            # through the process-wide registry URI rather than this registry's.
            source = self._client.get_model_version_download_uri(self.model_name, str(version))
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=source,
                dst_path=tmp,
                tracking_uri=self.tracking_uri,
                registry_uri=self.tracking_uri,
            )
            model = load_pipeline(Path(local) / "sparkml")
        unknown = [c for c in model.input_cols if c not in FEATURES]
        if unknown:
            raise ValueError(f"model inputs {unknown} are not fields of the API {list(FEATURES)}")
        window, silhouette = self._run_facts(run_id)
        return LoadedModel(version, run_id, model, window, silhouette, _segments(version, tags))

    def _run_facts(self, run_id: str | None) -> tuple[int | str | None, float | None]:
        """The training window and silhouette recorded on the version's run, where present."""
        if run_id is None:
            return None, None
        data = self._client.get_run(run_id).data
        window = data.tags.get("window", data.params.get("window"))
        silhouette = data.metrics.get("silhouette", data.params.get("silhouette"))
        return (
            int(window) if window is not None and window.isdigit() else window,
            float(silhouette) if silhouette is not None else None,
        )


class Poller(threading.Thread):
    """Refreshes the registry every `interval` seconds; sooner (from 1 s) while an alias is down,
    and at once when `POST /admin/reload` on any worker asks for it through `board`."""

    def __init__(
        self, registry: ModelRegistry, interval: float, board: ReloadBoard | None = None
    ) -> None:
        super().__init__(name="registry-poller", daemon=True)
        self.registry = registry
        self.interval = interval
        self.board = board
        self.reached = 0  # the last reload generation this worker has refreshed for

    def refresh(self) -> None:
        """One round; also called once before the thread starts, to load the models."""
        # Read before refreshing: a reload asked for during the refresh gets one more round.
        generation = self.board.requested() if self.board else 0
        try:
            self.registry.refresh()
        except Exception:  # never let the poller die; the next round tries again
            log.exception("registry refresh failed")
        if self.board:
            self.board.reached(generation)
        self.reached = generation

    def run(self) -> None:
        retry = 1.0
        while True:
            if self.registry.all_loaded:
                retry, delay = 1.0, self.interval
            else:
                delay, retry = min(retry, self.interval), min(retry * 2, self.interval)
            self._sleep(delay)
            self.refresh()

    def _sleep(self, seconds: float) -> None:
        """Sleep, cut short when a reload is asked for."""
        if self.board is None:
            time.sleep(seconds)
        else:
            self.board.wait_for_request(after=self.reached, timeout=seconds)


def _segments(version: int, tags: dict[str, str]) -> list[dict[str, Any]] | None:
    """The version's segments tag, parsed; None (and a warning if malformed) when unusable."""
    text = (tags or {}).get(SEGMENTS_TAG)
    if text is None:
        return None
    try:
        segments = json.loads(text)
    except ValueError as exc:
        log.warning(
            "version %s: unreadable %r tag, no segments shown: %s", version, SEGMENTS_TAG, exc
        )
        return None
    return segments if isinstance(segments, list) else None


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
