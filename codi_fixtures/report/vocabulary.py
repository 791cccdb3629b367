"""The words the report and the console share (no imports: cheap for the plugin to load)."""

from __future__ import annotations

__all__ = ["OUTCOMES"]

OUTCOMES = ("supported", "refuted", "inconclusive", "known", "unexpected", "error")
"""What a claim can end as (:mod:`codi_fixtures.plugin.outcomes` says how each arises)."""
