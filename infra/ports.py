"""Ports on 127.0.0.1: is one taken, and a free one (or two consecutive) for a test or benchmark.

The one place the project picks ports: tests, benchmarks and the private brokers of the broker
tests all ask here.
"""

from __future__ import annotations

import errno
import socket

from infra.errors import BrokerError

LOOPBACK = "127.0.0.1"


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """Whether a listener already holds ``host:port`` (SO_REUSEADDR, as the JVM binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (for tests and benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def free_port_run(count: int) -> int:
    """A free port P with P+1 .. P+count-1 free too: room for a private Kafka cluster, two ports
    per node (tests)."""
    for _ in range(50):
        port = free_port()
        if port + count - 1 <= 65535 and not any(port_in_use(port + i) for i in range(1, count)):
            return port
    raise BrokerError(f"found no {count} consecutive free ports on {LOOPBACK}")


def free_port_pair() -> int:
    """A free port P with P+1 free too: room for a private broker and its controller (tests)."""
    return free_port_run(2)


def accepts_tcp(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts a TCP connection at ``host:port`` now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
