"""The shared views of a study: importance, attention, finite rows (no model, no torch).

Importance of thought ``t`` for problem ``i`` is ``delta log p`` of the gold
answer (clean minus ablated, teacher-forced) under one ablation kind; attention
is the ``<eot>`` query's attention to thought ``t`` at layer ``L``, averaged
over heads. Problems whose clean or ablated run met NaN/inf are excluded and
listed, never averaged in silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np

from codi_fixtures.config import Settings
from codi_fixtures.model.architecture import LayerRoles, layer_roles
from codi_fixtures.stats import (
    SESOI_ACCURACY,
    SESOI_LOGP,
    SESOI_R,
    DegenerateData,
    Rq2Tests,
    StatResult,
    inconclusive,
    rq2_tests,
)
from codi_fixtures.study.results import StudyResults

__all__ = ["StudyView", "guarded"]

_T = TypeVar("_T")
_V = TypeVar("_V", bound="StudyView")


def guarded(compute: Callable[[], StatResult], n: int, alternative: str) -> StatResult:
    """Run a test; too little or degenerate data becomes an inconclusive result.

    Only :class:`DegenerateData` does: any other exception (a shape mismatch, a bad
    argument) is a bug in the analysis and propagates, so the claim is an error.
    """
    try:
        return compute()
    except DegenerateData as err:
        result = inconclusive(str(err), n, alternative)
        return replace(result, verdict="inconclusive", verdict_reason=str(err))


@dataclass
class StudyView:
    """The basic views of one study that every analysis shares (importance, attention, ...).

    Results of analyses are memoised here (:meth:`memoised`), so the object is read-only once
    built: every claim and figure of a tier reads the same numbers.
    """

    results: StudyResults
    layers: LayerRoles
    importance_kind: str = "mean"
    alpha: float = 0.05
    seed: int = 0
    min_correct: int = 3
    sesoi_logp: float = SESOI_LOGP
    sesoi_accuracy: float = SESOI_ACCURACY
    sesoi_r: float = SESOI_R
    n_boot: int = 4999
    n_perm: int = 5000
    steps: tuple[int, ...] = (1, 2, 3)
    """Reasoning steps with claims (RQ3, RQ4, routing): 1..``--max-step``."""
    _memo: dict[tuple[object, ...], object] = field(default_factory=dict, repr=False)
    # The selected analyses (codi_fixtures.analyses.base.Analysis; typed Any here because the
    # protocol's methods take this class: base imports view, not the other way round).
    analyses: tuple[Any, ...] = field(default=(), repr=False)
    settings: Settings | None = field(default=None, repr=False)
    """The run's settings when built from them (analyses may read, e.g., the checkpoint path)."""

    @classmethod
    def from_settings(cls: type[_V], results: StudyResults, settings: Settings) -> _V:
        """The analysis a run's settings ask for (layer roles, importance kind, alpha, seed).

        Raises ``ValueError`` when ``settings.layers`` does not fit the model.
        """
        return cls(
            results,
            layers=layer_roles(int(str(results.meta["n_layers"])), settings.layers),
            importance_kind=settings.importance_kind,
            alpha=settings.alpha,
            seed=settings.run.seed,
            min_correct=settings.min_correct,
            sesoi_logp=settings.min_effect_logp,
            sesoi_accuracy=settings.min_effect_acc,
            sesoi_r=settings.min_effect_r,
            steps=tuple(range(1, settings.max_step + 1)),
            settings=settings,
        )

    # --- basic views ----------------------------------------------------------------------
    @property
    def n_thoughts(self) -> int:
        """Number of continuous thoughts T."""
        return int(self.results.attention.shape[-1])

    @property
    def ci_percent(self) -> str:
        """The verdicts' two-sided ``1 - 2 alpha`` CI level as a label: "90%" at alpha 0.05."""
        return f"{100 * (1 - 2 * self.alpha):.3g}%"

    @property
    def kinds(self) -> list[str]:
        """Ablation kinds present in the study (those with single-thought or all-thought rows)."""
        found = (re.fullmatch(r"(?:t\d+|all)-([a-z]+)", c) for c in self.results.conditions)
        return list(dict.fromkeys(m.group(1) for m in found if m is not None))

    def thought_columns(self, kind: str) -> list[int]:
        """Condition columns ``t0-kind .. t{T-1}-kind``."""
        return [self.results.column(f"t{t}-{kind}") for t in range(self.n_thoughts)]

    def finite_rows(self, columns: Sequence[int] | None = None) -> np.ndarray:
        """(N,) bool: problems with no NaN/inf in the clean run or the given conditions."""
        bad = self.results.clean_nonfinite.copy()
        if columns is not None:
            bad |= self.results.nonfinite[:, list(columns)].any(axis=1)
        bad |= ~np.isfinite(self.results.clean_logp)
        return ~bad

    def excluded_problems(self, columns: Sequence[int] | None = None) -> list[str]:
        """Ids of problems with NaN/inf in the clean run or any (given) condition."""
        if columns is None:
            columns = range(len(self.results.conditions))
        keep = self.finite_rows(columns)
        return [pid for pid, ok in zip(self.results.problem_ids, keep, strict=True) if not ok]

    def importance(self, kind: str | None = None) -> np.ndarray:
        """(N, T) delta log p per problem and thought; NaN rows where non-finite."""
        cols = self.thought_columns(kind or self.importance_kind)
        values = self.results.delta_logp[:, cols].astype(np.float64)
        values[~self.finite_rows(cols)] = np.nan
        return values

    def attention(self, layer: int) -> np.ndarray:
        """(N, T) attention from ``<eot>`` to each thought at ``layer``, head-averaged."""
        return self.results.attention[:, layer].mean(axis=1).astype(np.float64)

    def rq2_tests(
        self, attention: np.ndarray, target: np.ndarray, what: str = "importance"
    ) -> Rq2Tests:
        """RQ2's questions on (N, T) arrays with this study's alpha, seed, SESOIs, permutations.

        ``what`` names the predicted quantity (e.g. "the knockout effect") in the reason when
        it is negligible. Not corrected across layers (:func:`codi_fixtures.stats.holm_rq2`).
        """
        return rq2_tests(
            attention,
            target,
            alpha=self.alpha,
            seed=self.seed,
            sesoi_r=self.sesoi_r,
            n_perm=self.n_perm,
            sesoi_target=self.sesoi_logp,
            target=what,
        )

    def inconclusive_reason(self) -> str | None:
        """Why no claim can be judged on this study (too few correct clean answers), or None."""
        n_correct = int(self.results.clean_correct.sum())
        n = len(self.results.problem_ids)
        if n_correct < self.min_correct:
            return (
                f"inconclusive: the clean run answers only {n_correct}/{n} problems correctly "
                f"(need >= {self.min_correct}); ablation effects on a model that cannot solve "
                "the task say nothing about its thoughts"
            )
        return None

    def unjudgeable_reason(self, names: Sequence[str] = ()) -> str | None:
        """Why no claim of the named analyses can be judged on this study, or None.

        The study-wide reason (:meth:`inconclusive_reason`) first, then each selected named
        analysis's optional ``unjudgeable(view)``. One reason for all of them, so the console
        says it once.
        """
        reason = self.inconclusive_reason()
        for analysis in self.analyses:
            if reason is not None:
                break
            check = getattr(analysis, "unjudgeable", None)
            if analysis.name in names and callable(check):
                reason = check(self)
        return reason

    def memoised(self, key: tuple[object, ...], compute: Callable[[], _T]) -> _T:
        """``compute()``, once per key for the lifetime of this object."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]  # type: ignore[return-value]

    # --- the selected analyses --------------------------------------------------------------
    def analysis(self, name: str) -> Any:
        """The selected analysis called ``name``."""
        for analysis in self.analyses:
            if analysis.name == name:
                return analysis
        raise KeyError(
            f"no analysis {name!r} is selected; selected: {[a.name for a in self.analyses]}"
        )

    def of(self, name: str) -> Any:
        """The statistics of analysis ``name`` (its ``compute``, once per study)."""
        analysis = self.analysis(name)
        return self.memoised(("analysis", name), lambda: analysis.compute(self))

    def figures(self) -> list[Any]:
        """Every selected analysis's report figures, in selection order."""
        return [spec for analysis in self.analyses for spec in analysis.figures(self)]
