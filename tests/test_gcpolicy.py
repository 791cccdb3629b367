"""The collector policy: only the outermost pytest session of a process freezes objects."""

from __future__ import annotations

import gc

import pytest

from codi_fixtures.plugin import gcpolicy


def test_a_nested_session_freezes_nothing() -> None:
    """A session started inside this test run is nested, as pytester's in-process runs are."""
    before = gc.get_freeze_count()
    gcpolicy.session_started()
    try:
        gcpolicy.long_lived_ready()
        assert gc.get_freeze_count() == before
    finally:
        gcpolicy.session_ended()
    assert gc.get_freeze_count() == before


def test_the_outermost_session_freezes_and_a_new_one_unfreezes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Long-lived objects are frozen during and after a run; the next run starts unfrozen."""
    monkeypatch.setattr(gcpolicy, "_depth", 0)  # as if no session were running
    gcpolicy.session_started()
    assert gc.get_freeze_count() == 0
    gcpolicy.long_lived_ready()
    assert gc.get_freeze_count() > 0
    gcpolicy.session_ended()
    assert gc.get_freeze_count() > 0
    gcpolicy.session_started()  # pytest.main() again in the same process
    assert gc.get_freeze_count() == 0
    gcpolicy.session_ended()
    gc.unfreeze()
