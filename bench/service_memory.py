"""Peak memory of the stream service at 1x and 10x window size (issue 11: equal within 20%).

    python -m bench.service_memory [--scales 1,10] [--bootstrap-servers HOST:PORT]

Needs a running broker (`make kafka-up`). For each scale it generates the default dataset at that
scale (`pipelines.generate --rows`), replays it into a new topic (`pipelines.produce`), then runs
`python -m pipelines.stream --max-windows 3` on that topic into a new windows dir and SQLite
store: three windows of a third of the replay each, 10 times larger at 10x. The service's peak
RSS is sampled from /proc (bench/rss.py): its Python process (the consumer thread and the
training driver), the goal, and the Spark JVM it starts, which the driver's -Xmx bounds.
SERVICE_ARGS keep training short (each window alone, k fixed): what the service holds in Python
does not depend on them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from pathlib import Path

from kafka import KafkaAdminClient

from bench.rss import FLAT_MEMORY, Run, measure
from infra.kafka_broker import cluster_answers
from pipelines.config import DEFAULT_WINDOWS, PROJECT_ROOT, Settings
from pipelines.data.generator import DEFAULT_ROWS

SERVICE_ARGS = ("--mode", "tumbling", "--k", "4")


def service_run(scale: int, bootstrap: str, work: Path) -> Run:
    """Generate, replay and run the service over 3 windows of the dataset at `scale`."""
    python = [sys.executable, "-m"]
    dataset = work / f"retail-{scale}x.csv"
    rows = str(scale * DEFAULT_ROWS)
    measure([*python, "pipelines.generate", "--rows", rows, "--output", str(dataset)], work)
    topic = f"bench-service-{uuid.uuid4().hex[:8]}"
    common = ["--topic", topic, "--bootstrap-servers", bootstrap]
    try:
        produce = [*python, "pipelines.produce", "--input", str(dataset), "--no-progress"]
        measure([*produce, *common], work)
        dataset.unlink()
        store = work / f"store-{scale}x"
        store.mkdir()
        service = [*python, "pipelines.stream", *common, *SERVICE_ARGS]
        service += ["--windows-dir", str(store / "windows"), "--max-windows", str(DEFAULT_WINDOWS)]
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db", "KAFKA_GROUP": topic}
        return measure(service, store, env)
    finally:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-service-memory")
        admin.delete_topics([topic])
        admin.close()


def main() -> int:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1,10", help="multiples of the default dataset")
    parser.add_argument("--bootstrap-servers", default=settings.kafka_bootstrap_servers)
    args = parser.parse_args()
    scales = sorted({int(s) for s in args.scales.split(",")})
    if len(scales) < 2 or min(scales) < 1:
        parser.error("--scales takes two positive integers at least, e.g. 1,10")
    if not cluster_answers(args.bootstrap_servers):
        parser.error(f"no Kafka broker answers at {args.bootstrap_servers}: make kafka-up")

    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; {PROJECT_ROOT}", flush=True)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-service-memory-") as tmp:
        for scale in scales:
            runs[scale] = run = service_run(scale, args.bootstrap_servers, Path(tmp))
            print(
                f"{scale}x: {run.seconds:.0f} s, Python {run.peak_mb:.0f} MB, JVM "
                f"{run.jvm_mb:.0f} MB (load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    low, high = runs[scales[0]], runs[scales[-1]]
    window_rows = [f"{s}x: {s * DEFAULT_ROWS // DEFAULT_WINDOWS:,} rows" for s in scales]
    print(f"\nwindows of {', '.join(window_rows)}; {' '.join(SERVICE_ARGS)}")
    print(f"{'scale':>5} {'seconds':>8} {'Python peak MB':>15} {'JVM peak MB':>12}")
    for scale, run in runs.items():
        print(f"{scale:>4}x {run.seconds:8.0f} {run.peak_mb:15.0f} {run.jvm_mb:12.0f}")
    ratio = high.peak_mb / low.peak_mb
    verdict = "met" if ratio <= FLAT_MEMORY else "NOT met"
    print(
        f"{scales[-1]}x/{scales[0]}x: Python x{ratio:.2f} (goal <= {FLAT_MEMORY}: {verdict}), "
        f"JVM x{high.jvm_mb / low.jvm_mb:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
