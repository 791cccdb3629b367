"""Names of the user properties that carry a claim's data across the xdist boundary."""

from __future__ import annotations

__all__ = ["CLAIM_PROPERTY", "STUDY_PROPERTY"]

CLAIM_PROPERTY = "codi_claim"  # JSON: label, tier, stats, context, message (claims.Claim)
STUDY_PROPERTY = "codi_study"  # JSON: tier, study fingerprint, analyses computed
