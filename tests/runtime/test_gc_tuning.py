"""GC tuning after start-up: the start-up heap is frozen and the thresholds are the settings'."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from phiserve.runtime.gc_tuning import tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    """This test changes interpreter-wide state: put it back for the rest of the session."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tune_gc_freezes_what_lives_and_sets_the_thresholds(restore_gc: None) -> None:
    survivor = [object() for _ in range(10)]
    tune_gc((12_345, 7, 3))
    assert gc.get_threshold() == (12_345, 7, 3)
    assert gc.get_freeze_count() > len(survivor)  # the test process' heap, this list included
    # Frozen objects sit in the permanent generation, which no collection walks.
    assert all(o is not survivor for o in gc.get_objects())
    assert gc.is_tracked(survivor)
