"""Each step of a window is timed from the end of the one before, the first from the close."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pipelines.service import timeline
from pipelines.service.timeline import Timeline


def test_steps_are_timed_one_after_the_other_from_the_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter([105.0, 112.5, 118.0])
    monkeypatch.setattr(timeline, "time", SimpleNamespace(time=lambda: next(clock)))
    steps = Timeline(closed_at=100.0)
    for step in ("waited", "fit", "logged"):
        steps.mark(step)

    assert steps.durations() == {"waited": 5.0, "fit": 7.5, "logged": 5.5}
    assert steps.metrics() == {"seconds_waited": 5.0, "seconds_fit": 7.5, "seconds_logged": 5.5}
    assert steps.line() == "18.0 s after the window closed: waited 5.0 s, fit 7.5 s, logged 5.5 s"
    with pytest.raises(ValueError, match="unknown step 'fitted'"):
        steps.mark("fitted")
