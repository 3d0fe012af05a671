"""The Spark engine against the kafka-python engine, on one topic of a real broker: a real
SparkSession (local[2]) with Spark's Kafka source, run as `python -m pipelines.consume --engine
spark` as a user would, and SIGKILLed (driver JVM, Python and workers at once) mid-stream.

Kept small (one topic of 12,000 rows, three Spark runs): each run starts a JVM. The rule's
decisions, micro-batch by micro-batch and across restarts, are checked without Spark in
tests/ingest/test_spark_ledger.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from pipelines.config import PROJECT_ROOT, Settings
from pipelines.consume import main as consume_main
from pipelines.ingest.consumer import DEAD_LETTERS, consume
from pipelines.ingest.producer import ensure_topic, replay
from pipelines.ingest.spark_engine import WORK_DIR, EngineError, WorkDir, connector_jars
from pipelines.ingest.window_files import read_manifests, read_window, rows_digest, window_path
from pipelines.ingest.window_rule import WindowRule

ROWS = 12_000
POISON = [b"not json", b'{"v": 99, "type": "invoice"}', None]
MONTHS = WindowRule("event-time", period="month")


@pytest.fixture(scope="module")
def topic(dataset: Path, kafka_bootstrap: str) -> Settings:
    """The dataset replayed into a new topic of 3 partitions, after poison messages."""
    name = f"spark-engine-{uuid.uuid4().hex[:12]}"
    settings = replace(
        Settings.from_env(), kafka_bootstrap_servers=kafka_bootstrap, kafka_topic=name
    )
    ensure_topic(kafka_bootstrap, settings.kafka_topic, 3)
    poisoner = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for value in POISON:
        poisoner.send(settings.kafka_topic, key=str(value).encode(), value=value)
    poisoner.close()
    replay(dataset, settings, progress=False)
    return settings


def _kafka_python(settings: Settings, output_dir: Path, rule: WindowRule, windows: int) -> Path:
    consume(
        replace(settings, kafka_group=f"{settings.kafka_topic}-{output_dir.parent.name}"),
        output_dir,
        rule=rule,
        max_windows=windows,
        progress=False,
    )
    return output_dir


def _spark(
    settings: Settings, output_dir: Path, *flags: str, master: str = "local[2]"
) -> subprocess.Popen:
    """`python -m pipelines.consume --engine spark` on `master`, in a process group of its own
    (its JVM and Python workers with it), printing what it writes."""
    args = ["--engine", "spark", "--topic", settings.kafka_topic, "--output-dir", str(output_dir)]
    args += ["--bootstrap-servers", settings.kafka_bootstrap_servers, "--no-progress", *flags]
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.consume", *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, "SPARK_MASTER": master, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _finish(process: subprocess.Popen, timeout: float = 420) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # never leave a test's JVM behind
        output, _ = process.communicate()
        pytest.fail(f"{process.args} did not finish in {timeout} s:\n{output}")
    assert process.returncode == 0, output
    return output


def _kill_when(process: subprocess.Popen, ready, what: str, timeout: float = 420) -> None:
    """SIGKILL the whole driver (Python, its JVM, its workers) once `ready()` holds."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            pytest.fail(f"never saw {what}:\n{output}")
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()


def _dead_letters(output_dir: Path) -> set[tuple]:
    lines = (output_dir / DEAD_LETTERS).read_text().splitlines()
    return {tuple(json.loads(line).values()) for line in lines}


def _assert_same_windows(spark_dir: Path, kafka_dir: Path, count: int, offsets: bool) -> None:
    spark, kafka = read_manifests(spark_dir), read_manifests(kafka_dir)
    assert [m.window for m in spark] == [m.window for m in kafka] == list(range(1, count + 1))
    for ours, theirs in zip(spark, kafka, strict=True):
        fields = ["rows", "digest", "first_invoice_date", "last_invoice_date", "replay"]
        fields += ["replay_window", "replay_started_ms", "window_start", "window_end"]
        fields += ["offsets"] if offsets else []  # by event time, where reading resumes may differ
        assert {f: getattr(ours, f) for f in fields} == {f: getattr(theirs, f) for f in fields}
        rows = read_window(spark_dir, ours.window)
        assert rows_digest(rows) == ours.digest
        pd.testing.assert_frame_equal(rows, read_window(kafka_dir, theirs.window))
        # The same file, byte for byte: the same rows in the same order, the same writer.
        mine, other = window_path(spark_dir, ours.window), window_path(kafka_dir, theirs.window)
        assert mine.read_bytes() == other.read_bytes()


@pytest.mark.slow
@pytest.mark.kafka
@pytest.mark.spark
def test_driver_killed_mid_stream_then_restarted_writes_the_kafka_python_windows(
    topic, tmp_path: Path
):
    """Killed once window 1 is written and window 2's first rows wait on disk, restarted from
    Spark's checkpoint: the three windows, their offsets and bytes, and the dead letters are the
    kafka-python engine's."""
    kafka_dir = _kafka_python(topic, tmp_path / "kafka-python", WindowRule(), windows=3)
    spark_dir, work = tmp_path / "spark", WorkDir(tmp_path / "spark" / WORK_DIR)
    flags = ("--until-window", "3", "--windows", "0", "--batch-messages", "150")

    def mid_stream() -> bool:
        if not (spark_dir / "window-1.json").exists():
            return False
        ledger = json.loads(work.ledger.read_text())
        return bool(ledger["open"]) and any(work.pending.iterdir())

    _kill_when(_spark(topic, spark_dir, *flags), mid_stream, "window 1 written, window 2 open")
    assert [m.window for m in read_manifests(spark_dir)] in ([1], [1, 2])
    _finish(_spark(topic, spark_dir, *flags))

    _assert_same_windows(spark_dir, kafka_dir, 3, offsets=True)
    assert _dead_letters(spark_dir) == _dead_letters(kafka_dir)
    assert len(_dead_letters(spark_dir)) == len(POISON)
    assert not any(work.pending.iterdir())  # no window open: nothing staged is kept


def _with_a_late_invoice(settings: Settings) -> tuple[Settings, tuple[int, int]]:
    """A copy of the topic in which partition 0's first invoice comes again halfway through the
    partition, months behind its watermark: late, whatever the engine. Returns the new topic's
    settings and where the late copy is (partition, offset)."""
    copy = replace(settings, kafka_topic=f"{settings.kafka_topic}-late")
    ensure_topic(settings.kafka_bootstrap_servers, copy.kafka_topic, 3)
    reader = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False
    )
    writer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    for partition in range(3):
        source = TopicPartition(settings.kafka_topic, partition)
        reader.assign([source])
        reader.seek_to_beginning(source)
        end = reader.end_offsets([source])[source]
        records = []
        while len(records) < end:
            records += reader.poll(timeout_ms=1000).get(source, [])
        if partition == 0:
            first = next(r for r in records if b'"type":"invoice"' in (r.value or b""))
            late_at = len(records) // 2
            records.insert(late_at, first)
        for record in records:
            writer.send(
                copy.kafka_topic,
                value=record.value,
                key=record.key,
                partition=partition,
                timestamp_ms=record.timestamp,
            )
    writer.close()
    reader.close()
    return copy, (0, late_at)


@pytest.mark.slow
@pytest.mark.kafka
@pytest.mark.spark
def test_event_time_windows_are_the_kafka_python_ones(topic, tmp_path: Path):
    """Monthly windows, the first two: the same rows as the kafka-python engine's. An invoice
    that comes months late is a dead letter, and kept out of the window it belongs to (whose
    staged rows it is among). A restart with other window flags is refused, naming both rules,
    rather than mixing them in one folder."""
    late_topic, late_at = _with_a_late_invoice(topic)
    kafka_dir = _kafka_python(late_topic, tmp_path / "kafka-python", MONTHS, windows=2)
    flags = ("--window-by", "event-time", "--window-period", "month", "--windows", "2")

    output = _finish(_spark(late_topic, tmp_path / "spark", *flags))

    assert "window-2: " in output and "window-3" not in output
    _assert_same_windows(tmp_path / "spark", kafka_dir, 2, offsets=False)
    late = [d for d in _dead_letters(tmp_path / "spark") if d[1:3] == late_at]
    assert len(late) == 1 and "late invoice: its month window [2010-12-01" in late[0][3]
    refused = _spark(late_topic, tmp_path / "spark", "--windows", "1")
    output, _ = refused.communicate(timeout=120)
    assert refused.returncode == 1, output
    assert "by event time (month" in output and "this run asks" in output, output
    assert "Traceback" not in output


def test_a_connector_of_another_version_is_refused(tmp_path: Path, monkeypatch):
    """Spark and its Kafka connector must be the same version: the engine says so at start."""
    import pipelines.ingest.spark_engine as engine

    monkeypatch.setattr(engine, "SPARK_KAFKA_JARS", tmp_path)
    with pytest.raises(EngineError, match="not in .*make install"):
        connector_jars()
    (tmp_path / "spark-sql-kafka-0-10_2.13-4.1.0.jar").write_bytes(b"")
    with pytest.raises(EngineError, match="4.1.0 and pyspark is 4.2.0: they must be the same"):
        connector_jars()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--engine", "spark", "--group", "g"], "--group is for the kafka-python engine"),
        (["--batch-messages", "100"], "--batch-messages is for --engine spark"),
        (["--engine", "spark", "--batch-messages", "0"], "--batch-messages must be >= 1"),
    ],
)
def test_flags_the_engine_has_no_use_for_are_named(argv: list[str], message: str, capsys):
    with pytest.raises(SystemExit) as refused:
        consume_main(argv)
    assert refused.value.code == 2
    assert message in capsys.readouterr().err
