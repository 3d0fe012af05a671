"""Several worker processes share one rotating log: no line lost, split or doubled."""

from __future__ import annotations

import logging
import multiprocessing
import time
from pathlib import Path

import pytest

from serving import logging_setup

LINES = 3000
WRITERS = 3


def write(path: Path, writer: int) -> None:
    logging_setup.configure("INFO", path, max_bytes=20_000, backups=10_000)
    log = logging.getLogger("serving.access")
    for i in range(LINES):
        log.info("writer=%d line=%d %s", writer, i, "x" * 40)


def test_workers_share_one_rotating_file(tmp_path: Path, capfd) -> None:
    path = tmp_path / "serving.log"
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=write, args=(path, w)) for w in range(WRITERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0

    files = sorted(tmp_path.glob("serving.log*"))
    logs = [f for f in files if not f.name.endswith(".lock")]
    assert len(logs) > 10, "the log should have rotated many times"
    lines = [line for f in logs for line in f.read_text().splitlines()]
    seen = {
        (line.split("writer=")[1].split()[0], line.split("line=")[1].split()[0]) for line in lines
    }
    assert len(lines) == len(seen) == WRITERS * LINES
    assert all(line.endswith("x" * 40) for line in lines)
    # A line may land in a file another worker rotated a moment before: a few lines of slack.
    assert all(f.stat().st_size <= 20_000 + 5 * len(lines[0]) for f in logs)
    capfd.readouterr()  # the same lines went to stderr


def test_access_lines_are_formatted_as_logging_formats_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "serving.log"
    access = logging_setup.configure("INFO", path, max_bytes=0, backups=0)
    message = '127.0.0.1 "POST /predict_cluster_model1" 200 14 0.123ms id=abc'
    for now in (1_764_600_000.0, 1_764_600_000.5, 1_764_600_001.999):
        monkeypatch.setattr(time, "time", lambda now=now: now)
        monkeypatch.setattr(time, "time_ns", lambda now=now: round(now * 1e9))
        access(message)  # the fast path
        logging.getLogger("serving.access").info(message)  # logging's own
    lines = path.read_text().splitlines()
    assert len(lines) == 6
    assert lines[0::2] == lines[1::2]
    assert ",500 INFO [" in lines[2] and lines[2].endswith(f"serving.access: {message}")


def test_no_access_lines_below_info(tmp_path: Path) -> None:
    path = tmp_path / "serving.log"
    access = logging_setup.configure("WARNING", path, max_bytes=0, backups=0)
    access("a request")
    logging.getLogger("serving").warning("a warning")
    assert [line.split(": ", 1)[1] for line in path.read_text().splitlines()] == ["a warning"]


def test_a_log_moved_away_by_another_program_is_reopened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes look the path up again at least every LOOK_EVERY seconds (logrotate, deletion)."""
    path = tmp_path / "serving.log"
    access = logging_setup.configure("INFO", path, max_bytes=1_000_000, backups=1)
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    access("before")
    path.rename(tmp_path / "moved.log")
    access("soon after")  # within LOOK_EVERY: still the file the worker has open
    clock[0] += logging_setup.LOOK_EVERY
    access("after")
    moved = [line.rsplit(": ", 1)[1] for line in (tmp_path / "moved.log").read_text().splitlines()]
    now = [line.rsplit(": ", 1)[1] for line in path.read_text().splitlines()]
    assert moved[0] == "before" and now[-1] == "after"
    assert moved + now == ["before", "soon after", "after"]  # none lost
