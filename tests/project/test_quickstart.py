"""The README's quick start as a new user types it: a fresh clone, `make demo`, again (on a file of
the user's, `DATA=`), `make stop`, then a third `make demo` stopped with Ctrl-C.

Nothing is shared with the rest of the suite: the clone installs its own venv, fetches Kafka
through Maven into its own tree, starts its own broker on free ports, keeps its own MLflow store
and serves on a free port. Only HEAD is cloned, so uncommitted changes are not what runs here.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from infra.kafka_broker import cluster_answers, running_cluster
from infra.ports import free_port, free_port_pair
from pipelines.config import PROJECT_ROOT
from pipelines.contract import EXAMPLE_RECORD

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

ALIASES = ("model1", "model2", "model3")
SECOND_DEMO_ROWS = 60_000
# What a first `make demo` used to print between its stages: pip's and setuptools' install
# output, Spark's and MLflow's start-up lines. They belong in logs/, not on the terminal.
NOISE = (
    "Successfully installed",
    "Your hostname",
    "NativeCodeLoader",
    "netlib",
    "INFO mlflow",
    "log4j",
)
# Settings a developer's shell may carry that would point the clone at someone else's services.
INHERITED = ("KAFKA_", "MLFLOW_", "SERVING_", "SPARK_", "PYSPARK_")


def _clean_env(kafka_port: int, serving_port: int) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key == "KAFKA_HOME" or not key.startswith(INHERITED)
    }
    for key in ("DATA", "VERBOSE", "VIRTUAL_ENV", "PYTHONPATH", "MAKEFLAGS", "MAKELEVEL"):
        env.pop(key, None)
    env["KAFKA_PORT"] = str(kafka_port)
    env["SERVING_PORT"] = str(serving_port)
    return env


def _make(clone: Path, target: str, env: dict[str, str], log: Path) -> str:
    """Run `make <target>` in the clone; its whole output goes to `log` and is returned."""
    result = subprocess.run(
        ["make", target], cwd=clone, env=env, capture_output=True, text=True, timeout=1200
    )
    output = result.stdout + result.stderr
    with log.open("a") as handle:
        handle.write(f"\n$ make {target}\n{output}")
    assert result.returncode == 0, f"make {target} exited {result.returncode}:\n{output[-4000:]}"
    return output


def _answered_versions(output: str) -> dict[str, int]:
    """alias -> version, read from the demo's `POST /predict_cluster_<alias> (version v)` lines."""
    pattern = r'POST /predict_cluster_(model\d) \(version (\d+)\) -> \{"cluster": \d+\}'
    return {alias: int(version) for alias, version in re.findall(pattern, output)}


def _ask(serving_port: int, alias: str) -> requests.Response:
    return requests.post(
        f"http://127.0.0.1:{serving_port}/predict_cluster_{alias}", json=EXAMPLE_RECORD, timeout=10
    )


def _interrupt_demo(clone: Path, env: dict[str, str], after: str, log: Path) -> str:
    """Run `make demo`, press Ctrl-C a few seconds after the line `after`; return the output.

    Ctrl-C at a terminal sends SIGINT to the whole foreground process group: make, the demo and
    whatever step it is running (here `mlflow run` and Spark's JVM) all receive it.
    """
    demo = subprocess.Popen(
        ["make", "demo"],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert demo.stdout is not None
    lines = []
    for line in demo.stdout:
        lines.append(line)
        if line.startswith(after):
            time.sleep(8)  # into the step, with its processes running
            os.killpg(demo.pid, signal.SIGINT)
            break
    lines.extend(demo.stdout)
    demo.wait(timeout=120)
    output = "".join(lines)
    with log.open("a") as handle:
        handle.write(f"\n$ make demo   (Ctrl-C after {after!r})\n{output}")
    return output


def _processes_of(clone: Path) -> list[str]:
    """Live processes running from the clone or naming it on their command line."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if cmdline and (str(clone) in cmdline or cwd.startswith(str(clone))):
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def _wait_until_gone(clone: Path, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := _processes_of(clone)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    if not (PROJECT_ROOT / ".git").exists():
        pytest.skip(f"{PROJECT_ROOT} is not a git checkout: there is nothing to clone")
    target = tmp_path / "customer-segmentation"
    subprocess.run(["git", "clone", "--quiet", str(PROJECT_ROOT), str(target)], check=True)
    return target


def test_quick_start_from_a_fresh_clone(clone: Path, tmp_path: Path) -> None:
    kafka_port, serving_port = free_port_pair(), free_port()
    env = _clean_env(kafka_port, serving_port)
    log = tmp_path / "quickstart.log"
    try:
        first = _make(clone, "demo", env, log)
        assert first.count("    done in ") == 7, "every stage reports its duration"
        assert f"starting Kafka: node 1 on 127.0.0.1:{kafka_port}" in first
        assert _answered_versions(first) == {"model1": 1, "model2": 2, "model3": 3}, first[-3000:]
        assert [noise for noise in NOISE if noise in first] == [], first
        assert "Successfully installed" in (clone / "logs" / "install.log").read_text()
        assert "=== Running command" in (clone / "logs" / "demo" / "train.log").read_text()

        # The server the demo left running answers each endpoint over real HTTP, as the seed did.
        for version, alias in enumerate(ALIASES, start=1):
            response = _ask(serving_port, alias)
            assert response.status_code == 200, response.text
            assert response.headers["X-Model-Version"] == str(version)
            assert re.fullmatch(r'\{"cluster": \d+\}', response.text), response.text

        # Again, on a file of the user's (DATA=, the head of the first one): the next three
        # windows become versions 4-6 and the running server follows.
        head = tmp_path / "retail-head.csv"
        with (clone / "data" / "online_retail.csv").open() as full, head.open("w") as out:
            out.writelines(itertools.islice(full, SECOND_DEMO_ROWS + 1))  # and the header
        second = _make(clone, "demo", env | {"DATA": str(head)}, log)
        assert f"using {head}" in second
        assert "server already running" in second
        assert "reloaded by 2 workers; still pending: []" in second
        assert _answered_versions(second) == {"model1": 4, "model2": 5, "model3": 6}, second[-3000:]
        for version, alias in enumerate(ALIASES, start=4):
            assert _ask(serving_port, alias).headers["X-Model-Version"] == str(version)

        # `make stop` ends the server and the broker the demo started.
        _make(clone, "stop", env, log)
        with pytest.raises(requests.ConnectionError):
            _ask(serving_port, "model1")
        assert running_cluster(clone / ".kafka") is None
        assert not cluster_answers(f"127.0.0.1:{kafka_port}", timeout=2)
        assert _wait_until_gone(clone) == []

        # Ctrl-C during training stops everything that run started: the broker, mlflow, Spark.
        third = _interrupt_demo(clone, env, "==> train and register", log)
        assert "interrupted: stopping what this run started" in third, third[-3000:]
        assert "Traceback" not in third, third[-3000:]
        assert running_cluster(clone / ".kafka") is None
        assert _wait_until_gone(clone) == []
    finally:
        # Whatever failed above, stop what the clone started (each by its own PID file).
        subprocess.run(["make", "stop"], cwd=clone, env=env, capture_output=True, timeout=120)
        subprocess.run(["make", "kafka-down"], cwd=clone, env=env, capture_output=True, timeout=120)
        artifacts = PROJECT_ROOT / "test-artifacts" / "quickstart"
        artifacts.mkdir(parents=True, exist_ok=True)
        if log.exists():
            shutil.copy(log, artifacts / log.name)
