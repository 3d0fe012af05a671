"""Every command the README shows exists as written: make targets, modules and their flags,
`mlflow run` entry points and parameters. (Running them is the quick start's job,
tests/project/test_quickstart.py; this only checks that none of them is stale.)"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex

import pytest
import yaml

from pipelines.config import PROJECT_ROOT, Settings

README = (PROJECT_ROOT / "README.md").read_text()
MAKE_TARGETS = set(re.findall(r"^([a-z][\w-]*):", (PROJECT_ROOT / "Makefile").read_text(), re.M))
ENTRY_POINTS = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())["entry_points"]
ENV_MANAGERS = {"local", "uv", "virtualenv", "conda"}


def code_block_commands() -> list[list[str]]:
    """Each command line of the README's bash blocks, split as the shell would, comments off."""
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [argv for line in lines if (argv := shlex.split(line, comments=True))]


def commands(program: str) -> list[list[str]]:
    return [argv for argv in code_block_commands() if argv[0] == program]


def test_every_make_target_the_readme_names_exists() -> None:
    named = set(re.findall(r"`make ([a-z][\w-]*)", README))
    named |= {target for argv in commands("make") for target in argv[1:] if "=" not in target}
    assert named, "the README names make targets"
    assert named - MAKE_TARGETS == set()


def test_every_module_the_readme_names_exists() -> None:
    named = set(re.findall(r"python -m ([\w.]+)", README))
    assert {"pipelines.generate", "pipelines.produce", "pipelines.train"} <= named
    assert [m for m in sorted(named) if importlib.util.find_spec(m) is None] == []


@pytest.mark.parametrize("argv", commands("python"), ids=shlex.join)
def test_python_commands_parse(argv: list[str]) -> None:
    assert argv[1] == "-m"
    module = importlib.import_module(argv[2])
    if argv[2] == "serving":  # a package: `python -m` runs its __main__, whose flags are its own
        importlib.import_module("serving.__main__").parser().parse_args(argv[3:])
    elif hasattr(module, "parser"):
        module.parser(Settings()).parse_args(argv[3:])  # SystemExit on an unknown flag
    else:
        assert argv[2] == "pipelines.load" and len(argv) == 4  # one PATH argument


@pytest.mark.parametrize("argv", commands("mlflow"), ids=shlex.join)
def test_mlflow_run_commands_name_real_entry_points_and_parameters(argv: list[str]) -> None:
    assert argv[:3] == ["mlflow", "run", "."]
    options = list(zip(argv[3::2], argv[4::2], strict=True))  # flag, value
    entry = dict(options)["-e"]
    assert entry in ENTRY_POINTS
    assert dict(options).get("--env-manager") in ENV_MANAGERS
    parameters = [value.split("=")[0] for flag, value in options if flag == "-P"]
    assert set(parameters) <= set(ENTRY_POINTS[entry]["parameters"])
