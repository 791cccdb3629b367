"""Layer 4, the analyses: one module per research question, from cached results to statistics.

An analysis reads :class:`~codi_fixtures.study.runs.StudyResults` (numpy arrays) and returns
statistics built with :mod:`codi_fixtures.stats`; it never runs the model.
"""

from codi_fixtures.analyses.study_analysis import Rq2Test, StudyAnalysis

__all__ = ["Rq2Test", "StudyAnalysis"]
