"""How fresh each served model is: from the moment its window closed to its aliases moving.

The consumer stamps a window's manifest when it closes it (`Manifest.created_at`); the service
marks each step it then takes, logs one line per window an operator reads freshness from (how
long the window waited for the service, and how long fitting, logging and registering it and
moving the aliases took) and records the same as metrics of the window's run, `seconds_<step>`,
beside its other metrics in the MLflow UI. The server's pick-up comes after, within its poll
interval; bench/freshness.py measures the whole way to the server's answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# The steps of one window, in order, as the log line and the metrics name them.
STEPS = ("waited", "fit", "logged", "registered", "aliases")
METRIC_PREFIX = "seconds_"  # + step: the run's metric of how long that step took


@dataclass
class Timeline:
    """One window's steps, each marked (in epoch seconds) when it ends."""

    closed_at: float  # Manifest.closed_at
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, step: str) -> None:
        if step not in STEPS:
            raise ValueError(f"unknown step {step!r}; one of {STEPS}")
        self.marks[step] = time.time()

    def durations(self) -> dict[str, float]:
        """Seconds each marked step took, from the end of the one before (or the close)."""
        durations, before = {}, self.closed_at
        for step in STEPS:
            if step in self.marks:
                durations[step] = self.marks[step] - before
                before = self.marks[step]
        return durations

    def metrics(self) -> dict[str, float]:
        """`durations` as the run's metrics."""
        return {f"{METRIC_PREFIX}{step}": seconds for step, seconds in self.durations().items()}

    def line(self) -> str:
        """E.g. "12.1 s after the window closed: waited 0.3 s, fit 7.2 s, logged 4.1 s, ..."."""
        durations = self.durations()
        parts = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in durations.items())
        return f"{sum(durations.values()):.1f} s after the window closed: {parts}"
