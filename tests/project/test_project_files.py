"""The MLflow project files agree with pyproject.toml and with the CLIs they call."""

from __future__ import annotations

import importlib
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from mlflow.projects._project_spec import load_project

from pipelines.config import PROJECT_ROOT, Settings
from pipelines.evaluate import parser as evaluate_parser
from pipelines.train import parser as train_parser

ENTRY_POINTS = {"generate", "produce", "consume", "train", "stream", "evaluate", "main"}
MLFLOW_TYPES = {"string", "float", "int", "path", "uri"}


def pyproject_dependencies() -> list[str]:
    with open(PROJECT_ROOT / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)["project"]["dependencies"]


def mlproject() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())


def test_conda_env_is_python_311_jdk_17_and_the_pyproject_dependencies() -> None:
    conda = yaml.safe_load((PROJECT_ROOT / "conda.yaml").read_text())
    plain = [d for d in conda["dependencies"] if isinstance(d, str)]
    (pip,) = [d["pip"] for d in conda["dependencies"] if isinstance(d, dict)]

    assert "python=3.11" in plain and "openjdk=17" in plain and "pip" in plain
    assert pip == pyproject_dependencies()


def test_pyproject_allows_the_python_of_the_environments() -> None:
    with open(PROJECT_ROOT / "pyproject.toml", "rb") as handle:
        requires = tomllib.load(handle)["project"]["requires-python"]
    assert requires == ">=3.11,<3.12"


def test_mlproject_uses_conda_yaml_and_has_the_entry_points() -> None:
    project = load_project(str(PROJECT_ROOT))

    assert mlproject()["conda_env"] == "conda.yaml"
    assert set(project._entry_points) == ENTRY_POINTS


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_every_parameter_is_typed_defaulted_and_used(name: str) -> None:
    entry = mlproject()["entry_points"][name]
    placeholders = set(re.findall(r"\{([^}]+)\}", entry["command"]))

    assert placeholders == set(entry["parameters"])
    for parameter, spec in entry["parameters"].items():
        assert spec["type"] in MLFLOW_TYPES, parameter
        assert "default" in spec, parameter
    module = shlex.split(entry["command"])[2]
    assert (PROJECT_ROOT / (module.replace(".", "/") + ".py")).is_file(), module


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_mlproject_defaults_are_the_cli_defaults(name: str) -> None:
    """`mlflow run . -e <name>` and `python -m pipelines.<name>` without flags do the same."""
    entry = mlproject()["entry_points"][name]
    module = importlib.import_module(shlex.split(entry["command"])[2])
    # The defaults of a shell with no variables set; MLflow runs entry points in the project dir.
    cli = vars(module.parser(Settings()).parse_args([]))

    for parameter, spec in entry["parameters"].items():
        (flag,) = re.findall(rf"(--[\w-]+) \{{{re.escape(parameter)}\}}", entry["command"])
        default = cli[flag.removeprefix("--").replace("-", "_")]
        if isinstance(default, Path):
            assert PROJECT_ROOT / spec["default"] == default, parameter
        else:
            assert (type(spec["default"]), spec["default"]) == (type(default), default), parameter


def test_train_parameters_and_their_types() -> None:
    parameters = mlproject()["entry_points"]["train"]["parameters"]

    assert {name: spec["type"] for name, spec in parameters.items()} == {
        "windows-dir": "path",
        "windows": "int",
        "first-window": "int",
        "mode": "string",
        "span": "int",
        "k": "int",
        "k-min": "int",
        "k-max": "int",
        "min-cluster-share": "float",
        "seed": "int",
        "max-iter": "int",
        "distance-measure": "string",
        "transform": "string",
    }


def test_the_train_command_parses_with_the_train_cli(tmp_path) -> None:
    """MLproject's defaults, substituted as `mlflow run` does, are valid `pipelines.train` flags."""
    entry = load_project(str(PROJECT_ROOT)).get_entry_point("train")
    command = entry.compute_command({"windows-dir": str(tmp_path)}, storage_dir=None)
    argv = shlex.split(command)

    assert argv[:3] == ["python", "-m", "pipelines.train"]
    args = train_parser(Settings()).parse_args(argv[3:])
    assert (args.windows_dir, args.windows, args.mode, args.k) == (tmp_path, 3, "cumulative", 0)
    assert (args.k_min, args.k_max, args.seed, args.max_iter) == (3, 8, 42, 50)
    assert (args.distance_measure, args.first_window) == ("euclidean", 1)
    assert (args.transform, args.min_cluster_share) == ("signed-log1p", 0.02)


def test_the_evaluate_command_parses_with_the_evaluate_cli() -> None:
    """MLproject's evaluate defaults are valid `pipelines.evaluate` flags, the CLI's defaults."""
    entry = load_project(str(PROJECT_ROOT)).get_entry_point("evaluate")
    argv = shlex.split(entry.compute_command({}, storage_dir=None))

    assert argv[:3] == ["python", "-m", "pipelines.evaluate"]
    args = evaluate_parser(Settings()).parse_args(argv[3:])
    defaults = evaluate_parser(Settings()).parse_args(["--input", str(args.input)])
    assert args.input.name == "online_retail.csv" and str(args.output) in ("", ".")
    for name in ("k", "k_min", "k_max", "min_cluster_share", "transform"):
        assert getattr(args, name) == getattr(defaults, name), name


def test_main_defaults_generate_when_no_data_is_given() -> None:
    entry = load_project(str(PROJECT_ROOT)).get_entry_point("main")
    argv = shlex.split(entry.compute_command({}, storage_dir=None))

    assert argv[argv.index("--data") + 1] == ""
    assert argv[argv.index("--windows") + 1] == "3"
    assert argv[argv.index("--mode") + 1] == "cumulative"
