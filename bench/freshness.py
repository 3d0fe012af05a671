"""Freshness: from the moment a window closes to the server answering with the version trained
on it, for every window of a live replay of the default dataset.

    python -m bench.freshness [--speedup 100000] [--poll-interval 1] [--rows 541909]

Needs a running broker (`make kafka-up`). In a temporary directory with a SQLite store of its
own, it starts what `make demo-live` starts (infra/live_stream.py): the server (2 workers,
polling the registry every `--poll-interval` s), the stream service (calendar-month windows,
13 for the default dataset; its default recipe, cumulative mode) and a producer replaying the
dataset at `--speedup`; then it asks the server every TICK s which version answers the seed's
request to /predict_cluster_model3. Per window:

- closed: the manifest's `created_at`, when the consumer closed the window (a message past its
  end had been read from every partition) and wrote it;
- the service's steps, as it records them on the window's run (`seconds_<step>`,
  pipelines/service/timeline.py): waited (for the window before to be done), fit (the candidate
  k, the choice, the gate), logged (the run; of which `mlflow.spark.log_model`, from the start
  the run's log-model history records to the run's end), registered, aliases;
- served: from the aliases' move to the first answer from the new version (the server's poll,
  its download and read of the model), as seen by asking every TICK s; the other worker follows
  within its own poll;
- freshness: from the close to that first answer. p50 and max over the windows served (a version
  the gate rejects is never served).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import requests
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_MODELS

from infra.background import Background
from infra.kafka_broker import cluster_answers
from infra.live_stream import DEFAULT_SPEEDUP, POLL_SECONDS, LiveStream, create_store
from infra.ports import free_port
from pipelines.config import Settings, sqlite_tracking_uri
from pipelines.contract import EXAMPLE_RECORD
from pipelines.data.generator import DEFAULT_ROWS, write_dataset
from pipelines.ingest.window_files import Manifest, read_manifests
from pipelines.service import ledger
from pipelines.service.gate import ACCEPTED, VERDICT_TAG
from pipelines.service.timeline import METRIC_PREFIX, STEPS

TICK = 0.2  # seconds between two questions to the server
GOAL_P50 = 20.0  # seconds, on the 2-core development machine
SLACK = 900.0  # seconds allowed after the replay's own duration before giving up


@dataclass(frozen=True)
class Window:
    """One window's way from its close to the server's answer, in seconds."""

    manifest: Manifest
    version: int
    verdict: str
    customers: int
    k: int
    steps: dict[str, float]  # the service's, by STEPS
    log_model: float  # within steps["logged"]
    served: float | None  # from the aliases' move to the first answer; None: never served

    @property
    def freshness(self) -> float | None:
        return None if self.served is None else sum(self.steps.values()) + self.served


def watch(url: str, stream: LiveStream, processes: list[Background], deadline: float) -> dict:
    """Ask the server until every window has a version and the newest accepted one answers;
    returns version -> when model3 first answered from it (epoch seconds)."""
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    name = stream.settings.model_name
    first_answer: dict[int, float] = {}
    producer = processes[-1]
    while time.time() < deadline:
        for process in processes:
            code = process.exit_code()
            if code is not None and (process is not producer or code != 0):
                raise RuntimeError(process.failure(f"{process.name} exited with {code}"))
        response = requests.post(f"{url}/predict_cluster_model3", json=EXAMPLE_RECORD, timeout=10)
        if response.status_code == 200:
            version = int(response.headers["X-Model-Version"])
            if version not in first_answer:
                first_answer[version] = time.time()
                print(f"  model3 answers from version {version}", flush=True)
        if producer.exit_code() == 0:
            versions = [
                ledger.registered_version(client, name, m)
                for m in read_manifests(stream.windows_dir)
            ]
            accepted = [int(v.version) for v in versions if v and v.tags[VERDICT_TAG] == ACCEPTED]
            if all(versions) and (not accepted or accepted[-1] in first_answer):
                return first_answer
        time.sleep(TICK)
    raise RuntimeError("the replay's windows were not all served in time")


def window_figures(
    client: MlflowClient, name: str, manifest: Manifest, first_answer: dict[int, float]
) -> Window:
    version = ledger.registered_version(client, name, manifest)
    assert version is not None, f"window {manifest.window} has no version"
    run = client.get_run(version.run_id)
    steps = {step: run.data.metrics[f"{METRIC_PREFIX}{step}"] for step in STEPS}
    (logged,) = json.loads(run.data.tags[MLFLOW_LOGGED_MODELS])  # the one model the run logs
    model_started = datetime.fromisoformat(logged["utc_time_created"]).replace(tzinfo=UTC)
    moved = manifest.closed_at + sum(steps.values())
    answered = first_answer.get(int(version.version))
    return Window(
        manifest=manifest,
        version=int(version.version),
        verdict=version.tags[VERDICT_TAG],
        customers=int(run.data.params["customers"]),
        k=int(run.data.params["k"]),
        steps=steps,
        log_model=run.info.end_time / 1000 - model_started.timestamp(),
        served=None if answered is None else answered - moved,
    )


def report(windows: list[Window], load: tuple[float, float], args: argparse.Namespace) -> None:
    head = ["window", "rows", "cust", "k", "gate"] + [*STEPS[:3], "(model)", *STEPS[3:]]
    head += ["served", "FRESH"]
    print("\nseconds per window, from its close (the service's steps, then the server's pick-up):")
    print("".join(f"{h:>11}" for h in head))
    for w in windows:
        cells = [w.manifest.window, f"{w.manifest.rows:,}", w.customers, w.k, w.verdict[:8]]
        cells += [f"{w.steps[s]:.1f}" for s in STEPS[:3]] + [f"{w.log_model:.1f}"]
        cells += [f"{w.steps[s]:.1f}" for s in STEPS[3:]]
        cells += ["-" if w.served is None else f"{w.served:.1f}"]
        cells += ["-" if w.freshness is None else f"{w.freshness:.1f}"]
        print("".join(f"{c:>11}" for c in cells))
    served = [w for w in windows if w.freshness is not None]
    if not served:
        print("no window was served")
        return
    fresh = [w.freshness for w in served]
    print(f"\nover the {len(served)} windows served (of {len(windows)}):")
    stages = {s: [w.steps[s] for w in served] for s in STEPS}
    stages["(of logged: the Spark model)"] = [w.log_model for w in served]
    stages["served (server poll + load)"] = [w.served for w in served]
    for stage, values in stages.items():
        print(f"  {stage:<30} p50 {statistics.median(values):6.1f} s   max {max(values):6.1f} s")
    p50 = statistics.median(fresh)
    verdict = "met" if p50 <= GOAL_P50 else "NOT met"
    print(
        f"  {'FRESHNESS':<30} p50 {p50:6.1f} s   max {max(fresh):6.1f} s   "
        f"(goal p50 <= {GOAL_P50:.0f} s: {verdict})"
    )
    print(
        f"\nspeedup {args.speedup:,.0f}, server poll interval {args.poll_interval} s, "
        f"{os.cpu_count()} cpus, load average {load[0]:.1f} at the start and {load[1]:.1f} at "
        "the end"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speedup", type=float, default=DEFAULT_SPEEDUP)
    parser.add_argument("--poll-interval", type=float, default=POLL_SECONDS)
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    args = parser.parse_args(argv)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its store's start-up lines
    settings = Settings.from_env()
    if not cluster_answers(settings.kafka_bootstrap_servers):
        parser.exit(
            2, f"no Kafka broker answers at {settings.kafka_bootstrap_servers}: make kafka-up\n"
        )
    work = Path(tempfile.mkdtemp(prefix="bench-freshness-"))
    dataset = write_dataset(work / "retail.csv", rows=args.rows)
    topic = f"bench-freshness-{uuid.uuid4().hex[:8]}"
    stream = LiveStream(
        replace(settings, kafka_topic=topic, kafka_group=f"{topic}-windows"), work / "windows"
    )
    os.environ["MLFLOW_TRACKING_URI"] = sqlite_tracking_uri(work / "store")  # for all of them
    print(f"work directory (logs, store, windows): {work}", flush=True)
    load_start = os.getloadavg()[0]
    processes: list[Background] = []
    try:
        create_store(os.environ["MLFLOW_TRACKING_URI"])
        port = free_port()
        server = Background.start(
            "the server",
            [
                sys.executable, "-m", "serving", "--port", str(port),
                "--poll-interval", str(args.poll_interval),
            ],
            work / "server.log",
            {"SERVING_LOG_FILE": "none"},
        )  # fmt: skip
        processes.append(server)
        url = f"http://127.0.0.1:{port}"
        _wait_for(f"{url}/health", server)
        stream.create_topic()
        service = Background.start(
            "the stream service",
            stream.service_command(),
            work / "stream.log",
            stream.service_env(),
        )
        processes.append(service)
        print("starting the stream service (a SparkSession, then its consumer)", flush=True)
        stream.wait_until_consuming(service)
        started = time.time()
        producer = Background.start(
            "the producer", stream.producer_command(dataset, args.speedup), work / "produce.log"
        )
        processes.append(producer)
        print(f"replaying {args.rows:,} rows at {args.speedup:,.0f}x", flush=True)
        replay_seconds = 400 * 86_400 / args.speedup  # the dataset spans about 400 days at most
        first_answer = watch(url, stream, processes, started + replay_seconds + SLACK)
    finally:
        for process in reversed(processes):
            process.stop()
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    windows = [
        window_figures(client, settings.model_name, manifest, first_answer)
        for manifest in read_manifests(stream.windows_dir)
    ]
    report(windows, (load_start, os.getloadavg()[0]), args)
    return 0


def _wait_for(url: str, process: Background, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if process.exit_code() is not None:
            raise RuntimeError(process.failure(f"{process.name} exited"))
        time.sleep(0.5)
    raise RuntimeError(process.failure(f"{url} did not answer in {timeout:.0f} s"))


if __name__ == "__main__":
    sys.exit(main())
