"""The Kafka runtime: the jars a broker runs from, and the java command line that runs them.

Kafka's jars come from Maven Central through ``infra/kafka/pom.xml`` (infra/maven.py: ``mvn
dependency:copy-dependencies`` into ``infra/kafka/lib``, git-ignored), or from an unpacked Kafka
distribution's ``libs/`` when ``KAFKA_HOME`` is set, in which case Maven is never run.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from infra.errors import BrokerError
from infra.maven import fetch_jars
from pipelines.config import PROJECT_ROOT, Settings

KAFKA_DIR = PROJECT_ROOT / "infra" / "kafka"
POM = KAFKA_DIR / "pom.xml"
LIB_DIR = KAFKA_DIR / "lib"
LOG4J_CONFIG = KAFKA_DIR / "log4j2.yaml"
KAFKA_JAR = "kafka_2.13-*.jar"  # the jar that says a folder holds Kafka


def kafka_version() -> str:
    """The Kafka version pinned in the pom (``<kafka.version>``), for messages."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(POM).getroot().find("m:properties/m:kafka.version", ns)
    return node.text.strip() if node is not None and node.text else "?"


def fetch_runtime(settings: Settings | None = None) -> Path:
    """Return the directory whose jars are the broker's classpath, fetching it if needed.

    With ``KAFKA_HOME`` set, that distribution's ``libs`` is used and Maven is never run. Otherwise
    ``infra/kafka/lib`` is (re)filled by Maven when it lacks the jars or the pom changed since.
    """
    kafka_home = (settings or Settings.from_env()).kafka_home
    if kafka_home:
        libs = kafka_home / "libs"
        if not any(libs.glob(KAFKA_JAR)):
            raise BrokerError(
                f"KAFKA_HOME={kafka_home} has no {libs}/{KAFKA_JAR}; point KAFKA_HOME at an "
                "unpacked Apache Kafka distribution, or unset it to fetch Kafka through Maven"
            )
        return libs
    instead = ", or set KAFKA_HOME to an unpacked Apache Kafka 4.x distribution"
    return fetch_jars(POM, LIB_DIR, KAFKA_JAR, f"Kafka {kafka_version()}", instead)


def java_command(
    java: str, classpath: Path, logs_dir: Path, heap_opts: str, *main_and_args: str
) -> list[str]:
    """The command line running Kafka's class ``main_and_args[0]`` with its jars and our log4j2
    config (logs under ``logs_dir``), tuned for a laptop: G1 with short pauses, and the C1 JIT
    only. C2's compiler threads are most of a broker's start-up: measured here, one node answered
    after 7.0 CPU-seconds instead of 11.7, and a whole 541,909-row replay and consume cost it
    less CPU, not more (C2 never paid back its compiling within a run)."""
    return [
        java,
        *heap_opts.split(),
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:TieredStopAtLevel=1",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={logs_dir}",
        "-cp",
        f"{classpath}{os.sep}*",
        *main_and_args,
    ]
