"""The words the report and the console share (standard library only: cheap to load)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["OUTCOMES", "SYMBOLS", "ClaimRow", "RenderedFigure", "grid_cell"]

OUTCOMES = ("supported", "refuted", "inconclusive", "known", "unexpected", "error")
"""What a claim can end as (:mod:`codi_fixtures.plugin.outcomes` says how each arises)."""
SYMBOLS = {
    "supported": "S",
    "refuted": "R",
    "inconclusive": "?",
    "known": "K",
    "unexpected": "U",
    "error": "E",
}
"""One letter per outcome: the console grids and the report's grids."""


def grid_cell(values: tuple[str, ...]) -> tuple[str, str]:
    """A claim's cell in its function's verdict grid: (column, row).

    The column is the first parameter (thought, layer role); the row joins the others
    (``mean``; ``1-L2`` for step 1 at layer 2). The console and the report both use it.
    """
    return (values[0] if values else "", "-".join(values[1:]))


@dataclass(frozen=True)
class ClaimRow:
    """One verdict as the controller saw it."""

    nodeid: str
    outcome: str  # one of OUTCOMES
    tier: str
    label: str
    message: str
    stats: Mapping[str, object]
    params: Mapping[str, object] = field(default_factory=dict)  # thought, kind, role, ...
    hypothesis: str = ""  # the claim function's one-line docstring
    analyses: tuple[str, ...] = ()  # the analyses its codi_analyses mark names (() = any)


class RenderedFigure(NamedTuple):
    """A figure as the report embeds it."""

    png_base64: str
    caption: str
    analysis: str  # the analysis that drew it (its claims link here)
    anchor: str  # the element id: the figure opens full size at #anchor
