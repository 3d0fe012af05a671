"""Spark's Kafka connector: the jars of Structured Streaming's Kafka source, which pip's pyspark
does not ship, fetched from Maven Central through ``infra/spark-kafka/pom.xml`` (infra/maven.py)
into ``infra/spark-kafka/lib`` (git-ignored), where ``python -m pipelines.consume --engine spark``
finds them. ``make install`` runs this, so the engine never downloads anything itself:

    python -m infra.spark_kafka     # fetch the jars unless they are there for this pom
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from infra.errors import BrokerError
from infra.maven import fetch_jars
from pipelines.config import PROJECT_ROOT, SPARK_KAFKA_CONNECTOR, SPARK_KAFKA_JARS

POM = PROJECT_ROOT / "infra" / "spark-kafka" / "pom.xml"


def connector_version() -> str:
    """The Spark version the pom pins (``<spark.version>``), for messages."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(POM).getroot().find("m:properties/m:spark.version", ns)
    return node.text.strip() if node is not None and node.text else "?"


def fetch_connector() -> Path:
    """The folder of the connector's jars, fetched first if they are missing or the pom changed."""
    what = f"Spark's Kafka connector {connector_version()}"
    return fetch_jars(POM, SPARK_KAFKA_JARS, SPARK_KAFKA_CONNECTOR, what)


def main() -> int:
    try:
        folder = fetch_connector()
    except BrokerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Spark's Kafka connector {connector_version()}: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
