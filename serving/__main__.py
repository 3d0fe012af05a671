"""`python -m serving`: the model server (granian, see serving.server), on 127.0.0.1:5000 unless
told otherwise.

Every flag is a setting of serving.settings.ServingSettings, with its default and variable there;
a flag overrides the variable by setting it, so granian's main process and its workers read one
configuration.
"""

from __future__ import annotations

import argparse

from serving.settings import ServingSettings


def parser() -> argparse.ArgumentParser:
    """The CLI: one flag per ServingSettings field (tests/project/test_readme.py parses it)."""
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    ServingSettings.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    ServingSettings.export_arguments(parser().parse_args(argv))

    from serving.server import run

    run(ServingSettings.from_env())


if __name__ == "__main__":
    main()
