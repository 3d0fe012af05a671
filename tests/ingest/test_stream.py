"""Integration tests of the stream against a real Kafka broker: replay a generated dataset, cut it
into windows, and check that the windows hold every input row exactly once, whatever happens to
the consumer or the broker on the way."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource

from infra.kafka_broker import start_cluster, stop_cluster
from pipelines.config import PROJECT_ROOT, Settings
from pipelines.data.load import load_transactions
from pipelines.ingest.consumer import DEAD_LETTERS, consume
from pipelines.ingest.messages import invoice_starts
from pipelines.ingest.producer import ensure_topic, replay
from pipelines.ingest.replication import replication
from pipelines.ingest.window_files import (
    combine_digests,
    read_manifests,
    read_window,
    rows_digest,
    write_windows,
)

pytestmark = pytest.mark.kafka

ROWS = 60_000


def _settings(bootstrap: str, topic: str, group: str = "windows") -> Settings:
    return replace(
        Settings.from_env(),
        kafka_bootstrap_servers=bootstrap,
        kafka_topic=topic,
        kafka_group=f"{topic}-{group}",
    )


def _spawn(module: str, *args: str, bootstrap: str, **env: str) -> subprocess.Popen:
    """Run `python -m pipelines.<module>` as a separate process, as a user would."""
    return subprocess.Popen(
        [sys.executable, "-m", f"pipelines.{module}", *args, "--bootstrap-servers", bootstrap],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _producer(dataset: Path, topic: str, rate: int, bootstrap: str) -> subprocess.Popen:
    args = ["--input", str(dataset), "--topic", topic, "--rate", str(rate), "--no-progress"]
    return _spawn("produce", *args, bootstrap=bootstrap)


def _consumer(
    topic: str, output_dir: Path, group: str, bootstrap: str, progress: bool = False
) -> subprocess.Popen:
    """A consumer that stops once window-3 exists, however many restarts it took to get there.

    With `progress`, it reports the rows read after every record (`consume: <rows>rows ...`)."""
    args = ["--topic", topic, "--until-window", "3", "--windows", "0"]
    args += ["--output-dir", str(output_dir), "--group", group]
    if not progress:
        return _spawn("consume", *args, "--no-progress", bootstrap=bootstrap)
    # tqdm reads its defaults from TQDM_* variables: with these, every update is shown.
    return _spawn("consume", *args, bootstrap=bootstrap, TQDM_MININTERVAL="0", TQDM_MINITERS="1")


def _finish(process: subprocess.Popen, timeout: float = 180) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()  # never leave a test's process behind
        output, _ = process.communicate()
        pytest.fail(f"{process.args} did not finish in {timeout} s:\n{output}")
    assert process.returncode == 0, output
    return output


def _wait_until_topic_holds(bootstrap: str, topic: str, messages: int, timeout: float = 60) -> None:
    probe = KafkaConsumer(bootstrap_servers=bootstrap)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            partitions = [TopicPartition(topic, p) for p in probe.partitions_for_topic(topic) or ()]
            if partitions and sum(probe.end_offsets(partitions).values()) >= messages:
                return
            time.sleep(0.1)
    finally:
        probe.close()
    pytest.fail(f"topic {topic} did not reach {messages} messages in {timeout} s")


class Watched:
    """A process whose output is collected line by line as it comes, tqdm's \\r updates included
    (text mode reads \\r as a line end)."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, what: str, seen: Callable[[str], bool], timeout: float = 150) -> str:
        """The first output line for which `seen` holds; fails if the process ends first."""
        deadline, checked = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            for line in self.lines[checked:]:
                if seen(line):
                    return line
                checked += 1
            if self.process.poll() is not None and not self._reader.is_alive():
                pytest.fail(f"{what}: the process ended first\n" + "\n".join(self.lines[-20:]))
            time.sleep(0.01)
        self.kill()
        pytest.fail(f"{what}: not seen in {timeout} s\n" + "\n".join(self.lines[-20:]))

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._reader.join(timeout=30)


def _rows(line: str) -> int:
    """The rows a consumer's progress line (`consume: <rows>rows ...`) reports; 0 for others."""
    match = re.search(r"consume: (\d+)rows", line)
    return int(match.group(1)) if match else 0


def _window_1(line: str) -> bool:
    """The line a consumer prints once window 1 is written and its offsets committed."""
    return "window-1: " in line


def _kill_once(
    topic: str, output_dir: Path, group: str, bootstrap: str, what: str, seen: Callable
) -> list[str]:
    """Start a consumer that reports every record it reads; SIGKILL it at the first output line
    `seen` holds for. Returns its output lines."""
    consumer = Watched(_consumer(topic, output_dir, group, bootstrap, progress=True))
    consumer.wait_for(what, seen)
    consumer.kill()
    return consumer.lines


def _window_ends_in_messages(dataset: Path) -> list[int]:
    """How many of the replay's messages (one per invoice) come before the end of each window,
    by the window rule (pipelines/ingest/window_rule.py)."""
    starts = invoice_starts(load_transactions(dataset).frame)
    size = -(-ROWS // 3)
    return [int((starts < size * (window + 1)).sum()) for window in range(3)]


def _pause_when_topic_holds(
    producer: subprocess.Popen, bootstrap: str, topic: str, messages: int
) -> None:
    """Stop the producer (SIGSTOP) once the topic holds `messages` messages; SIGCONT resumes."""
    _wait_until_topic_holds(bootstrap, topic, messages)
    os.kill(producer.pid, signal.SIGSTOP)


def _assert_windows_hold_exactly(windows_dir: Path, digest: str, rows: int) -> None:
    manifests = read_manifests(windows_dir)
    assert [m.window for m in manifests] == [1, 2, 3]
    assert sum(m.rows for m in manifests) == rows
    assert sum(len(read_window(windows_dir, m.window)) for m in manifests) == rows
    assert combine_digests([m.digest for m in manifests]) == digest
    for manifest in manifests:  # each manifest describes its own file
        assert rows_digest(read_window(windows_dir, manifest.window)) == manifest.digest


def test_replay_into_three_windows_holds_the_input_exactly(
    dataset, input_digest, kafka_bootstrap, unique_topic, tmp_path
):
    settings = _settings(kafka_bootstrap, unique_topic("retail"))
    # Read in chunks that end mid-invoice: the producer carries those rows over.
    sent = replay(dataset, settings, progress=False, chunk_rows=7_001)
    assert sent.rows == ROWS
    assert sent.messages == len(invoice_starts(load_transactions(dataset).frame))

    summary = consume(settings, tmp_path / "windows", max_windows=3, progress=False)

    assert len(summary.windows) == 3 and summary.dead_letters == 0
    _assert_windows_hold_exactly(tmp_path / "windows", input_digest, ROWS)
    manifests = read_manifests(tmp_path / "windows")
    for window in manifests:  # each window is about a third, whole invoices only
        assert abs(window.rows - ROWS / 3) < 200
    for partition in manifests[0].offsets:  # offset ranges tile each partition
        spans = [m.offsets[partition] for m in manifests]
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    frame = read_window(tmp_path / "windows", 1)
    assert list(frame.columns)[:8] == list(load_transactions(dataset).frame.columns)
    assert str(frame["InvoiceDate"].dtype).startswith("datetime64")
    # Cut without Kafka, the same file gives the same windows (only the offsets are made up).
    offline = write_windows(load_transactions(dataset).frame, tmp_path / "offline")
    assert [(m.rows, m.digest, m.first_invoice_date, m.last_invoice_date) for m in offline] == [
        (m.rows, m.digest, m.first_invoice_date, m.last_invoice_date) for m in manifests
    ]


def test_consumer_killed_mid_window_then_restarted_writes_the_same_windows(
    dataset, input_digest, kafka_bootstrap, unique_topic, tmp_path
):
    """SIGKILL twice at known points of the stream, restart, and compare with a clean run.

    The producer is paused (SIGSTOP) at a chosen message, so each kill lands where it should and
    the test can say so: mid window 1, with records read and nothing written; mid window 2, with
    window 1 written and committed and records of window 2 read. Each restart takes its
    partitions back at once (static membership, pipelines/ingest/consumer.py's member_id).
    """
    topic = unique_topic("retail")
    ends = _window_ends_in_messages(dataset)
    producer = _producer(dataset, topic, rate=10_000, bootstrap=kafka_bootstrap)
    killed_dir, killed_group = tmp_path / "killed", f"{topic}-killed"
    try:
        _pause_when_topic_holds(producer, kafka_bootstrap, topic, ends[0] // 2)
        lines = _kill_once(topic, killed_dir, killed_group, kafka_bootstrap, "records read", _rows)
        assert read_manifests(killed_dir) == []
        assert max(map(_rows, lines)) > 0

        os.kill(producer.pid, signal.SIGCONT)
        _pause_when_topic_holds(producer, kafka_bootstrap, topic, (ends[0] + ends[1]) // 2)
        lines = _kill_once(topic, killed_dir, killed_group, kafka_bootstrap, "window-1", _window_1)
        (written,) = read_manifests(killed_dir)
        assert written.window == 1
        assert max(map(_rows, lines)) > written.rows  # it had read into window 2
    finally:
        os.kill(producer.pid, signal.SIGCONT)  # paused or not, it goes on to the end
    _finish(_consumer(topic, killed_dir, killed_group, kafka_bootstrap))
    _finish(producer)

    clean_dir = tmp_path / "clean"
    _finish(_consumer(topic, clean_dir, f"{topic}-clean", kafka_bootstrap))

    _assert_windows_hold_exactly(killed_dir, input_digest, ROWS)
    for killed, clean in zip(read_manifests(killed_dir), read_manifests(clean_dir), strict=True):
        assert (killed.offsets, killed.rows, killed.digest) == (
            clean.offsets,
            clean.rows,
            clean.digest,
        )
        pd.testing.assert_frame_equal(
            read_window(killed_dir, killed.window), read_window(clean_dir, clean.window)
        )


def test_ctrl_c_stops_the_consumer_cleanly_and_a_restart_goes_on(
    dataset, input_digest, kafka_bootstrap, unique_topic, tmp_path
):
    topic = unique_topic("retail")
    producer = _producer(dataset, topic, rate=20_000, bootstrap=kafka_bootstrap)
    windows_dir, group = tmp_path / "windows", f"{topic}-interrupted"
    consumer = _consumer(topic, windows_dir, group, kafka_bootstrap)
    deadline = time.monotonic() + 60
    while not (windows_dir / "window-1.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    consumer.send_signal(signal.SIGINT)  # what Ctrl-C sends
    output, _ = consumer.communicate(timeout=30)

    assert consumer.returncode == 130, output
    assert "consume: interrupted" in output and "Traceback" not in output, output
    assert [m.window for m in read_manifests(windows_dir)] in ([1], [1, 2])
    _finish(_consumer(topic, windows_dir, group, kafka_bootstrap))
    _finish(producer)
    _assert_windows_hold_exactly(windows_dir, input_digest, ROWS)


def test_broker_restarted_mid_stream_loses_and_duplicates_nothing(
    dataset, input_digest, private_broker, unique_topic, tmp_path
):
    topic, bootstrap = unique_topic("retail"), private_broker.bootstrap
    port = int(bootstrap.rsplit(":", 1)[1])
    producer = _producer(dataset, topic, rate=8_000, bootstrap=bootstrap)
    consumer = _consumer(topic, tmp_path / "windows", f"{topic}-windows", bootstrap)
    _wait_until_topic_holds(bootstrap, topic, messages=600)  # a fifth of the stream is through
    stop_cluster(private_broker.state_dir)
    time.sleep(3)
    start_cluster(port, private_broker.state_dir)

    output = _finish(producer)
    assert f"{ROWS:,} rows" in output
    _finish(consumer)
    _assert_windows_hold_exactly(tmp_path / "windows", input_digest, ROWS)


@dataclass(frozen=True)
class Replicas:
    """Where a topic's partitions live: leader, replicas and in-sync replicas of each."""

    leaders: dict[int, int]
    replicas: dict[int, set[int]]
    in_sync: dict[int, set[int]]
    min_insync: int


def _replicas(bootstrap: str, topic: str) -> Replicas:
    with KafkaAdminClient(bootstrap_servers=bootstrap) as admin:
        (described,) = admin.describe_topics([topic])
        configs = admin.describe_configs([ConfigResource("topic", topic)], config_filter="all")
    partitions = described["partitions"]
    return Replicas(
        leaders={p["partition_index"]: p["leader_id"] for p in partitions},
        replicas={p["partition_index"]: set(p["replica_nodes"]) for p in partitions},
        in_sync={p["partition_index"]: set(p["isr_nodes"]) for p in partitions},
        min_insync=int(configs["topic"][topic]["min.insync.replicas"]["value"]),
    )


def test_the_topic_is_replicated_as_the_cluster_allows(kafka_bootstrap, unique_topic):
    """One broker: one replica (the session's cluster, as `make test` starts it); three brokers
    or more: three, and acks=all waits for two (the test below)."""
    topic = unique_topic("retail")
    ensure_topic(kafka_bootstrap, topic, partitions=3)
    with KafkaAdminClient(bootstrap_servers=kafka_bootstrap) as admin:
        brokers = sum(not b.get("is_fenced") for b in admin.describe_cluster()["brokers"])
    replicas, min_insync = replication(brokers)

    placed = _replicas(kafka_bootstrap, topic)
    assert {len(nodes) for nodes in placed.replicas.values()} == {replicas}
    assert placed.min_insync == min_insync
    assert [replication(n) for n in (1, 2, 3, 5)] == [(1, 1), (2, 1), (3, 2), (3, 2)]


@pytest.mark.slow  # three JVMs to start: 65 s of setup on the shared 2-core machine at load 19
def test_a_broker_of_three_killed_mid_replay_stops_nothing_and_changes_no_window(
    dataset, private_cluster, unique_topic, tmp_path
):
    """SIGKILL the broker leading partition 0 while the producer and the consumer run. With three
    replicas and min.insync.replicas=2, acks=all goes on with the two left; neither process is
    restarted, and the windows are the ones an undisturbed cut of the same file gives."""
    topic, bootstrap = unique_topic("retail"), private_cluster.bootstrap
    producer = _producer(dataset, topic, rate=8_000, bootstrap=bootstrap)
    consumer = _consumer(topic, tmp_path / "windows", f"{topic}-windows", bootstrap)
    _wait_until_topic_holds(bootstrap, topic, messages=1)
    before = _replicas(bootstrap, topic)
    assert set(map(frozenset, before.replicas.values())) == {frozenset({1, 2, 3})}
    assert before.min_insync == 2
    victim = next(node for node in private_cluster.nodes if node.node_id == before.leaders[0])
    _wait_until_topic_holds(bootstrap, topic, messages=600)  # a fifth of the stream is through
    os.kill(victim.pid, signal.SIGKILL)
    assert producer.poll() is None, "the replay had ended before the broker was killed"

    output = _finish(producer)
    assert f"{ROWS:,} rows" in output
    _finish(consumer)
    # Every partition the dead broker led has another leader; the two left are in sync.
    after = _replicas(bootstrap, topic)
    survivors = {node.node_id for node in private_cluster.nodes} - {victim.node_id}
    assert victim.node_id not in after.leaders.values()
    assert set(map(frozenset, after.in_sync.values())) == {frozenset(survivors)}

    windows = read_manifests(tmp_path / "windows")
    undisturbed = write_windows(load_transactions(dataset).frame, tmp_path / "undisturbed")
    assert [(m.window, m.rows, m.digest) for m in windows] == [
        (m.window, m.rows, m.digest) for m in undisturbed
    ]
    for manifest in windows:  # each manifest describes its own file
        assert rows_digest(read_window(tmp_path / "windows", manifest.window)) == manifest.digest


HEADER = (
    b'"replay": "x", "seq": 0, "total": 1, "t0": 0, "invoice": ["1", "2010-12-01 08:26:00", null'
)
POISON = [
    b"not json at all",
    b"[1, 2, 3]",
    b'{"v": 99, "type": "invoice"}',
    b'{"v": 1, "type": "invoice", ' + HEADER + b', "UK"], "lines": []}',
    b'{"v": 1, "type": "invoice", ' + HEADER + b', "UK"], "lines": [["A", null, "many", 1.0]]}',
    b'{"v": 1, "type": "invoice", ' + HEADER + b', "UK"], "lines": [["A", null, 3, NaN]]}',
    b'{"v": 1, "type": "invoice", ' + HEADER + b', "UK"], "lines": [["A", null, 3, "1.0"]]}',
    b'{"v": 1, "type": "invoice", "replay": "x", "seq": 0, "total": 1, "t0": 0, '
    b'"invoice": ["1", "yesterday", null, "UK"], "lines": [["A", null, 3, 1.0]]}',
    b"\xff\xfe\x00binary",
    None,
]


def test_poison_messages_go_to_the_dead_letter_file_and_the_stream_goes_on(
    dataset, input_digest, kafka_bootstrap, unique_topic, tmp_path
):
    settings = _settings(kafka_bootstrap, unique_topic("retail"))
    poisoner = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")

    def inject() -> None:
        for round_ in range(3):  # before the replay starts and while it runs
            for value in POISON:
                poisoner.send(settings.kafka_topic, key=b"poison", value=value)
            poisoner.flush()
            time.sleep(0.3 * round_)

    ensure_topic(kafka_bootstrap, settings.kafka_topic, 3)
    inject_thread = threading.Thread(target=inject)
    inject_thread.start()
    replay(dataset, settings, rate=40_000, progress=False)
    inject_thread.join()
    poisoner.close()

    summary = consume(settings, tmp_path / "windows", max_windows=3, progress=False)

    _assert_windows_hold_exactly(tmp_path / "windows", input_digest, ROWS)
    letters = [
        json.loads(line) for line in (tmp_path / "windows" / DEAD_LETTERS).read_text().splitlines()
    ]
    assert summary.dead_letters == len(letters) == 3 * len(POISON)
    assert all(letter["reason"] and letter["offset"] >= 0 for letter in letters)
    assert len({(letter["partition"], letter["offset"]) for letter in letters}) == len(letters)
    reasons = " ".join(letter["reason"] for letter in letters)
    for expected in (
        "not JSON",
        "schema version",
        "non-empty list",
        "Quantity",
        "UnitPrice",
        "InvoiceDate",
        "null value",
    ):
        assert expected in reasons
