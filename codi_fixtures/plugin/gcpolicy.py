"""The garbage collector's policy in a run: long-lived objects are frozen, not rescanned.

A run holds ~500k long-lived objects (torch, transformers, matplotlib, the model, the
study). Python's full collections rescan all of them: ~0.1 s each, several per run, two
more at pytest's end (its unraisable-exception check) and the interpreter's at exit — on
the bundled model's RQ1 + RQ2 full tier ~1.5 s of a ~10 s run, measured. ``gc.freeze()``
moves every object alive at that moment out of the collector's reach (they are still freed
by reference counting; cyclic garbage that exists at a freeze point is kept until the
process ends or the next session unfreezes); later collections see only newer objects.

The outermost pytest session of a process freezes once its long-lived objects exist
(:func:`long_lived_ready`: after input validation, collection, the model load and the
study) and as it ends (:func:`session_ended`). Sessions nested in it (``pytester``'s
in-process runs) change nothing, and a later session in the same process (``pytest.main``
called again) starts by unfreezing, so no frozen garbage accumulates across runs.
"""

from __future__ import annotations

import gc

import pytest

__all__ = ["long_lived_ready", "session_ended", "session_started"]

_COUNTED = pytest.StashKey[bool]()
_depth = 0
"""How many pytest sessions of this process are configured and not yet unconfigured."""


def session_started(config: pytest.Config) -> None:
    """A session is configured: the outermost one first returns frozen objects to the collector."""
    global _depth
    if _depth == 0:
        gc.unfreeze()
    _depth += 1
    config.stash[_COUNTED] = True


def long_lived_ready() -> None:
    """The study and model are in memory: freeze them (outermost session only)."""
    if _depth == 1:
        gc.freeze()


def session_ended(config: pytest.Config) -> None:
    """A session is unconfigured: the outermost one freezes all, so exit skips the rescans.

    Only a session that :func:`session_started` counted is uncounted (another plugin's
    ``pytest_configure`` may have failed before ours ran).
    """
    global _depth
    if not config.stash.get(_COUNTED, False):
        return
    del config.stash[_COUNTED]
    _depth -= 1
    if _depth == 0:
        gc.freeze()
