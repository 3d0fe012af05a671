"""Processes by PID: is it alive, what is its command line, and the tail of what it printed.

What lets `down` and `stop` signal exactly the process they started and nothing else: a PID file
is trusted only while that PID is alive and still runs the expected command (PIDs get reused).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def cmdline(pid: int) -> list[str]:
    """The process's argv, or [] if it does not exist (``/proc``; ``ps`` where there is none)."""
    if Path("/proc/self").exists():
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return []
        return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]
    ps = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
    return ps.stdout.split()


def is_alive(pid: int) -> bool:
    """Whether ``pid`` still runs; reaps it first if it is our exited child (no zombie)."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass  # not our child (the usual case: started by an earlier command)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_pid(pid_file: Path) -> int | None:
    """The PID in ``pid_file``, or None when there is none or it is not a number."""
    try:
        return int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def tail_text(text: str, lines: int) -> str:
    """The last ``lines`` lines of ``text``, for error messages."""
    return "\n".join(text.strip().splitlines()[-lines:])


def tail_file(path: Path, lines: int) -> str:
    """The last ``lines`` lines of the file at ``path`` ("" when missing or empty)."""
    try:
        return tail_text(path.read_text(errors="replace"), lines)
    except FileNotFoundError:
        return ""
