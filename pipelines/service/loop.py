"""The service loop: the consumer writes windows in a thread; as each window's manifest appears,
the main thread fits it, gates it, logs it, registers it and moves the aliases.

One SparkSession serves every window. Each window is looked up in the store first
(pipelines/service/ledger.py), so a restart after a crash finishes only what is missing, and the
windows already on disk when the service starts are caught up the same way. Each window's fit is
handed on to the next for its drift metrics; the first window a (re)started process trains gets
the window before from the store instead (pipelines/service/resume.py). Each window trained logs
how long after its close its aliases moved, step by step (pipelines/service/timeline.py).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.entities.model_registry import ModelVersion
from mlflow.utils.time import get_current_time_millis
from pyspark.sql import SparkSession

from pipelines.config import Settings
from pipelines.ingest.consumer import consume
from pipelines.ingest.window_files import Manifest, read_manifests
from pipelines.ingest.window_rule import DEFAULT_RULE, WindowRule
from pipelines.service import aliases, ledger, resume
from pipelines.service.faults import crash_point
from pipelines.service.gate import ACCEPTED, REASON_TAG, VERDICT_TAG, Gate, center_shift, judge
from pipelines.service.timeline import Timeline
from pipelines.training import registry
from pipelines.training.fitting import PreviousWindow, Spec, fit_window
from pipelines.training.report import ModelProfile
from pipelines.training.tracking import Recorder, Registration, experiment_id

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # how often the training loop looks for a new manifest


@dataclass
class Service:
    """Trains windows of `windows_dir` as they close, each exactly once."""

    settings: Settings
    windows_dir: Path
    spec: Spec
    gate: Gate
    spark: SparkSession
    client: MlflowClient = field(init=False)
    experiment_id: str = field(init=False)
    parent_run_id: str | None = field(init=False)
    last_handled: Manifest | None = field(init=False, default=None)
    # Profiles of accepted versions by number, so the gate's drift check reloads no model.
    _profiles: dict[int, ModelProfile] = field(init=False, default_factory=dict)
    # The window trained just before, for the run's drift metrics (training/drift.py); for the
    # first window this process trains, read from the store (resume.previous_window).
    _previous: PreviousWindow | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        # `mlflow run` hands its run over MLFLOW_RUN_ID: the window runs become its children.
        self.parent_run_id = os.environ.pop("MLFLOW_RUN_ID", None)
        mlflow.set_tracking_uri(self.settings.mlflow_tracking_uri)
        self.client = MlflowClient()
        self.experiment_id = experiment_id(self.client, self.settings)
        registry.ensure_registered_model(self.client, self.settings.model_name)

    def run(
        self,
        rule: WindowRule = DEFAULT_RULE,
        until_window: int = 0,
        stop: threading.Event | None = None,
    ) -> None:
        """Consume and train until window `until_window` is handled (0: until interrupted) or
        `stop` is set (looked at between windows)."""
        stop = stop or threading.Event()
        failure: list[BaseException] = []

        def consumer() -> None:
            try:
                consume(
                    self.settings,
                    self.windows_dir,
                    max_windows=0,
                    rule=rule,
                    progress=False,
                    until_window=until_window,
                    stop=stop,
                )
            except BaseException as error:  # handed to the main thread, which stops
                failure.append(error)

        thread = threading.Thread(target=consumer, name="consumer", daemon=True)
        thread.start()
        try:
            while not stop.is_set() and not (
                until_window and self._handled_up_to() >= until_window
            ):
                if failure:
                    raise RuntimeError(f"the consumer stopped: {failure[0]}") from failure[0]
                new = [
                    m for m in read_manifests(self.windows_dir) if m.window > self._handled_up_to()
                ]
                if until_window:
                    new = [m for m in new if m.window <= until_window]
                if not new:
                    stop.wait(POLL_SECONDS)
                for manifest in new:
                    if stop.is_set():
                        break
                    self.handle(manifest)
        finally:
            stop.set()
            thread.join(timeout=10)

    def handle(self, manifest: Manifest) -> ModelVersion:
        """Bring one window to its registered, gated version and the aliases up to date."""
        window = manifest.window
        timeline = Timeline(manifest.closed_at)
        timeline.mark("waited")
        state = ledger.lookup(self.client, self.settings.model_name, self.experiment_id, manifest)
        version, profile = state.version, None
        if version is None:
            if state.finished_run_id is None:
                run_id, registration, profile = self._train(manifest, timeline)
            else:
                run_id = state.finished_run_id
                registration = Registration.of_run(self.client, run_id)
                log.info("window %d: registering from finished run %s", window, run_id)
            crash_point("logged", window)
            version = self._recorder().register(run_id, registration)
            timeline.mark("registered")
            crash_point("registered", window)
            if profile is not None and version.tags[VERDICT_TAG] == ACCEPTED:
                self._profiles[int(version.version)] = profile
        accepted = ledger.accepted_versions(self.client, self.settings.model_name)
        targets = aliases.alias_targets([int(v.version) for v in accepted])
        aliases.move_aliases(
            self.client,
            self.settings.model_name,
            targets,
            after_first_change=lambda: crash_point("aliases", window),
        )
        timeline.mark("aliases")
        pointed = " ".join(f"{a}=v{v}" for a, v in targets.items() if v is not None)
        log.info(
            "window %d: version %s %s (%s); aliases %s%s",
            window,
            version.version,
            version.tags[VERDICT_TAG],
            version.tags[REASON_TAG],
            pointed or "unset",
            f"; {timeline.line()}" if profile is not None else "",
        )
        if profile is not None:  # trained here: how fresh its model is, beside its other metrics
            now = get_current_time_millis()
            metrics = [Metric(key, value, now, 0) for key, value in timeline.metrics().items()]
            self.client.log_batch(version.run_id, metrics=metrics)
        self.last_handled = manifest
        return version

    def _train(
        self, manifest: Manifest, timeline: Timeline
    ) -> tuple[str, Registration, ModelProfile]:
        """Fit the window, judge it against the current newest accepted version, log the run."""
        previous = self._previous or resume.previous_window(
            self.spark, self.client, self.settings.model_name, self.windows_dir, manifest.window
        )
        fit = fit_window(self.spark, self.windows_dir, manifest.window, self.spec, None, previous)
        crash_point("fit", manifest.window)
        model3 = self._newest_accepted_profile()
        chosen = fit.chosen
        shift = center_shift(fit.profile, model3) if model3 else None
        verdict = judge(self.gate, chosen.k, chosen.min_share, chosen.silhouette, shift)
        timeline.mark("fit")
        tags = {**ledger.window_tags(manifest), **verdict.tags}
        run_id, registration = self._recorder().log_run(fit, previous, tags)
        timeline.mark("logged")
        self._previous = PreviousWindow.of(fit)
        return run_id, registration, fit.profile

    def _recorder(self) -> Recorder:
        manifests = {m.window: m for m in read_manifests(self.windows_dir)}
        return Recorder(
            self.client,
            self.settings,
            self.experiment_id,
            self.parent_run_id,
            self.windows_dir,
            manifests,
            self.spec,
        )

    def _newest_accepted_profile(self) -> ModelProfile | None:
        """The profile of the version model3 points at (or will, once the aliases catch up)."""
        accepted = ledger.accepted_versions(self.client, self.settings.model_name)
        if not accepted:
            return None
        newest = accepted[-1]
        number = int(newest.version)
        if number not in self._profiles:  # registered before this process started
            self._profiles[number] = resume.load_profile(self.client, newest)[1]
        return self._profiles[number]

    def _handled_up_to(self) -> int:
        return self.last_handled.window if self.last_handled else 0

    def where(self) -> str:
        """Where the service stands, for the line it prints when it stops."""
        trained = f"window {self.last_handled.window}" if self.last_handled else "no window"
        manifests = read_manifests(self.windows_dir)
        if not manifests:
            return f"handled {trained}; the consumer has written no window yet"
        last = manifests[-1]
        offsets = ",".join(f"{p}:{end}" for p, (_, end) in sorted(last.offsets.items()))
        return (
            f"handled {trained}; consumer at window-{last.window} of {last.topic}, "
            f"next offsets {offsets}"
        )
