"""End-to-end ingestion throughput: dataset file -> Kafka -> window files, beside Kafka's own
producer performance tool on the same broker at the same record size.

    python -m bench.stream [--rows 541909] [--bootstrap-servers 127.0.0.1:9092]

Needs a running broker (`make kafka-up`) and the Kafka jars in infra/kafka/lib. The consumer runs
in its own process (as it would in production) and is started first; the clock runs from the
moment the producer starts reading the file until the last window's manifest is on disk.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

from infra.kafka_runtime import fetch_runtime
from pipelines.config import DEFAULT_WINDOWS, PROJECT_ROOT, Settings
from pipelines.data.generator import write_dataset
from pipelines.ingest.producer import ensure_topic, replay
from pipelines.ingest.window_files import combine_digests, read_manifests


def pipeline_throughput(dataset: Path, settings: Settings, work: Path) -> dict[str, float]:
    windows_dir = work / "windows"
    ensure_topic(settings.kafka_bootstrap_servers, settings.kafka_topic, 3)
    consumer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.consume",
            "--windows",
            str(DEFAULT_WINDOWS),
            "--no-progress",
            "--topic",
            settings.kafka_topic,
            "--group",
            f"{settings.kafka_topic}-bench",
            "--bootstrap-servers",
            settings.kafka_bootstrap_servers,
            "--output-dir",
            str(windows_dir),
        ],
        cwd=PROJECT_ROOT,
    )
    time.sleep(3)  # let the consumer import its libraries and join the group before the clock runs
    started = time.perf_counter()
    summary = replay(dataset, settings, progress=False)
    produced = time.perf_counter() - started
    if consumer.wait(timeout=600) != 0:
        raise RuntimeError("the consumer failed")
    elapsed = time.perf_counter() - started
    manifests = read_manifests(windows_dir)
    assert sum(m.rows for m in manifests) == summary.rows, "windows do not hold every row"
    return {
        "rows": summary.rows,
        "messages": summary.messages,
        "bytes": summary.bytes,
        "produce_s": produced,
        "end_to_end_s": elapsed,
        "digest": combine_digests([m.digest for m in manifests]),
    }


def kafka_producer_perf(bootstrap: str, records: int, record_size: int) -> dict[str, float]:
    """Run org.apache.kafka.tools.ProducerPerformance with the same durability settings."""
    topic = f"bench-perf-{uuid.uuid4().hex[:8]}"
    ensure_topic(bootstrap, topic, 3)
    classpath = f"{fetch_runtime()}/*"
    command = [
        "java",
        "-Xmx512m",
        "-cp",
        classpath,
        "org.apache.kafka.tools.ProducerPerformance",
        "--topic",
        topic,
        "--num-records",
        str(records),
        "--record-size",
        str(record_size),
        "--throughput",
        "-1",
        "--producer-props",
        f"bootstrap.servers={bootstrap}",
        "acks=all",
        "enable.idempotence=true",
        "linger.ms=20",
        "batch.size=524288",
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    final = output.strip().splitlines()[-1]
    match = re.search(r"([\d.]+) records/sec \(([\d.]+) MB/sec\)", final)
    if not match:
        raise RuntimeError(f"unexpected ProducerPerformance output: {final}")
    return {"records_per_s": float(match[1]), "mb_per_s": float(match[2]), "summary": final}


def main() -> int:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=541_909)
    parser.add_argument("--bootstrap-servers", default=settings.kafka_bootstrap_servers)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        work = Path(tmp)
        dataset = write_dataset(work / "retail.csv", rows=args.rows, seed=7)
        topic = f"bench-stream-{uuid.uuid4().hex[:8]}"
        settings = replace(
            settings, kafka_bootstrap_servers=args.bootstrap_servers, kafka_topic=topic
        )
        ours = pipeline_throughput(dataset, settings, work)
    record_size = round(ours["bytes"] / ours["messages"])
    theirs = kafka_producer_perf(args.bootstrap_servers, int(ours["messages"]), record_size)
    rows_per_message = ours["rows"] / ours["messages"]
    rows_per_s = ours["rows"] / ours["end_to_end_s"]
    perf_rows_per_s = theirs["records_per_s"] * rows_per_message

    print(
        f"\ndataset: {ours['rows']:,} rows in {ours['messages']:,} invoice messages "
        f"(mean {record_size:,} bytes, {rows_per_message:.1f} rows each); cpus: {os.cpu_count()}"
    )
    print(f"{'':42}{'records/s':>12}{'MB/s':>9}{'rows/s':>12}")
    print(
        f"{'ours: file -> Kafka -> 3 window files':42}"
        f"{ours['messages'] / ours['end_to_end_s']:>12,.0f}"
        f"{ours['bytes'] / ours['end_to_end_s'] / 1e6:>9.1f}{rows_per_s:>12,.0f}"
    )
    print(
        f"{'ours: file -> Kafka (producer alone)':42}"
        f"{ours['messages'] / ours['produce_s']:>12,.0f}"
        f"{ours['bytes'] / ours['produce_s'] / 1e6:>9.1f}{ours['rows'] / ours['produce_s']:>12,.0f}"
    )
    print(
        f"{'Kafka ProducerPerformance (same size)':42}{theirs['records_per_s']:>12,.0f}"
        f"{theirs['mb_per_s']:>9.1f}{perf_rows_per_s:>12,.0f}"
    )
    print(
        f"\nend to end: {ours['end_to_end_s']:.2f} s, {rows_per_s:,.0f} rows/s "
        f"(goal >= 100,000: {'met' if rows_per_s >= 100_000 else 'NOT met'}); "
        f"ratio to ProducerPerformance: {rows_per_s / perf_rows_per_s:.2f}x"
    )
    print(f"ProducerPerformance: {theirs['summary']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
