"""The alias rule of continuous mode: the three newest accepted versions, model3 the newest."""

from __future__ import annotations

from pipelines.service.aliases import ALIASES, alias_targets


def test_the_aliases_are_model1_to_model3() -> None:
    assert ALIASES == ("model1", "model2", "model3")


def test_before_three_accepted_versions_only_the_first_aliases_are_set() -> None:
    assert alias_targets([]) == {"model1": None, "model2": None, "model3": None}
    assert alias_targets([1]) == {"model1": 1, "model2": None, "model3": None}
    assert alias_targets([1, 2]) == {"model1": 1, "model2": 2, "model3": None}


def test_the_three_newest_accepted_versions_in_order() -> None:
    assert alias_targets([1, 2, 3]) == {"model1": 1, "model2": 2, "model3": 3}
    assert alias_targets([1, 2, 3, 4, 5]) == {"model1": 3, "model2": 4, "model3": 5}


def test_rejected_versions_are_skipped_and_the_order_is_the_registrations() -> None:
    """Versions 3 and 5 were rejected: not among the accepted ones handed in."""
    assert alias_targets([6, 1, 4, 2]) == {"model1": 2, "model2": 4, "model3": 6}
