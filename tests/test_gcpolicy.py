"""The collector policy: only the outermost pytest session of a process freezes objects."""

from __future__ import annotations

import gc
from types import SimpleNamespace
from typing import cast

import pytest

from codi_fixtures.plugin import gcpolicy


def _config() -> pytest.Config:
    """A stand-in for a session's config: the policy reads only its stash."""
    return cast(pytest.Config, SimpleNamespace(stash=pytest.Stash()))


def test_a_nested_session_freezes_nothing() -> None:
    """A session started inside this test run is nested, as pytester's in-process runs are."""
    before = gc.get_freeze_count()
    inner = _config()
    gcpolicy.session_started(inner)
    try:
        gcpolicy.long_lived_ready()
        assert gc.get_freeze_count() == before
    finally:
        gcpolicy.session_ended(inner)
    assert gc.get_freeze_count() == before


def test_the_outermost_session_freezes_and_a_new_one_unfreezes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Long-lived objects are frozen during and after a run; the next run starts unfrozen."""
    monkeypatch.setattr(gcpolicy, "_depth", 0)  # as if no session were running
    first, second = _config(), _config()
    gcpolicy.session_started(first)
    assert gc.get_freeze_count() == 0
    gcpolicy.long_lived_ready()
    assert gc.get_freeze_count() > 0
    gcpolicy.session_ended(first)
    assert gc.get_freeze_count() > 0
    gcpolicy.session_started(second)  # pytest.main() again in the same process
    assert gc.get_freeze_count() == 0
    gcpolicy.session_ended(second)
    assert gcpolicy._depth == 0


def test_a_session_that_was_not_counted_does_not_uncount(monkeypatch: pytest.MonkeyPatch) -> None:
    """If another plugin's configure failed before ours ran, its unconfigure changes nothing."""
    monkeypatch.setattr(gcpolicy, "_depth", 1)
    before = gc.get_freeze_count()
    gcpolicy.session_ended(_config())
    assert gcpolicy._depth == 1
    assert gc.get_freeze_count() == before
