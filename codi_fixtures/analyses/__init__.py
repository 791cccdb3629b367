"""Layer 4, the analyses: one module per research question, from cached results to statistics.

The extension point is :class:`~codi_fixtures.analyses.base.Analysis` (requirements,
statistics, figures). An analysis reads :class:`~codi_fixtures.study.results.StudyResults`
(numpy arrays) and returns statistics built with :mod:`codi_fixtures.stats`; it never runs the
model. The building blocks of requirements are re-exported here.
"""

from codi_fixtures.analyses.base import Analysis, Evidence, FigureSpec
from codi_fixtures.analyses.study_analysis import (
    BUILTIN_ANALYSES,
    Rq2Test,
    StudyAnalysis,
    requirements_of,
)
from codi_fixtures.analyses.view import StudyView
from codi_fixtures.study.conditions import (
    Ablation,
    AttentionReadout,
    Dimensions,
    EmbeddingSite,
    HiddenReadout,
    Requirements,
    ResidualSite,
)

__all__ = [
    "BUILTIN_ANALYSES",
    "Ablation",
    "Analysis",
    "AttentionReadout",
    "Dimensions",
    "EmbeddingSite",
    "Evidence",
    "FigureSpec",
    "HiddenReadout",
    "Requirements",
    "ResidualSite",
    "Rq2Test",
    "StudyAnalysis",
    "StudyView",
    "requirements_of",
]
