"""The extension point: what an analysis is (one research question, one module).

An analysis declares

(a) what it needs computed: :meth:`Analysis.requirements` returns intervention conditions
    (:class:`~codi_fixtures.study.conditions.Ablation`) and read-outs of the clean run
    (:class:`~codi_fixtures.study.conditions.AttentionReadout`,
    :class:`~codi_fixtures.study.conditions.HiddenReadout`); the runner computes the union of
    every selected analysis's requirements in shared batched passes and caches it;
(b) how it turns the cached results into statistics: :meth:`Analysis.compute` (numpy / scipy
    through :mod:`codi_fixtures.stats`; no model, no torch), memoised per study;
(c) its figures: :meth:`Analysis.figures`, drawn into the report; optionally, what its
    settings switch off, in words (``left_out(settings) -> list[str]``, listed in the report),
    and numbers for ``summary_statistics.json``: a ``summary(view) -> Mapping`` method (under
    ``analyses.<name>``; values JSON-able or numpy arrays); and why *none* of its claims can
    be judged on a study (``unjudgeable(view) -> str | None``, e.g. a problem set without
    step values): every claim of the analysis then skips with that one reason, which pytest
    folds into one line of its summary.

Claims reach an analysis's statistics through the ``analysis`` fixture:
``analysis.of("name")``. RQ1 and RQ2 (:mod:`~codi_fixtures.analyses.rq1`,
:mod:`~codi_fixtures.analyses.rq2`) are built this way; a new one is registered from a
``conftest.py`` with the ``pytest_codi_analyses`` hook (README, "Adding an analysis").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from codi_fixtures.config import Settings
from codi_fixtures.stats import StatResult
from codi_fixtures.study.conditions import Dimensions, Requirements

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from codi_fixtures.analyses.view import StudyView

__all__ = ["Analysis", "Evidence", "FigureSpec"]


@dataclass(frozen=True)
class FigureSpec:
    """One figure of the report: its title, a file stem, and a function that draws it."""

    title: str
    name: str  # file stem: figures/<tier>-<name>.png|pdf
    draw: Callable[[], Figure]
    caption: str = ""  # what one point / bar / cell is (the report adds n and the tier)


@dataclass(frozen=True)
class Evidence:
    """What one claim judges: ``claim.judge(evidence)`` in an experiments file.

    An analysis module offers one function per kind of claim that returns this, so a claim
    in ``experiments/`` is a docstring and one call.
    """

    label: str  # the claim in words, shown beside its verdict
    result: StatResult  # a result that carries a verdict (built with a SESOI)
    context: Mapping[str, object] = field(default_factory=dict)  # rows of the stats table
    figure: tuple[str, Callable[[], Figure]] | None = None  # (cache key, draw) for the report
    unjudgeable: str | None = None
    """Why this claim cannot be judged on this study (e.g. its rows were not run), or None: the
    claim skips with this text as it is, so a family of claims sharing it folds into one line."""


@runtime_checkable
class Analysis(Protocol):
    """One research question: requirements, statistics and figures (see the module doc)."""

    name: str
    """A unique id (``rq1``, ``rq2``, ...): ``analysis.of(name)`` returns its statistics."""

    def requirements(self, settings: Settings, dims: Dimensions) -> Requirements:
        """The conditions and read-outs this analysis needs, for these settings and model."""
        ...

    def compute(self, view: StudyView) -> Any:
        """The statistics, from the cached results in ``view.results`` (no model)."""
        ...

    def figures(self, view: StudyView) -> list[FigureSpec]:
        """The figures the report shows for this analysis (may be empty)."""
        ...
