"""The fixtures claims use: ``analysis`` (statistics of the test's tier) and ``claim``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from codi_fixtures.plugin.properties import STUDY_PROPERTY
from codi_fixtures.plugin.session import SESSION_KEY, CodiSession

__all__ = ["analysis", "claim", "codi_model", "codi_session"]


@pytest.fixture(scope="session")
def codi_session(pytestconfig: pytest.Config) -> CodiSession:
    """The shared session object (settings, model, problems, studies). Do not mutate."""
    return pytestconfig.stash[SESSION_KEY]


@pytest.fixture(scope="session")
def codi_model(codi_session: CodiSession) -> Any:
    """The loaded CODI model, shared read-only by every test."""
    return codi_session.model()


@pytest.fixture
def analysis(codi_session: CodiSession, tier: str, request: pytest.FixtureRequest) -> Any:
    """Statistics for this test's tier (read-only); a study that failed is an ERROR here."""
    from codi_fixtures.plugin.outcomes import STUDY_ERROR_PROPERTY, StudyFailure, StudyUnavailable

    result = codi_session.analysis(tier)
    if isinstance(result, StudyFailure):
        request.node.user_properties.append((STUDY_ERROR_PROPERTY, result.to_json()))
        raise StudyUnavailable(result.short())
    study = {
        "tier": tier,
        "fingerprint": result.results.meta["fingerprint"],
        "analyses": [a.name for a in result.analyses],
    }
    request.node.user_properties.append((STUDY_PROPERTY, json.dumps(study)))
    return result


@pytest.fixture
def claim(analysis: Any, tier: str, request: pytest.FixtureRequest, extras: list[Any]) -> Any:
    """Judge a claim: pass / fail / skip, with its figure and stats attached to the report."""
    from codi_fixtures.plugin.claims import Claim

    return Claim(analysis, tier, request.node, extras)
