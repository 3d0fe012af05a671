"""`POST /admin/reload` for every worker, not only the one that took the request.

The workers share nothing but a directory (made by serving.server). The worker that takes
the request bumps a generation number in it; every worker's poller looks at that number a few
times a second, refreshes when it moved and then writes the generation it has reached to a file
of its own. The request returns once every live worker has reached the new generation.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

GENERATION = "generation"
CHECK_EVERY = 0.2  # seconds between a poller's looks at the generation


class ReloadBoard:
    """The shared directory: the generation asked for, and the one each worker has reached."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def requested(self) -> int:
        return _read_int(self.directory / GENERATION)

    def request(self) -> int:
        """Ask every worker to refresh; returns the generation to wait for."""
        with (self.directory / f"{GENERATION}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two reloads at once get two generations
            generation = self.requested() + 1
            _write_int(self.directory / GENERATION, generation)
        return generation

    def wait_for_request(self, after: int, timeout: float) -> None:
        """A poller's sleep: `timeout` seconds, or until a generation newer than `after`."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0 and self.requested() <= after:
            time.sleep(min(left, CHECK_EVERY))

    def reached(self, generation: int) -> None:
        """This worker has refreshed since `generation` was asked for."""
        _write_int(self.directory / f"worker-{os.getpid()}", generation)

    def wait(self, generation: int, timeout: float) -> tuple[int, list[int]]:
        """Wait until every live worker reached `generation`. Returns how many live workers
        have, and the PIDs of those that have not."""
        deadline = time.monotonic() + timeout
        while True:
            done, behind = self._progress(generation)
            if not behind or time.monotonic() >= deadline:
                return done, behind
            time.sleep(CHECK_EVERY / 2)

    def _progress(self, generation: int) -> tuple[int, list[int]]:
        done, behind = 0, []
        for path in self.directory.glob("worker-*"):
            pid = int(path.name.removeprefix("worker-"))
            if not alive(pid):  # a worker that died (granian starts another in its place)
                path.unlink(missing_ok=True)
                continue
            if _read_int(path) >= generation:
                done += 1
            else:
                behind.append(pid)
        return done, sorted(behind)


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except FileNotFoundError:
        return 0


def _write_int(path: Path, value: int) -> None:
    """Atomically: a reader sees the old number or the new one, never an empty file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    partial.write_text(str(value))
    os.replace(partial, path)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # the workers are this user's processes
    except ProcessLookupError:
        return False
    return True
