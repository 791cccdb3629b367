"""The study's statistics, computed from cached :class:`StudyResults` (no model needed).

Importance of thought ``t`` for problem ``i`` is ``delta log p`` of the gold
answer (clean minus ablated, teacher-forced) under one ablation kind; attention
is the ``<eot>`` query's attention to thought ``t`` at layer ``L``, averaged
over heads. Problems whose clean or ablated run met NaN/inf are excluded and
listed, never averaged in silently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Literal

import numpy as np
from scipy import stats as sps

from codi_fixtures.config import Settings
from codi_fixtures.model.architecture import LayerRoles, layer_roles
from codi_fixtures.stats import (
    Rq2Tests,
    StatResult,
    accuracy_drop_effect,
    apply_holm_verdicts,
    holm,
    holm_rq2,
    inconclusive,
    is_constant,
    mean_effect,
    rq2_tests,
)
from codi_fixtures.stats.equivalence import SESOI_ACCURACY, SESOI_LOGP, SESOI_R, Outcome
from codi_fixtures.study.runs import StudyResults

__all__ = ["Rq2Test", "StudyAnalysis"]

Rq2Test = Literal["position", "beyond_position", "pooled"]
"""RQ2's questions (:func:`codi_fixtures.stats.rq2_tests`); ``pooled`` decides no verdict."""


def _guarded(compute: Callable[[], StatResult], n: int, alternative: str) -> StatResult:
    """Run a test; too little or degenerate data becomes an inconclusive result, not a crash."""
    try:
        return compute()
    except ValueError as err:
        result = inconclusive(str(err), n, alternative)
        return replace(result, verdict="inconclusive", verdict_reason=str(err))


@dataclass
class StudyAnalysis:
    """Statistics over one study; results are memoised (the object is read-only)."""

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
    _memo: dict[tuple[object, ...], object] = field(default_factory=dict, repr=False)

    @classmethod
    def from_settings(cls, results: StudyResults, settings: Settings) -> StudyAnalysis:
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
        )

    # --- basic views ----------------------------------------------------------------------
    @property
    def n_thoughts(self) -> int:
        """Number of continuous thoughts T."""
        return int(self.results.attention.shape[-1])

    @property
    def kinds(self) -> list[str]:
        """Ablation kinds present in the study."""
        return list(dict.fromkeys(c.split("-", 1)[1] for c in self.results.conditions))

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

    def _memoised(self, key: tuple[object, ...], compute: object) -> object:
        if key not in self._memo:
            self._memo[key] = compute()  # type: ignore[operator]
        return self._memo[key]

    # --- RQ1 --------------------------------------------------------------------------------
    def _mean_effect(self, deltas: np.ndarray) -> StatResult:
        return _guarded(
            partial(
                mean_effect,
                deltas,
                sesoi=self.sesoi_logp,
                alpha=self.alpha,
                n_boot=self.n_boot,
                seed=self.seed,
            ),
            int(deltas.size),
            "greater",
        )

    def _accuracy_drop(self, clean: np.ndarray, ablated: np.ndarray) -> StatResult:
        return _guarded(
            partial(
                accuracy_drop_effect, clean, ablated, sesoi=self.sesoi_accuracy, alpha=self.alpha
            ),
            int(clean.size),
            "greater",
        )

    def rq1_logp(self, kind: str) -> list[StatResult]:
        """Per thought: does ablation lower log p(gold) by more than the SESOI? Holm over T."""

        def compute() -> list[StatResult]:
            imp = self.importance(kind)
            keep = ~np.isnan(imp).any(axis=1)
            tests = [self._mean_effect(imp[keep, t]) for t in range(self.n_thoughts)]
            return apply_holm_verdicts(tests, alpha=self.alpha)

        return self._memoised(("rq1_logp", kind), compute)  # type: ignore[return-value]

    def rq1_accuracy(self, kind: str) -> list[StatResult]:
        """Per thought: does ablation lower accuracy by more than the SESOI? Holm over thoughts."""

        def compute() -> list[StatResult]:
            cols = self.thought_columns(kind)
            keep = self.finite_rows(cols)
            clean = self.results.clean_correct[keep]
            tests = [self._accuracy_drop(clean, self.results.correct[keep, c]) for c in cols]
            return apply_holm_verdicts(tests, alpha=self.alpha)

        return self._memoised(("rq1_acc", kind), compute)  # type: ignore[return-value]

    def all_thoughts(self, kind: str) -> StatResult:
        """Control: ablating every thought at once lowers accuracy by more than the SESOI."""

        def compute() -> StatResult:
            col = self.results.column(f"all-{kind}")
            keep = self.finite_rows([col])
            return self._accuracy_drop(
                self.results.clean_correct[keep], self.results.correct[keep, col]
            )

        return self._memoised(("all", kind), compute)  # type: ignore[return-value]

    def last_most_important(self, kind: str) -> StatResult:
        """The last thought's delta log p exceeds every other thought's by more than the SESOI.

        One paired comparison per rival (``imp[last] - imp[t]``, :func:`mean_effect`).
        Supported when every comparison is (intersection-union: no correction needed);
        refuted when some comparison is refuted after Holm over the rivals' equivalence
        p-values (any one rival that is as important suffices). The result shown is the
        closest rival's comparison.
        """

        def compute() -> StatResult:
            imp = self.importance(kind)
            imp = imp[~np.isnan(imp).any(axis=1)]
            last = self.n_thoughts - 1
            tests = [self._mean_effect(imp[:, last] - imp[:, t]) for t in range(last)]
            if any(t.inconclusive for t in tests):
                return next(t for t in tests if t.inconclusive)
            p_equiv = holm([float(t.p_equivalence or 1.0) for t in tests])
            rivals = [
                replace(t, p_equivalence_corrected=p).with_verdict(self.alpha)
                for t, p in zip(tests, p_equiv, strict=True)
            ]
            closest = min(range(last), key=lambda i: rivals[i].statistic)
            verdict: Outcome = "inconclusive"
            if all(r.verdict == "supported" for r in rivals):
                verdict = "supported"
            elif any(r.verdict == "refuted" for r in rivals):
                verdict = "refuted"
                closest = next(i for i, r in enumerate(rivals) if r.verdict == "refuted")
            base = rivals[closest]
            return replace(
                base,
                p_value=max(r.p_value for r in rivals),
                p_corrected=max(r.p_value for r in rivals),
                p_sesoi=max(float(r.p_sesoi or 1.0) for r in rivals),
                method=(
                    f"intersection-union over {last} paired comparisons "
                    f"(shown: thought {closest}); {base.method}"
                ),
                verdict=verdict,
                verdict_reason=(
                    f"thought {last} vs thought {closest}: "
                    + str(base.verdict_reason).removeprefix(f"{base.verdict}: ")
                ),
            )

        return self._memoised(("last", kind), compute)  # type: ignore[return-value]

    # --- RQ2 --------------------------------------------------------------------------------
    def rq2_all(self, difficulty: str | None = None) -> dict[int, Rq2Tests]:
        """Per role layer, the three RQ2 questions; Holm across the role layers per question."""

        def compute() -> dict[int, Rq2Tests]:
            imp = self.importance()
            rows = ~np.isnan(imp).any(axis=1)
            if difficulty is not None:
                rows &= np.array([d == difficulty for d in self.results.difficulty])
            layers = list(dict.fromkeys(self.layers.as_dict().values()))
            tests = [
                rq2_tests(
                    self.attention(layer)[rows],
                    imp[rows],
                    alpha=self.alpha,
                    seed=self.seed,
                    sesoi_r=self.sesoi_r,
                    n_perm=self.n_perm,
                )
                for layer in layers
            ]
            return dict(zip(layers, holm_rq2(tests, alpha=self.alpha), strict=True))

        return self._memoised(("rq2", difficulty), compute)  # type: ignore[return-value]

    def rq2(self, test: Rq2Test, difficulty: str | None = None) -> dict[int, StatResult]:
        """Per role layer, one RQ2 question's result (``position``, ``beyond_position``, ...)."""
        if test not in Rq2Tests.QUESTIONS:
            raise ValueError(f"unknown RQ2 question {test!r}; use one of {Rq2Tests.QUESTIONS}")
        return {layer: getattr(t, test) for layer, t in self.rq2_all(difficulty).items()}

    def per_thought_correlation(self, layer: int) -> list[tuple[float, float]]:
        """Per thought, across problems: Pearson (r, p) of attention vs importance."""
        imp = self.importance()
        att = self.attention(layer)
        out = []
        for t in range(self.n_thoughts):
            keep = ~np.isnan(imp[:, t])
            x, y = att[keep, t], imp[keep, t]
            if len(x) < 3 or is_constant(x) or is_constant(y):
                out.append((float("nan"), 1.0))
                continue
            r, p = sps.pearsonr(x, y)
            out.append((float(r), float(p)))
        return out

    def head_correlation_map(self) -> np.ndarray:
        """(L, H) pooled Pearson r of per-head attention vs importance."""

        def compute() -> np.ndarray:
            imp = self.importance()
            keep = ~np.isnan(imp).any(axis=1)
            y = imp[keep].ravel()
            att = self.results.attention[keep]  # (N, L, H, T)
            n_layers, n_heads = att.shape[1], att.shape[2]
            out = np.full((n_layers, n_heads), np.nan)
            if y.size < 3 or is_constant(y):
                return out
            for layer in range(n_layers):
                for head in range(n_heads):
                    x = att[:, layer, head].ravel()
                    if not is_constant(x):
                        out[layer, head] = np.corrcoef(x, y)[0, 1]
            return out

        return self._memoised(("heads",), compute)  # type: ignore[return-value]
