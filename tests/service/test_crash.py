"""Exactly once through the registry: the service killed (SIGKILL) at each of its crash points
and restarted leaves the same versions, tags and aliases as the undisturbed run, no window
registered twice; and SIGTERM stops it with one line saying where."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipelines.config import PROJECT_ROOT, Settings
from pipelines.service.faults import FAIL_AT
from tests.service.conftest import SPEC_FLAGS, WINDOWS, StreamRun, snapshot

pytestmark = [pytest.mark.kafka, pytest.mark.spark, pytest.mark.slow, pytest.mark.timeout(1200)]

# Each run dies at its point; the next resumes. Together they pass every crash point
# (pipelines/service/faults.py) and every restart path: nothing yet, a finished run without a
# version, a version whose aliases have not moved, aliases half moved.
CRASHES = ("fit:1", "logged:1", "registered:2", "aliases:3")
TIMEOUT = 300  # seconds one run may take on a busy machine


def _service(settings: Settings, windows_dir: Path, *flags: str, **env: str) -> subprocess.Popen:
    """`python -m pipelines.stream` over the settings' topic and store, as a user runs it."""
    command = [sys.executable, "-m", "pipelines.stream", *SPEC_FLAGS, *flags]
    command += ["--topic", settings.kafka_topic, "--bootstrap-servers"]
    command += [settings.kafka_bootstrap_servers, "--windows-dir", str(windows_dir)]
    environment = {key: value for key, value in os.environ.items() if key != FAIL_AT}
    environment.update(
        PYTHONUNBUFFERED="1",
        MLFLOW_TRACKING_URI=settings.mlflow_tracking_uri,
        KAFKA_GROUP=settings.kafka_group,
        SPARK_MASTER="local[2]",  # as the undisturbed run's session (tests/conftest.py)
        **env,
    )
    return subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen) -> str:
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()  # never leave a test's process behind
        output, _ = process.communicate()
        pytest.fail(f"the service did not end in {TIMEOUT} s:\n{output}")
    return output


def test_killed_at_every_point_and_restarted_it_registers_each_window_once(
    undisturbed: StreamRun, replayed: Settings, tmp_path: Path
) -> None:
    windows_dir = tmp_path / "windows"
    for crash in CRASHES:
        process = _service(replayed, windows_dir, "--max-windows", str(WINDOWS), **{FAIL_AT: crash})
        output = _finish(process)
        assert process.returncode == -signal.SIGKILL, f"{crash} was not reached:\n{output}"

    # The last restart runs on until stopped: SIGTERM once window 3 is handled.
    process = _service(replayed, windows_dir)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + TIMEOUT
    while not any(f"window {WINDOWS}: version" in line for line in lines):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("window 3 was not handled:\n" + "".join(lines))
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    reader.join(timeout=10)

    stopped = [line for line in lines if line.startswith("stream: stopped")]
    assert len(stopped) == 1, "".join(lines)
    assert f"handled window {WINDOWS}; consumer at window-{WINDOWS}" in stopped[0]
    model = replayed.model_name
    assert snapshot(replayed.mlflow_tracking_uri, model) == snapshot(undisturbed.uri, model)
