"""The ``analysis`` fixture's object: one study's view plus the selected analyses.

:class:`StudyAnalysis` is what claims receive. ``analysis.of(name)`` returns an analysis's
statistics (computed once); the RQ1 / RQ2 methods (``rq1_logp``, ``rq2``, ...) are shortcuts to
:mod:`~codi_fixtures.analyses.rq1` and :mod:`~codi_fixtures.analyses.rq2`, memoised in the same
view, so a claim, a figure and the JSON summary all read the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from codi_fixtures.analyses import rq1, rq2, rq5, rq6
from codi_fixtures.analyses.base import Analysis
from codi_fixtures.analyses.rq2 import Rq2Test
from codi_fixtures.analyses.view import StudyView
from codi_fixtures.config import Settings
from codi_fixtures.stats import Rq2Tests, StatResult
from codi_fixtures.study.conditions import Dimensions, Requirements
from codi_fixtures.study.results import StudyResults

__all__ = ["BUILTIN_ANALYSES", "Rq2Test", "StudyAnalysis", "requirements_of"]

BUILTIN_ANALYSES: tuple[Analysis, ...] = (rq1.Rq1(), rq2.Rq2(), rq5.Rq5(), rq6.Rq6())
"""The analyses every run selects, in report order; a conftest adds more (plugin hook)."""


def requirements_of(
    analyses: Sequence[Analysis], settings: Settings, dims: Dimensions
) -> Requirements:
    """The union of what ``analyses`` need, in order (what the runner computes)."""
    union = Requirements()
    for analysis in analyses:
        union = union | analysis.requirements(settings, dims)
    return union


@dataclass
class StudyAnalysis(StudyView):
    """Statistics over one study, by analysis; results are memoised (the object is read-only)."""

    analyses: tuple[Analysis, ...] = field(default=BUILTIN_ANALYSES, repr=False)
    """The selected analyses: RQ1 and RQ2 unless the run adds more (``for_run``)."""

    @classmethod
    def for_run(
        cls, results: StudyResults, settings: Settings, analyses: Sequence[Analysis]
    ) -> StudyAnalysis:
        """:meth:`StudyView.from_settings` with the run's selected analyses."""
        view = cls.from_settings(results, settings)
        view.analyses = tuple(analyses)
        return view

    # --- RQ1 (codi_fixtures.analyses.rq1) ---------------------------------------------------
    def rq1_logp(self, kind: str) -> list[StatResult]:
        """Per thought: does ablation lower log p(gold) by more than the SESOI? Holm over T."""
        return rq1.rq1_logp(self, kind)

    def rq1_accuracy(self, kind: str) -> list[StatResult]:
        """Per thought: does ablation lower accuracy by more than the SESOI? Holm over T."""
        return rq1.rq1_accuracy(self, kind)

    def all_thoughts(self, kind: str) -> StatResult:
        """Control: ablating every thought at once lowers accuracy by more than the SESOI."""
        return rq1.all_thoughts(self, kind)

    def last_most_important(self, kind: str) -> StatResult:
        """The last thought's delta log p exceeds every other thought's by more than the SESOI."""
        return rq1.last_most_important(self, kind)

    # --- RQ2 (codi_fixtures.analyses.rq2) ---------------------------------------------------
    def rq2_all(self, difficulty: str | None = None) -> dict[int, Rq2Tests]:
        """Per role layer, the three RQ2 questions; Holm per question (by bin: bins x layers)."""
        return rq2.rq2_all(self, difficulty)

    def rq2(self, test: Rq2Test, difficulty: str | None = None) -> dict[int, StatResult]:
        """Per role layer, one RQ2 question's result (``position``, ``beyond_position``, ...)."""
        return rq2.rq2(self, test, difficulty)

    def per_thought_correlation(self, layer: int) -> list[tuple[float, float]]:
        """Per thought, across problems: Pearson (r, p) of attention vs importance."""
        return rq2.per_thought_correlation(self, layer)

    def head_correlation_map(self) -> np.ndarray:
        """(L, H) pooled Pearson r of per-head attention vs importance."""
        return rq2.head_correlations(self)
