"""`make demo-live`: the stream as it flows, each window trained as it closes and served as the
aliases move.

    python -m infra.demo --live [-v] [--speedup 100000]

Starts (or reuses) the broker and the demo's server (polling the registry every second), then in
the background the stream service and a producer replaying the dataset at a speedup
(infra/live_stream.py: calendar-month windows, 13 per replay of the default dataset), on a topic
and a windows directory of their own (`$KAFKA_TOPIC-live`, data/windows-live/) and the project's
MLflow store. Then it narrates: each window as it closes, each new version with its k,
silhouette and the gate's verdict, and what the seed's request to /predict_cluster_model1..3
answers each time the server's answer changes. It runs until Ctrl-C, which stops what this run
started, by PID, and says so in one line; `make stop` stops them too if this process was killed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from infra import demo
from infra.background import Background
from infra.kafka_broker import DEFAULT_STATE_DIR, running_cluster
from infra.live_stream import POLL_SECONDS, LiveStream, create_store
from infra.processes import cmdline, is_alive, read_pid
from infra.stages import LOG_DIR, Runner, StageFailed, stage
from pipelines.config import PROJECT_ROOT, Settings
from pipelines.contract import EXAMPLE_RECORD
from pipelines.ingest.window_files import Manifest, read_manifests
from pipelines.service.aliases import ALIASES
from pipelines.service.gate import REASON_TAG, REJECTED, VERDICT_TAG
from pipelines.service.ledger import WINDOW_DIGEST_TAG, WINDOW_TAG

# The live stream's own topic, group and windows: a run of `make demo` leaves the others alone.
SUFFIX = "-live"
# What `make stop` stops if this process was killed before it could: PID file -> module it runs.
PRODUCER_PID = PROJECT_ROOT / "logs" / "demo-live-producer.pid"
STREAM_PID = PROJECT_ROOT / "logs" / "demo-live-stream.pid"
PID_FILES = {PRODUCER_PID: "pipelines.produce", STREAM_PID: "pipelines.stream"}
TICK = 0.5  # seconds between looks at the windows, the registry and the server


def live_stream(settings: Settings) -> LiveStream:
    topic = f"{settings.kafka_topic}{SUFFIX}"
    live = replace(settings, kafka_topic=topic, kafka_group=f"{settings.kafka_group}{SUFFIX}")
    return LiveStream(live, settings.data_dir / f"windows{SUFFIX}")


@dataclass
class Started:
    """What this run started, to stop in this order: producer, service, server, broker."""

    verbose: bool = False  # the background commands' output to the terminal, not their logs
    background: list[Background] = field(default_factory=list)
    server: bool = False
    broker: bool = False

    def start(
        self, name: str, command: list[str], pid_file: Path, log: Path, **env: str
    ) -> Background:
        """Start `command` in the background, known from now on to `stop` and `make stop`."""
        process = Background.start(name, command, log, env, self.verbose)
        pid_file.write_text(str(process.pid))
        self.background.insert(0, process)  # the last started is stopped first
        print(f"    pid {process.pid}; log: {log.relative_to(PROJECT_ROOT)}", flush=True)
        return process

    def stop(self) -> str:
        """Stop everything, a second Ctrl-C included; what was stopped, in one line."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stopped = []
        for process in self.background:
            process.stop()
            stopped.append(f"{process.name} (pid {process.pid}{_stop_note(process)})")
        for pid_file in PID_FILES:
            pid_file.unlink(missing_ok=True)
        if self.server:
            stopped.append(f"the server (pid {demo.server_pid()})")
            demo.stop_server(quiet=True)
        if self.broker:
            demo.stop_broker(quiet=True)
            stopped.append("the broker")
        return f"stopped {', '.join(stopped) or 'nothing'}"


def _stop_note(process: Background) -> str:
    """The stream service's own closing line: where it stopped."""
    lines = process.log.read_text(errors="replace").splitlines() if process.log.exists() else []
    said = [line for line in lines if line.startswith("stream: ")]
    return f": {said[-1].removeprefix('stream: ')}" if said else ""


def stop_leftovers() -> None:
    """`make stop`: the producer and stream service of a live demo that could not stop them."""
    for pid_file, module in PID_FILES.items():
        pid = read_pid(pid_file)
        if pid and is_alive(pid) and module in cmdline(pid):
            os.kill(pid, signal.SIGTERM)
            print(f"stopped {module} (pid {pid})")
        pid_file.unlink(missing_ok=True)


class Narrator:
    """Says what changed since its last look: new windows, new versions, the server's answers."""

    def __init__(self, stream: LiveStream, settings: Settings, port: int) -> None:
        self.stream = stream
        self.model = settings.model_name
        self.client = MlflowClient(settings.mlflow_tracking_uri)
        self.port = port
        self.started = time.monotonic()
        self.windows = max((m.window for m in self._manifests()), default=0)
        self.versions = max((int(v.version) for v in self._versions()), default=0)
        self.answers: dict[str, str] = {}
        if self.windows:
            print(
                f"    {self.windows} windows already in {stream.windows_dir}: resuming after them"
            )

    def look(self) -> bool:
        """Print what is new; True once every window on disk has a version."""
        manifests = self._manifests()
        for manifest in manifests:
            if manifest.window > self.windows:
                self.say(_window_line(manifest))
                self.windows = manifest.window
        versions = self._versions()
        for version in sorted(versions, key=lambda v: int(v.version)):
            if int(version.version) > self.versions:
                self.say(self._version_line(version))
                self.versions = int(version.version)
        answers = {alias: self._ask(alias) for alias in ALIASES}
        if answers != self.answers:
            self.say("the seed's request now gets:")
            for alias in ALIASES:
                print(f"              POST /predict_cluster_{alias} {answers[alias]}", flush=True)
            self.answers = answers
        registered = {v.tags.get(WINDOW_DIGEST_TAG) for v in versions}
        return all(m.digest in registered for m in manifests)

    def say(self, line: str) -> None:
        seconds = int(time.monotonic() - self.started)
        print(f"    [{seconds // 60:02d}:{seconds % 60:02d}] {line}", flush=True)

    def _manifests(self) -> list[Manifest]:
        return read_manifests(self.stream.windows_dir)

    def _versions(self) -> list[ModelVersion]:
        return self.client.search_model_versions(f"name = '{self.model}'")

    def _version_line(self, version: ModelVersion) -> str:
        tags = version.tags
        silhouette = self.client.get_run(version.run_id).data.metrics.get("silhouette", math.nan)
        verdict = tags.get(VERDICT_TAG, "none (not a stream version)")
        line = (
            f"version {version.version} of window {tags.get(WINDOW_TAG, '?')}: "
            f"k={tags.get('k', '?')}, silhouette {silhouette:.3f}, gate {verdict}"
        )
        return f"{line} ({tags[REASON_TAG]})" if verdict == REJECTED else line

    def _ask(self, alias: str) -> str:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/predict_cluster_{alias}",
            data=json.dumps(EXAMPLE_RECORD).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                version = response.headers.get("X-Model-Version", "?")
                return f"(version {version}) -> {response.read().decode()}"
        except urllib.error.HTTPError as error:
            if error.code == 503:
                return "-> 503: no version behind this alias yet"
            return f"-> {error.code} {error.read().decode()[:100]}"
        except OSError as error:
            return f"-> no answer ({error})"


def _window_line(manifest: Manifest) -> str:
    first, last = (
        (manifest.first_invoice_date or "?")[:16],
        (manifest.last_invoice_date or "?")[:16],
    )
    return f"window {manifest.window} closed: {manifest.rows:,} rows, {first} to {last}"


def live(port: int, verbose: bool, speedup: float) -> None:
    # The store's own start-up lines (creating tables) are not the demo's to show.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    settings = Settings.from_env()
    stream = live_stream(settings)
    runner = Runner(verbose)
    own_broker = settings.kafka_is_local and running_cluster(DEFAULT_STATE_DIR) is None
    started = Started(verbose, broker=own_broker)
    if started.broker:  # marked first, so a Ctrl-C while it starts still stops it
        demo.BROKER_MARK.parent.mkdir(exist_ok=True)
        demo.BROKER_MARK.touch()
    try:
        stage("Kafka broker", lambda: demo.broker(runner))
        path = stage("dataset", lambda: demo.dataset(runner, settings))
        create_store(settings.mlflow_tracking_uri)
        started.server = stage(
            "serve the registry (polled every second)",
            lambda: demo.serve(port, poll_interval=POLL_SECONDS, ready="/health"),
        )
        stage(
            f"start the stream service on topic {stream.settings.kafka_topic}",
            lambda: _start_service(stream, started),
        )
        producer = stage(
            f"replay {path.name} at {speedup:,.0f}x",
            lambda: started.start(
                "the producer",
                stream.producer_command(path, speedup),
                PRODUCER_PID,
                LOG_DIR / "produce-live.log",
            ),
        )
        print("\n==> the stream, live (Ctrl-C stops what this run started)", flush=True)
        _narrate(Narrator(stream, settings, port), started, producer)
    except KeyboardInterrupt:
        print(f"\n{started.stop()}", flush=True)
        raise SystemExit(130) from None
    except StageFailed as failure:
        print(f"{failure}\n{started.stop()}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def _start_service(stream: LiveStream, started: Started) -> None:
    stream.create_topic()
    service = started.start(
        "the stream service",
        stream.service_command(),
        STREAM_PID,
        LOG_DIR / "stream.log",
        **stream.service_env(),
    )
    print("    waiting for its SparkSession and its consumer to join the group", flush=True)
    try:
        stream.wait_until_consuming(service)
    except RuntimeError as error:  # it exited, or never joined
        raise StageFailed(str(error)) from None


def _narrate(narrator: Narrator, started: Started, producer: Background) -> None:
    replay_over = served = False
    while True:
        for process in started.background:
            code = process.exit_code()
            if process is producer and code == 0:
                if not replay_over:
                    narrator.say(f"the replay is over: {_last_line(producer.log)}")
                replay_over = True
            elif code is not None:
                raise StageFailed(process.failure(f"{process.name} exited with {code}"))
        everything = narrator.look()
        if replay_over and everything and not served:
            narrator.say("every window of the replay is registered; Ctrl-C stops the demo")
            served = True
        time.sleep(TICK)


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""
