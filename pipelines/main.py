"""The whole path as one MLflow project run: generate if missing -> produce -> consume -> train.

    mlflow run . -e main --env-manager local [-P data=path/to/Online Retail.xlsx] [-P rows=N]

As in MLflow's examples/multistep_workflow, each step is its own entry point of MLproject, run
here as a child of this run, so the UI shows what every step did and how long it took.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import mlflow

from pipelines import cli
from pipelines.config import DEFAULT_WINDOWS, PROJECT_ROOT, Settings
from pipelines.data.generator import DEFAULT_ROWS


def run_step(entry_point: str, parameters: dict[str, object]) -> None:
    print(f"== {entry_point}: {parameters}", flush=True)
    started = time.perf_counter()
    mlflow.projects.run(  # synchronous: raises ExecutionException if the step fails
        str(PROJECT_ROOT),
        entry_point=entry_point,
        parameters={name: str(value) for name, value in parameters.items()},
        env_manager="local",
        synchronous=True,
    )
    print(f"== {entry_point} done in {time.perf_counter() - started:.1f} s", flush=True)


def run_all(data: str, rows: int, windows: int, mode: str, settings: Settings) -> None:
    dataset = Path(data) if data else settings.dataset
    if not dataset.exists():
        if data:
            raise FileNotFoundError(f"data={data} does not exist")
        run_step("generate", {"rows": rows, "output": dataset})
    run_step("produce", {"input": dataset})
    run_step("consume", {"windows": windows, "output-dir": settings.windows_dir})
    run_step("train", {"windows-dir": settings.windows_dir, "windows": windows, "mode": mode})


def parser(settings: Settings) -> argparse.ArgumentParser:
    """The CLI; tests/project/test_project_files.py checks its defaults against MLproject's."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.main", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--data", default="", help="a UCI Online Retail file; default: generate")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="rows to generate")
    parser.add_argument("--windows", type=int, default=DEFAULT_WINDOWS)
    parser.add_argument("--mode", choices=("cumulative", "tumbling"), default="cumulative")
    return parser


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_env()
    args = parser(settings).parse_args(argv)
    with mlflow.start_run(run_name="main"):
        run_all(args.data, args.rows, args.windows, args.mode, settings)
    return 0


if __name__ == "__main__":
    cli.run(main)
