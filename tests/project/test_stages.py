"""The demo's stages (infra/stages.py): a command's summary on the terminal, its noise in the log,
and a failure loud, with the end of this run's log."""

from __future__ import annotations

import sys

import pytest

from infra import stages
from infra.stages import Runner, StageFailed

SCRIPT = (
    "import sys; print('summary line'); print('noise line', file=sys.stderr);"
    "sys.exit(int(sys.argv[1]))"
)


@pytest.fixture(autouse=True)
def log_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(stages, "LOG_DIR", tmp_path)
    return tmp_path


def test_stdout_is_shown_and_stderr_only_logged(log_dir, capsys) -> None:
    Runner(verbose=False).run("step", sys.executable, "-c", SCRIPT, "0")

    shown = capsys.readouterr().out
    assert shown == "    summary line\n"
    log = (log_dir / "step.log").read_text()
    assert "summary line" in log and "noise line" in log


def test_verbose_shows_everything(log_dir, capsys) -> None:
    Runner(verbose=True).run("step", sys.executable, "-c", SCRIPT, "0")

    shown = capsys.readouterr().out
    assert "summary line" in shown and "noise line" in shown


def test_a_failure_carries_the_end_of_this_runs_log(log_dir) -> None:
    runner = Runner(verbose=False)
    runner.run("step", sys.executable, "-c", "print('an earlier run')")
    with pytest.raises(StageFailed) as failure:
        runner.run("step", sys.executable, "-c", SCRIPT, "3")

    message = str(failure.value)
    assert "noise line" in message and "exited 3" in message
    assert "an earlier run" not in message
    assert str(log_dir / "step.log") in message
