"""How every pipeline step ends when its user presses Ctrl-C: one line and status 130.

A traceback there would read like a crash, and nothing needs cleaning up: windows and their
manifests are written atomically before offsets are committed, MLflow marks an interrupted run
as failed, and aliases move only after every version of a training is registered.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn


def run(main: Callable[[], int | None]) -> NoReturn:
    """Exit with what `main` returns (0 for None), or 130 after Ctrl-C."""
    try:
        code = main()
    except KeyboardInterrupt:
        step = Path(sys.argv[0]).stem
        print(f"\n{step}: interrupted", file=sys.stderr, flush=True)
        code = 130
    sys.exit(code)
