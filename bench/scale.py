"""Cost per row as the work grows: the default dataset at 1x, 4x and 10x (541,909 to 5,419,090
rows) through ingestion and training, printed side by side with the ratios 10x/1x.

    python -m bench.scale [--scales 1,4,10] [--train local,cluster] [--bootstrap-servers HOST:PORT]

Needs a running broker (`make kafka-up`). For each scale it generates the dataset
(`pipelines.generate --rows`), then for each consumer engine in ENGINES: replays it into a new
topic (`pipelines.produce`, the whole file, unthrottled), cuts the topic into 3 windows
(`pipelines.consume` with the engine's flags, started once the replay is in Kafka, so each stage
is timed alone); with `--train cluster`, the Spark engine on the cluster as well. The engines
must write the same windows (same digests); the windows are then trained once per scale
(`pipelines.train`, cumulative, into a new SQLite store) on `local[*]` and on a standalone
cluster of 2 one-core workers that the bench starts on free ports (`infra.spark_cluster`). Every
stage is a separate process, timed from start to exit, its peak RSS sampled from /proc
(bench/rss.py): for the Spark engine the driver's and its JVM's added
(in local mode the JVM holds the executors too; on the cluster the executors' JVMs are the
workers' and not counted); for training, the Spark JVM's apart.

Goals (issue 13): time per row flat or falling from 1x to 10x; producer and consumer peak memory
flat within 20%; at the largest scale, the Spark engines' ingestion (replay + windows) at least as
fast as the kafka-python engine's.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaAdminClient

from bench.rss import FLAT_MEMORY, Run, measure
from infra.kafka_broker import cluster_answers
from infra.ports import free_port
from infra.spark_cluster import start_cluster, stop_cluster
from pipelines.config import DEFAULT_WINDOWS, PROJECT_ROOT, Settings
from pipelines.data.generator import DEFAULT_ROWS
from pipelines.ingest.window_files import read_manifests

TRAIN_PLACES = ("local", "cluster")


@dataclass(frozen=True)
class Engine:
    """A consumer engine: `python -m pipelines.consume` with these flags, and a consumer group of
    its own per topic if it uses one (the Spark engine keeps its offsets in its checkpoint)."""

    name: str
    args: tuple[str, ...] = ()
    group: bool = True
    place: str = "local"  # where a Spark engine runs: local[*], or the bench's cluster


SPARK = ("--engine", "spark")
ENGINES = [Engine("kafka-python"), Engine("spark", SPARK, group=False)]
# With --train cluster: the Spark engine on the cluster too (its executors are the workers').
CLUSTER_ENGINE = Engine("spark cluster", SPARK, group=False, place="cluster")


@dataclass
class Row:
    """One scale through one engine."""

    scale: int
    rows: int
    engine: str
    windows: Path
    produce: Run
    consume: Run
    train: dict[str, Run] = field(default_factory=dict)


def _python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def ingest(
    dataset: Path,
    scale: int,
    rows: int,
    engine: Engine,
    masters: dict[str, str],
    bootstrap: str,
    work: Path,
) -> Row:
    """Replay `dataset` into a new topic, then cut it into windows with `engine`."""
    topic = f"bench-scale-{uuid.uuid4().hex[:8]}"
    windows = work / f"windows-{topic}"
    common = ["--topic", topic, "--bootstrap-servers", bootstrap, "--no-progress"]
    try:
        produce = measure(_python("pipelines.produce", "--input", str(dataset), *common), work)
        consume = measure(
            _python(
                "pipelines.consume",
                *engine.args,
                *(["--group", f"{topic}-bench"] if engine.group else []),
                "--windows",
                str(DEFAULT_WINDOWS),
                "--output-dir",
                str(windows),
                *common,
            ),
            work,
            {"SPARK_MASTER": masters[engine.place]},
        )
    finally:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-scale")
        admin.delete_topics([topic])
        admin.close()
    written = sum(m.rows for m in read_manifests(windows))
    if written != rows:
        raise RuntimeError(f"{engine.name}: the windows hold {written:,} rows, not {rows:,}")
    return Row(scale, rows, engine.name, windows, produce, consume)


def same_windows(rows: list[Row]) -> Row:
    """The first engine's row, once every engine's windows have its digests: the engines cut the
    same topic into the same windows, so training them once per scale times training for all."""
    first, *others = rows
    digests = [m.digest for m in read_manifests(first.windows)]
    for other in others:
        theirs = [m.digest for m in read_manifests(other.windows)]
        if theirs != digests:
            raise RuntimeError(f"{other.engine} wrote windows {theirs}, {first.engine} {digests}")
    return first


def train(windows: Path, master: str, work: Path) -> Run:
    """`pipelines.train` on the windows into a new SQLite store, on `master`."""
    store = work / f"store-{uuid.uuid4().hex[:8]}"
    store.mkdir()
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db", "SPARK_MASTER": master}
    args = ["--windows-dir", str(windows)]
    return measure(_python("pipelines.train", *args), store, env)


def _per_row(run: Run, rows: int) -> str:
    return f"{run.seconds / rows * 1e6:8.2f}"


def report(rows: list[Row], places: list[str]) -> None:
    """The table of cost per row (us/row: microseconds per row), then per engine the ratios of
    the largest scale to the smallest."""
    train_heads = "".join(f" {f'train {p} s':>16} {'us/row':>8}" for p in places)
    print(
        f"\n{'scale':>5} {'rows':>10} {'engine':<13}"
        f" {'produce s':>9} {'us/row':>8} {'peak MB':>8}"
        f" {'consume s':>9} {'us/row':>8} {'peak MB':>8} {'rows/s':>9}{train_heads}"
    )
    for row in rows:
        ingest_s = _ingest_seconds(row)
        trains = ""
        for place in places:
            run = row.train.get(place)
            trains += f" {run.seconds:16.1f} {_per_row(run, row.rows)}" if run else f" {'-':>25}"
        print(
            f"{row.scale:>4}x {row.rows:>10,} {row.engine:<13}"
            f" {row.produce.seconds:9.1f} {_per_row(row.produce, row.rows)}"
            f" {row.produce.with_jvm_mb:8.0f}"
            f" {row.consume.seconds:9.1f} {_per_row(row.consume, row.rows)}"
            f" {row.consume.with_jvm_mb:8.0f} {row.rows / ingest_s:9,.0f}{trains}"
        )
    for engine in dict.fromkeys(row.engine for row in rows):
        mine = sorted((r for r in rows if r.engine == engine), key=lambda r: r.scale)
        if len(mine) < 2:
            continue
        low, high = mine[0], mine[-1]
        print(f"\n{engine}, {high.scale}x/{low.scale}x:")
        for stage in ("produce", "consume"):
            slow, shigh = getattr(low, stage), getattr(high, stage)
            time_ratio = (shigh.seconds / high.rows) / (slow.seconds / low.rows)
            memory_ratio = shigh.with_jvm_mb / slow.with_jvm_mb
            print(
                f"  {stage}: time per row x{time_ratio:.2f} "
                f"({'flat or falling' if time_ratio <= 1.1 else 'RISING'}), "
                f"peak memory x{memory_ratio:.2f} "
                f"(goal <= {FLAT_MEMORY}: {'met' if memory_ratio <= FLAT_MEMORY else 'NOT met'})"
            )
        for place in places:
            if place in high.train and place in low.train:
                time_ratio = (high.train[place].seconds / high.rows) / (
                    low.train[place].seconds / low.rows
                )
                print(f"  train {place}: time per row x{time_ratio:.2f}")


def compare_engines(rows: list[Row]) -> None:
    """Ingestion rows/s of every engine at the largest scale, against the first engine's."""
    largest = max(row.scale for row in rows)
    first, *others = [row for row in rows if row.scale == largest]
    for other in others:
        mine, theirs = (row.rows / _ingest_seconds(row) for row in (other, first))
        verdict = "met" if mine >= theirs else "NOT met"
        print(
            f"\n{largest}x, replay + windows: {other.engine} {mine:,.0f} rows/s, "
            f"{first.engine} {theirs:,.0f} rows/s: x{mine / theirs:.2f} (goal >= 1: {verdict})"
        )


def _ingest_seconds(row: Row) -> float:
    return row.produce.seconds + row.consume.seconds


def main() -> int:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1,4,10", help="multiples of the default dataset")
    parser.add_argument(
        "--train",
        default=",".join(TRAIN_PLACES),
        help="where to train: local, cluster, both (comma-separated) or none",
    )
    parser.add_argument("--bootstrap-servers", default=settings.kafka_bootstrap_servers)
    args = parser.parse_args()
    scales = sorted({int(s) for s in args.scales.split(",")})
    places = [p for p in args.train.split(",") if p != "none"]
    if not scales or min(scales) < 1 or not set(places) <= set(TRAIN_PLACES):
        parser.error("--scales takes positive integers, --train local, cluster or none")
    if not cluster_answers(args.bootstrap_servers):
        parser.error(f"no Kafka broker answers at {args.bootstrap_servers}: make kafka-up")

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        masters = {"local": "local[*]"}
        cluster = None
        if "cluster" in places:
            cluster = start_cluster(work / "spark", free_port(), free_port())
            masters["cluster"] = cluster.url
        engines = [*ENGINES, CLUSTER_ENGINE] if cluster else ENGINES
        print(f"{os.cpu_count()} CPUs, {_load()}; engines: {', '.join(e.name for e in engines)}")
        try:
            rows = []
            for scale in scales:
                count = scale * DEFAULT_ROWS
                dataset = work / f"retail-{scale}x.csv"
                measure(
                    _python("pipelines.generate", "--rows", str(count), "--output", str(dataset)),
                    PROJECT_ROOT,
                )
                for engine in engines:
                    row = ingest(
                        dataset, scale, count, engine, masters, args.bootstrap_servers, work
                    )
                    print(
                        f"{scale}x {engine.name}: produce {row.produce.seconds:.1f} s "
                        f"{row.produce.peak_mb:.0f} MB, consume {row.consume.seconds:.1f} s "
                        f"{row.consume.with_jvm_mb:.0f} MB ({_load()})",
                        flush=True,
                    )
                    rows.append(row)
                first = same_windows(rows[-len(engines) :])
                for place in places:
                    run = train(first.windows, masters[place], work)
                    first.train[place] = run
                    print(
                        f"{scale}x train {place}: {run.seconds:.1f} s, driver "
                        f"{run.peak_mb:.0f} MB, JVM {run.jvm_mb:.0f} MB ({_load()})",
                        flush=True,
                    )
                dataset.unlink()
        finally:
            if cluster is not None:
                stop_cluster(cluster.state_dir)
    report(rows, places)
    compare_engines(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
