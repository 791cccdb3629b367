"""Names of the user properties that carry a claim's data across the xdist boundary."""

from __future__ import annotations

from typing import Any

__all__ = ["ANALYSES_MARK", "CLAIM_PROPERTY", "STUDY_PROPERTY", "marked_analyses"]

ANALYSES_MARK = "codi_analyses"  # pytest mark: the analyses a claim reads

CLAIM_PROPERTY = "codi_claim"  # JSON: label, tier, stats, context, message (claims.Claim)
STUDY_PROPERTY = "codi_study"  # JSON: tier, study fingerprint, analyses computed


def marked_analyses(node: Any) -> list[str]:
    """The analyses a test item's ``codi_analyses`` marks name (empty when it has none)."""
    return [str(name) for mark in node.iter_markers(ANALYSES_MARK) for name in mark.args]
