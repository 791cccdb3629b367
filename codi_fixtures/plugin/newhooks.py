"""Hooks the ``codi`` plugin adds to pytest (specifications; implement them in a conftest.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from codi_fixtures.analyses.base import Analysis


@pytest.hookspec
def pytest_codi_analyses(config: pytest.Config) -> list[Analysis]:  # type: ignore[empty-body]
    """Return analyses to run besides the built-in RQ1 and RQ2 (README: "Adding an analysis").

    Every implementation's list is used, in plugin order. Their requirements join the study's
    (one cached study per tier serves all), their statistics are ``analysis.of(name)`` in a
    claim, and their figures go into the report.
    """
