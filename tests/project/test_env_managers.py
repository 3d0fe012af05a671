"""`mlflow run` as MLflow users type it: what each environment manager does with this project.

- no ``--env-manager``: MLproject names conda.yaml, so MLflow picks conda (checked here, not run:
  it needs conda installed);
- ``local``: the current environment (tests/training/test_train.py runs `train` and `main` so);
- ``uv``: a new environment with conda.yaml's Python version and pip section, run here on
  `generate` with 1,000 rows. Packages come from PyPI; the Python 3.11 must already be installed
  (uv is told never to download one, which would need more network than PyPI).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.projects._project_spec import load_project
from mlflow.projects.backend.local import _env_type_to_env_manager

from pipelines.config import PROJECT_ROOT
from pipelines.data.load import load_transactions

# Environments `mlflow run --env-manager uv` creates, kept between test runs of this checkout
# (MLflow reuses one whose requirements are unchanged); `make clean` removes them.
ENV_ROOT = PROJECT_ROOT / "test-artifacts" / "mlflow-envs"
VENV_BIN = Path(sys.executable).parent


def test_mlflow_run_without_env_manager_uses_conda() -> None:
    project = load_project(str(PROJECT_ROOT))

    assert project.env_config_path == str(PROJECT_ROOT / "conda.yaml")
    assert _env_type_to_env_manager(project.env_type) == "conda"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_mlflow_run_with_uv_creates_an_environment_and_runs_generate(tmp_path: Path) -> None:
    path = f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"
    assert shutil.which("uv", path=path), "uv is in the dev extras: run make install"
    store = f"sqlite:///{tmp_path}/mlflow.db"
    output = tmp_path / "generated.csv"
    env = {
        **os.environ,
        "PATH": path,
        "MLFLOW_TRACKING_URI": store,
        "MLFLOW_ENV_ROOT": str(ENV_ROOT),
        "UV_PYTHON_DOWNLOADS": "never",
    }
    command = [
        str(VENV_BIN / "mlflow"), "run", str(PROJECT_ROOT), "-e", "generate",
        "--env-manager", "uv", "--experiment-name", "env-managers",
        "-P", "rows=1000", "-P", f"output={output}",
    ]  # fmt: skip

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1100)

    assert done.returncode == 0, f"{shlex.join(command)}\n{done.stdout}\n{done.stderr[-4000:]}"
    assert len(load_transactions(output).frame) == 1000
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("env-managers").experiment_id])
    assert run.data.tags["mlflow.project.env"] == "uv"
    assert run.data.params == {"rows": "1000", "output": str(output), "seed": "7"}
    # The command ran with the new environment's Python, not this one's.
    assert f"{ENV_ROOT}/mlflow-" in done.stderr
