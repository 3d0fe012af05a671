"""Logs to stderr and to a size-rotated file, shared safely by all worker processes.

The standard RotatingFileHandler assumes one process: with several workers each would rotate on
its own and keep writing into files the others renamed. Here a worker reopens the log when
another has rotated it (same path, new inode), and rotation happens under an exclusive `flock`
on a lock file beside the log, after checking again that nobody rotated first. Ordinary writes
take no lock (the file is opened for appending) and one system call besides the write: the size
of the open file. The path is looked up again (has it been rotated?) when the file is full, and
at least every LOOK_EVERY seconds for rotations or deletions by other programs. Another worker
only rotates a full file, so a worker writing to the file just rotated sees it full at once, or
after one shorter line.

The access log writes a line per request, so it is on the hot path: `AccessLog` writes its lines
to the file handler directly, in the same FORMAT, without the LogRecord, caller lookup and
time formatting that `logging` does for each line (a third of the cost of a prediction).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import time
from logging.handlers import RotatingFileHandler
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"

LOOK_EVERY = 1.0  # seconds between two checks that the open log file is still at its path

access_log = logging.getLogger("serving.access")


class SharedRotatingFileHandler(RotatingFileHandler):
    """A RotatingFileHandler that several processes can write and rotate together."""

    def __init__(self, filename: Path, max_bytes: int, backups: int) -> None:
        super().__init__(filename, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._lock_path = f"{filename}.lock"
        self._next_look = 0.0  # time.monotonic() when the path is looked up again

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write(self.format(record) + self.terminator)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def write(self, line: str) -> None:
        """Append one formatted line, rotating first if it would take the file past the limit.
        The caller holds the handler's lock."""
        if self.stream is None:
            self.stream = self._open()
        now = time.monotonic()
        full = self._full(os.fstat(self.stream.fileno()).st_size, line)
        if full or now >= self._next_look:
            self._next_look = now + LOOK_EVERY
            full = self._full(self._current_size(), line)
        if full:
            with open(self._lock_path, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released on close
                if self._full(self._current_size(), line):
                    self.doRollover()
        self.stream.write(line)
        self.stream.flush()

    def _full(self, size: int, line: str) -> bool:
        return self.maxBytes > 0 and size + len(line) >= self.maxBytes

    def _current_size(self) -> int:
        """The size of the log file, reopened first if another process rotated it (same path,
        new inode)."""
        stream = os.fstat(self.stream.fileno())
        try:
            rotated = os.stat(self.baseFilename).st_ino != stream.st_ino
        except FileNotFoundError:
            rotated = True
        if not rotated:
            return stream.st_size  # every write is flushed: nothing is buffered
        self.stream.close()
        self.stream = self._open()
        return os.fstat(self.stream.fileno()).st_size


class AccessLog:
    """Writes `serving.access` lines as `logging` would format them, cheaply.

    The line is FORMAT's, with this process's id: its fixed part is formatted by `logging`
    once per second (so FORMAT stays the one definition) and only the milliseconds and the
    message are put in per line. Without a log file, or with the logger below INFO, the line
    goes through `logging` as any other.
    """

    def __init__(self, handler: SharedRotatingFileHandler | None) -> None:
        self.handler = handler
        self._second = self._pid = -1
        self._head = self._tail = ""

    def __call__(self, message: str) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        if self.handler is None:
            access_log.info("%s", message)
            return
        now = time.time()
        second, pid = int(now), os.getpid()  # a worker forked from a process that logged
        if second != self._second or pid != self._pid:
            self._head, self._tail = self._parts(second)
            self._second, self._pid = second, pid
        line = f"{self._head}{int((now - second) * 1000):03d}{self._tail}{message}\n"
        handler = self.handler
        handler.acquire()
        try:
            handler.write(line)
        except Exception:
            handler.handleError(logging.makeLogRecord({"msg": message}))
        finally:
            handler.release()

    def _parts(self, second: int) -> tuple[str, str]:
        """FORMAT's text around the milliseconds for lines logged in this second (local time,
        like logging's `asctime`, which ends with `,<milliseconds>`)."""
        record = access_log.makeRecord(access_log.name, logging.INFO, "", 0, "", None, None)
        record.created, record.msecs = float(second), 0.0
        head, comma, tail = self.handler.format(record).partition(",000")
        assert comma, f"FORMAT {FORMAT!r} does not start with asctime"
        return head + ",", tail


def configure(level: str, log_file: Path | None, max_bytes: int, backups: int) -> AccessLog:
    """Set up the `serving` logger (idempotent: replaces handlers from an earlier call) and return
    the writer of the access lines.

    Everything goes to stderr and, if `log_file`, to the file; the access lines (one per request,
    `serving.access`) go to the file only when there is one, as writing each twice cost about a
    tenth of a prediction's CPU."""
    logger = logging.getLogger("serving")
    access = access_log
    for each in (logger, access):
        for handler in list(each.handlers):
            each.removeHandler(handler)
            handler.close()
    formatter = logging.Formatter(FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(SharedRotatingFileHandler(log_file, max_bytes, backups))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    access.propagate = log_file is None
    if log_file is None:
        return AccessLog(None)
    access.addHandler(handlers[-1])
    return AccessLog(handlers[-1])
