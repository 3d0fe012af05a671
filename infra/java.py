"""Find the Java that runs Kafka, and check it is new enough (Kafka 4 needs Java 17+)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from infra.errors import BrokerError
from pipelines.config import Settings

MIN_JAVA = 17


def find_java(settings: Settings | None = None) -> str:
    """Return the java executable (``$JAVA_HOME/bin/java`` or PATH), checking it is Java 17+."""
    java_home = (settings or Settings.from_env()).java_home
    java = str(java_home / "bin" / "java") if java_home else shutil.which("java")
    if java is None or not Path(java).is_file():
        where = f"JAVA_HOME={java_home}" if java_home else "not on PATH"
        raise BrokerError(
            f"Java {MIN_JAVA}+ is required to run Kafka but no java was found ({where}); "
            f"install OpenJDK {MIN_JAVA}+"
        )
    result = subprocess.run([java, "-version"], capture_output=True, text=True)
    major = java_major(result.stderr + result.stdout)
    if major is None:
        raise BrokerError(f"could not tell the version of {java}: {result.stderr.strip()!r}")
    if major < MIN_JAVA:
        raise BrokerError(f"Kafka 4 needs Java {MIN_JAVA}+, but {java} is Java {major}")
    return java


def java_major(version_output: str) -> int | None:
    """The major version in ``java -version``'s output: 'openjdk version "17.0.15"' -> 17,
    '"1.8.0_392"' (the pre-9 scheme) -> 8; None when there is no version in it."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major
