"""Ports on 127.0.0.1: is one taken, and a free one (or two consecutive) for a test or benchmark.

The one place the project picks ports: tests, benchmarks and the private brokers of the broker
tests all ask here.
"""

from __future__ import annotations

import errno
import random
import socket
from pathlib import Path

from infra.errors import BrokerError

LOOPBACK = "127.0.0.1"
# Not the `random` module's generator: pytest-randomly seeds that one alike in every test worker
# before each test, so two workers drew the same "random" ports (seen: a test's server and another
# worker's broker on one port). The OS's randomness differs per process.
_CHOOSER = random.SystemRandom()


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
    return free_port_run(1)


def free_port_run(count: int) -> int:
    """A free port P with P+1 .. P+count-1 free too: room for a private Kafka cluster, two ports
    per node (tests).

    Chosen below the kernel's ephemeral range, which it never hands out by itself (a client's
    source port, a bind to port 0): a port picked here and bound a moment later, or freed and
    bound again when a broker restarts, cannot have been taken meanwhile by another process's
    connection, as happened with two test workers.
    """
    first, end = _below_ephemeral()
    for _ in range(200):
        port = _CHOOSER.randrange(first, end - count + 1)
        if not any(port_in_use(port + i) for i in range(count)):
            return port
    raise BrokerError(f"found no {count} consecutive free ports on {LOOPBACK} in {first}-{end}")


def _below_ephemeral() -> tuple[int, int]:
    """[first, end): the 12,000 ports below the ephemeral range (Linux's ip_local_port_range)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    return max(1024, low - 12_000), low


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
