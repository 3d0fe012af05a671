"""How many copies of each partition a cluster keeps, and how many `acks=all` waits for.

Why one rule for the topic the producer creates and for the local cluster's defaults (its internal
topics, a topic a consumer auto-creates): with three replicas and `min.insync.replicas=2`, a write
acknowledged under `acks=all` is on at least two brokers, and one broker may fail without stopping
writes or losing any. A smaller cluster keeps what it can: one node, one replica.
"""

from __future__ import annotations

REPLICAS = 3  # on a cluster of at least this many brokers


def replication(brokers: int) -> tuple[int, int]:
    """``(replication factor, min.insync.replicas)`` for a cluster of ``brokers`` brokers."""
    if brokers < 1:
        raise ValueError(f"a Kafka cluster has at least one broker, not {brokers}")
    replicas = min(brokers, REPLICAS)
    return replicas, max(1, replicas - 1)
