"""gc_frozen: the collector frozen and disabled around captures, restored after, and a heap the
process froze on purpose (the service does after start-up) left frozen."""

from __future__ import annotations

import gc

import pytest

from app.cudagraph.gc_freeze import gc_frozen


@pytest.fixture(autouse=True)
def clean_collector():
    gc.unfreeze()
    gc.enable()
    yield
    gc.unfreeze()
    gc.enable()


def test_block_freezes_and_disables_then_restores() -> None:
    with gc_frozen():
        assert not gc.isenabled() and gc.get_freeze_count() > 0
        with gc_frozen():  # nested: one freeze, restored after the outermost
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_a_heap_frozen_before_stays_frozen() -> None:
    gc.freeze()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    kept = [[i] for i in range(10)]  # containers the collector tracks, made after the freeze
    with gc_frozen():
        assert not gc.isenabled()
    assert gc.isenabled()
    assert gc.get_freeze_count() >= frozen + len(kept)


def test_disabled_collector_stays_disabled() -> None:
    gc.disable()
    with gc_frozen():
        pass
    assert not gc.isenabled() and gc.get_freeze_count() == 0


def test_not_enabled_is_a_no_op() -> None:
    with gc_frozen(enabled=False):
        assert gc.isenabled() and gc.get_freeze_count() == 0
