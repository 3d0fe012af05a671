"""Deterministic crash points, for the crash tests only (tests/service/test_crash.py).

With STREAM_FAIL_AT=<point>:<window> (e.g. `logged:2`) the service kills itself with SIGKILL,
no cleanup, when it reaches that point of that window. The points, in the order a window meets them:

- `fit`: the model is fitted, nothing is logged yet;
- `logged`: the run is finished, no version registered;
- `registered`: the version is registered (with its gate verdict), the aliases have not moved;
- `aliases`: the first alias of the window's move has changed, the others not yet.
"""

from __future__ import annotations

import os
import signal

FAIL_AT = "STREAM_FAIL_AT"
POINTS = ("fit", "logged", "registered", "aliases")


def check_fail_at() -> None:
    """Refuse a misspelt STREAM_FAIL_AT at start rather than never crashing."""
    value = os.environ.get(FAIL_AT, "")
    point, _, window = value.partition(":")
    if value and (point not in POINTS or not window.isdigit()):
        raise ValueError(
            f"{FAIL_AT} must be <point>:<window> with point in {POINTS}, got {value!r}"
        )


def crash_point(point: str, window: int) -> None:
    """Kill this process (SIGKILL) if STREAM_FAIL_AT names this point of this window."""
    if os.environ.get(FAIL_AT) == f"{point}:{window}":
        os.kill(os.getpid(), signal.SIGKILL)
