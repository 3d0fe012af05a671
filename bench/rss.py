"""Peak resident memory of a command and of the JVMs it starts, read from /proc (Linux).

The kernel keeps each process's high-water mark (VmHWM in /proc/<pid>/status), so sampling it a
few times a second misses nothing a process reached before the last sample; a process ends by
freeing memory, not by growing it. Descendants are found through /proc's children lists, so the
Spark JVM that a Python driver starts is measured apart from the driver.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import PROJECT_ROOT

PROC = Path("/proc")
INTERVAL_S = 0.2
# The goal of issues 11 and 13: peak memory at 10 times the work within 20% of the 1x figure.
FLAT_MEMORY = 1.2


def _status(pid: int) -> dict[str, str]:
    """The fields of /proc/<pid>/status; empty once the process is gone."""
    try:
        text = (PROC / str(pid) / "status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _high_water_mb(status: dict[str, str]) -> float:
    """VmHWM in MB (0 for a zombie, whose memory is gone)."""
    value = status.get("VmHWM", "0 kB").split()[0]
    return int(value) / 1024


def _descendants(root: int) -> list[int]:
    """Every process below `root`, through /proc/<pid>/task/<tid>/children."""
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        try:
            tasks = list((PROC / str(pid) / "task").iterdir())
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except FileNotFoundError:
                continue
            found += children
            todo += children
    return found


@dataclass
class Run:
    """What one command took: wall time, its own peak RSS, the largest JVM's below it."""

    seconds: float
    peak_mb: float
    jvm_mb: float
    output: str

    @property
    def with_jvm_mb(self) -> float:
        """Its peak and its JVM's: a PySpark driver's memory (in local mode, its executors' too)."""
        return self.peak_mb + self.jvm_mb


def measure(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> Run:
    """Run `command` to its end, sampling its peak RSS and its JVM descendants'; its output
    (stdout and stderr) is returned, and a failure raises with the end of it. It imports this
    checkout's modules, wherever `cwd` is (an installed copy could be another checkout's)."""
    peaks = {"self": 0.0, "java": 0.0}
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peaks["self"] = max(peaks["self"], _high_water_mb(_status(process.pid)))
            for pid in _descendants(process.pid):
                status = _status(pid)
                if status.get("Name") == "java":
                    peaks["java"] = max(peaks["java"], _high_water_mb(status))
            done.wait(INTERVAL_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    if process.returncode != 0:
        tail = "\n".join(output.splitlines()[-30:])
        raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}:\n{tail}")
    return Run(seconds, peaks["self"], peaks["java"], output)
