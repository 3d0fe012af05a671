"""Logs to stderr and to a size-rotated file, shared safely by all worker processes.

The standard RotatingFileHandler assumes one process: with several workers each would rotate on
its own and keep writing into files the others renamed. Here a worker reopens the log when
another has rotated it (same path, new inode), and rotation happens under an exclusive `flock`
on a lock file beside the log, after checking again that nobody rotated first. Ordinary writes
take no lock (the file is opened for appending) and format the record once: the access log
writes a line per request, so this is on the hot path.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from logging.handlers import RotatingFileHandler
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


class SharedRotatingFileHandler(RotatingFileHandler):
    """A RotatingFileHandler that several processes can write and rotate together."""

    def __init__(self, filename: Path, max_bytes: int, backups: int) -> None:
        super().__init__(filename, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._lock_path = f"{filename}.lock"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            if self.stream is None:
                self.stream = self._open()
            if self._full(self._current_size(), line):
                with open(self._lock_path, "a") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)  # released on close
                    if self._full(self._current_size(), line):
                        self.doRollover()
            self.stream.write(line)
            self.stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _full(self, size: int, line: str) -> bool:
        return self.maxBytes > 0 and size + len(line) >= self.maxBytes

    def _current_size(self) -> int:
        """The size of the log file, reopened first if another process rotated it (same path,
        new inode). Two system calls: this runs for every access line."""
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


def configure(level: str, log_file: Path | None, max_bytes: int, backups: int) -> logging.Logger:
    """Set up the `serving` logger (idempotent: replaces handlers from an earlier call).

    Everything goes to stderr and, if `log_file`, to the file; the access lines (one per request,
    `serving.access`) go to the file only when there is one, as writing each twice cost about a
    tenth of a prediction's CPU."""
    logger = logging.getLogger("serving")
    access = logging.getLogger("serving.access")
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
    if log_file is not None:
        access.addHandler(handlers[-1])
    return logger
