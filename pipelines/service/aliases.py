"""Which versions the aliases model1..model3 point at in continuous mode, and moving them there.

The rule (docs/architecture.md, contract 3): the three most recent versions that passed the
quality gate, `model3` the newest, in the order a batch training gives them. With fewer accepted
versions the first aliases are set and the others stay unset. The aliases are always recomputed
from the registry's accepted versions, so a move cut short by a crash is finished by the next one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mlflow import MlflowClient

from pipelines.config import DEFAULT_WINDOWS
from pipelines.training import registry

ALIASES = tuple(registry.alias_for(position) for position in range(1, DEFAULT_WINDOWS + 1))


def alias_targets(accepted: Sequence[int]) -> dict[str, int | None]:
    """Every alias and the version it should point at (None: unset), given the accepted version
    numbers in registration order."""
    newest = sorted(accepted)[-len(ALIASES) :]
    return {alias: (newest[i] if i < len(newest) else None) for i, alias in enumerate(ALIASES)}


def move_aliases(
    client: MlflowClient,
    name: str,
    targets: dict[str, int | None],
    after_first_change: Callable[[], None] = lambda: None,
) -> None:
    """Set (or delete) only the aliases that differ from `targets`; `after_first_change` runs once
    the first has moved (the crash tests stop the process there)."""
    current = {alias: int(version) for alias, version in _aliases(client, name).items()}
    changed = False
    for alias, version in targets.items():
        if current.get(alias) == version:
            continue
        if version is None:
            client.delete_registered_model_alias(name, alias)
        else:
            client.set_registered_model_alias(name, alias, str(version))
        if not changed:
            changed = True
            after_first_change()


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return dict(client.get_registered_model(name).aliases)
