"""What a claim's test can end as, and how the controller reads that from a test report.

supported     the claim passed;
refuted       ``claim.judge`` raised :class:`ClaimNotSupported` (the only exception a known
              outcome, a strict xfail, matches);
inconclusive  skipped (too few problems, degenerate data);
known         a declared known outcome that happened again (xfailed);
unexpected    a known outcome that no longer holds (strict XPASS: the run fails);
error         anything else: a crash in a fixture, the study, the statistics or the figure.

A crash is never a verdict. When a tier's study cannot be computed at all, every claim of that
tier raises :class:`StudyUnavailable` in set-up: one short line each (naming the file with the
full traceback), and one paragraph with the cause at the end of the run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from codi_fixtures.report.vocabulary import OUTCOMES

__all__ = [
    "CRASH_PROPERTY",
    "OUTCOMES",
    "STUDY_ERROR_PROPERTY",
    "VERDICT_PROPERTY",
    "ClaimCrash",
    "ClaimNotSupported",
    "StudyFailure",
    "StudyUnavailable",
    "outcome_of",
]

VERDICT_PROPERTY = "codi_verdict"
STUDY_ERROR_PROPERTY = "codi_study_error"
CRASH_PROPERTY = "codi_claim_crash"


class ClaimNotSupported(pytest.fail.Exception):  # type: ignore[name-defined]
    """The evidence does not support the claim: a FAIL, never a crash."""


class StudyUnavailable(Exception):
    """The study of a tier could not be computed; the claim was not judged."""


@dataclass(frozen=True)
class StudyFailure:
    """Why a tier's study could not be computed (shown once, as one paragraph)."""

    tier: str
    cause: str  # one line: exception type and message
    where: str  # the innermost project frame, "file:line in function"
    log: str  # path of the file holding the full traceback

    def to_json(self) -> str:
        """For the report's user properties (crosses the xdist boundary as text)."""
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> StudyFailure:
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(text))

    def short(self) -> str:
        """The one line each affected claim shows."""
        return (
            f"CODI study for tier {self.tier!r} could not be computed ({self.cause}); "
            f"full traceback: {self.log}"
        )

    def paragraph(self, n_claims: int) -> str:
        """The one readable explanation printed at the end of the run."""
        return (
            f"CODI study failed: the {self.tier} tier's study could not be computed, so none of "
            f"its {n_claims} claims was judged (each is reported as an ERROR, not as a verdict).\n"
            f"  cause: {self.cause}\n  where: {self.where}\n  full traceback: {self.log}"
        )


@dataclass(frozen=True)
class ClaimCrash:
    """A claim whose test raised something other than a verdict (shown once per cause)."""

    cause: str  # one line: exception type and message
    where: str  # the innermost project frame (else the innermost frame), "file:line in function"
    log: str  # path of the file holding the full traceback (written once per cause)

    def to_json(self) -> str:
        """For the report's user properties (crosses the xdist boundary as text)."""
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> ClaimCrash:
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(text))

    def short(self) -> str:
        """The one line each affected claim shows."""
        return f"crashed, not a verdict: {self.cause} (at {self.where}); full traceback: {self.log}"

    def paragraph(self, claims: list[str]) -> str:
        """The one readable explanation printed at the end of the run."""
        first = claims[0] if claims else "?"
        return (
            f"CODI claims crashed: {len(claims)} claim(s) raised the same error, so none of "
            f"them was judged (each is reported as an ERROR, not as a verdict).\n"
            f"  cause: {self.cause}\n  where: {self.where}\n  first: {first}\n"
            f"  full traceback: {self.log}"
        )


def _properties(report: pytest.TestReport) -> Mapping[str, Any]:
    return dict(report.user_properties)


def outcome_of(report: pytest.TestReport) -> str | None:
    """The claim outcome a test report stands for, or None for reports that decide nothing."""
    props = _properties(report)
    if report.when == "setup":
        if report.failed:
            return "error"
        if report.skipped:
            return "known" if hasattr(report, "wasxfail") else "inconclusive"
        return None
    if report.when == "teardown":
        return "error" if report.failed else None
    if report.passed:
        return "supported"
    if report.skipped:
        return "known" if hasattr(report, "wasxfail") else "inconclusive"
    longrepr = str(report.longrepr or "")
    if longrepr.startswith("[XPASS(strict)]"):
        return "unexpected"
    if CRASH_PROPERTY in props:  # a crash wins over any verdict property set before it
        return "error"
    return "refuted" if props.get(VERDICT_PROPERTY) == "refuted" else "error"
