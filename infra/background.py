"""Commands that run in the background while something else watches them: the live demo's and
the freshness benchmark's server, stream service and producer.

Each runs in a session of its own, so the terminal's Ctrl-C reaches only the command that started
them, which then stops them itself, by PID and in order, waiting for each (the stream service
needs a few seconds to say where it stopped). Their output goes to a log file; a failure shows
its end.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from infra.processes import tail_file
from pipelines.config import PROJECT_ROOT


@dataclass(frozen=True)
class Background:
    """A command started in the background, and the log its output goes to."""

    name: str  # what the messages call it: "the stream service"
    process: subprocess.Popen
    log: Path

    @classmethod
    def start(
        cls,
        name: str,
        command: list[str],
        log: Path,
        env: dict[str, str] | None = None,
        verbose: bool = False,
    ) -> Background:
        """Start `command` from the project root with `env` added to this environment; its output
        goes to `log` (appended), and with `verbose` to the terminal instead."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as sink:
            sink.write(f"\n$ {shlex.join(command)}\n".encode())
            process = subprocess.Popen(
                command,
                cwd=PROJECT_ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                stdout=None if verbose else sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return cls(name, process, log)

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_code(self) -> int | None:
        """None while it runs."""
        return self.process.poll()

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM, as Ctrl-C would; what is left of its process group after `timeout` seconds
        is killed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def failure(self, what: str) -> str:
        """An error message: the end of its log, then `what` happened."""
        return f"--- last lines of {self.log} ---\n{tail_file(self.log, 40)}\nerror: {what}"
