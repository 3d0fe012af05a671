"""The demo's stages: a title, what the stage's command says, its duration; the noise in a log.

A stage's command prints its own summary on stdout: that goes to the terminal, indented, and to
logs/demo/<log>.log. Its stderr (logging, progress bars, the JVM's and MLflow's start-up lines)
goes to the log only, unless verbose. A command that fails raises StageFailed carrying the end of
its log, so errors stay loud.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from infra.processes import tail_text
from pipelines.config import PROJECT_ROOT

LOG_DIR = PROJECT_ROOT / "logs" / "demo"


class StageFailed(Exception):
    """A stage's command exited non-zero; the message says which, and where its log is."""


def stage(title: str, action: Callable[[], object]) -> object:
    print(f"\n==> {title}", flush=True)
    started = time.perf_counter()
    result = action()
    print(f"    done in {time.perf_counter() - started:.1f} s", flush=True)
    return result


class Runner:
    """Runs the stages' commands: stdout to the terminal (indented) and the stage's log, stderr to
    the log only; with `verbose`, everything to both."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose

    def python(self, log: str, *args: str) -> None:
        self.run(log, sys.executable, *args)

    def run(self, log: str, *command: str) -> None:
        path = LOG_DIR / f"{log}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab", buffering=0) as sink:
            sink.write(f"\n$ {shlex.join(command)}\n".encode())
            start = sink.tell()  # earlier runs' output stays in the log, not in the error
            process = subprocess.Popen(
                command,
                cwd=PROJECT_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if self.verbose else sink,
            )
            try:
                self._copy(process, sink)
                code = process.wait()
            except KeyboardInterrupt:  # the terminal's Ctrl-C reached the command too
                _let_finish(process)
                raise
        if code != 0:
            with path.open("rb") as log:
                log.seek(start)
                output = tail_text(log.read().decode(errors="replace"), 40)
            raise StageFailed(
                f"--- last lines of {path} ---\n{output}\n"
                f"error: {Path(command[0]).name} exited {code}: {shlex.join(command)}\n"
                f"the whole output is in {path}"
            )

    def _copy(self, process: subprocess.Popen, sink) -> None:
        assert process.stdout is not None
        if self.verbose:  # as it comes, progress bars' carriage returns included
            while chunk := os.read(process.stdout.fileno(), 1 << 16):
                sink.write(chunk)
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            return
        for line in process.stdout:
            sink.write(line)
            print(f"    {line.decode(errors='replace').rstrip()}", flush=True)


def _let_finish(process: subprocess.Popen, grace: float = 30) -> None:
    """Give an interrupted command time to stop what it started; kill it only if it hangs."""
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
