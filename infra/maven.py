"""Jars from Maven Central: `mvn dependency:copy-dependencies` on a pom that is only a dependency
list, into a git-ignored folder beside it. Kafka's broker (infra/kafka_runtime.py) and Spark's
Kafka connector (infra/spark_kafka.py) come this way; the folder is fetched again whenever its
pom changes, and used as it is otherwise, so nothing is downloaded after the first time.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from infra.errors import BrokerError
from infra.processes import tail_text

# Written into the jars' folder after a successful fetch: the pom's digest, so editing the pom
# refetches.
FETCH_STAMP = ".pom.sha256"


def is_fetched(pom: Path, lib_dir: Path, expected_jar: str) -> bool:
    """Whether `lib_dir` holds the jars of this very pom, `expected_jar` (a glob) among them."""
    stamp = lib_dir / FETCH_STAMP
    return (
        any(lib_dir.glob(expected_jar))
        and stamp.is_file()
        and stamp.read_text().strip() == hashlib.sha256(pom.read_bytes()).hexdigest()
    )


def fetch_jars(pom: Path, lib_dir: Path, expected_jar: str, what: str, instead: str = "") -> Path:
    """Fill `lib_dir` with the runtime dependencies `pom` lists, unless it already holds them;
    BrokerError naming `what` if Maven is missing (saying `instead`, what else would do) or
    fails."""
    if is_fetched(pom, lib_dir, expected_jar):
        return lib_dir
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            f"Maven (mvn) is not on PATH: install Maven 3.8+ to fetch {what}{instead}"
        )
    print(f"fetching {what} through Maven into {lib_dir} ...", flush=True)
    lib_dir.mkdir(parents=True, exist_ok=True)
    for old_jar in lib_dir.glob("*.jar"):  # jars of an older pom must not linger on a classpath
        old_jar.unlink()
    command = [
        mvn,
        "-q",
        "-B",
        "-Dstyle.color=never",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={lib_dir}",
        "-DincludeScope=runtime",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not any(lib_dir.glob(expected_jar)):
        output = tail_text(result.stdout + result.stderr, 30)
        raise BrokerError(f"Maven could not fetch {what} (exit {result.returncode}):\n{output}")
    (lib_dir / FETCH_STAMP).write_text(hashlib.sha256(pom.read_bytes()).hexdigest() + "\n")
    return lib_dir
