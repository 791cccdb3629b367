"""The study's statistics, computed from cached :class:`StudyResults` (no model needed).

Importance of thought ``t`` for problem ``i`` is ``delta log p`` of the gold
answer (clean minus ablated, teacher-forced) under one ablation kind; attention
is the ``<eot>`` query's attention to thought ``t`` at layer ``L``, averaged
over heads. Problems whose clean or ablated run met NaN/inf are excluded and
listed, never averaged in silently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import numpy as np
from scipy import stats as sps

from codi_fixtures.architecture import LayerRoles, layer_roles
from codi_fixtures.config import Settings
from codi_fixtures.runs import StudyResults
from codi_fixtures.stats import (
    StatResult,
    apply_holm,
    inconclusive,
    is_constant,
    mcnemar_accuracy_drop,
    paired_shift_test,
    pooled_correlation,
    position_centred_correlation,
    within_problem_permutation_test,
)

__all__ = ["Rq2Test", "StudyAnalysis"]

Rq2Test = Literal["pooled", "within", "centred"]


def _guarded(compute: Callable[[], StatResult], n: int, alternative: str) -> StatResult:
    """Run a test; too little or degenerate data becomes an inconclusive result, not a crash."""
    try:
        return compute()
    except ValueError as err:
        return inconclusive(str(err), n, alternative)


@dataclass
class StudyAnalysis:
    """Statistics over one study; results are memoised (the object is read-only)."""

    results: StudyResults
    layers: LayerRoles
    importance_kind: str = "mean"
    alpha: float = 0.05
    seed: int = 0
    min_correct: int = 3
    n_boot: int = 2000
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
    def rq1_logp(self, kind: str) -> list[StatResult]:
        """Per thought: does ablation lower log p(gold)? Wilcoxon, Holm across thoughts."""

        def compute() -> list[StatResult]:
            imp = self.importance(kind)
            keep = ~np.isnan(imp).any(axis=1)
            return apply_holm(
                [
                    _guarded(
                        partial(
                            paired_shift_test,
                            imp[keep, t],
                            alternative="greater",
                            n_boot=self.n_boot,
                            seed=self.seed,
                        ),
                        int(keep.sum()),
                        "greater",
                    )
                    for t in range(self.n_thoughts)
                ]
            )

        return self._memoised(("rq1_logp", kind), compute)  # type: ignore[return-value]

    def rq1_accuracy(self, kind: str) -> list[StatResult]:
        """Per thought: does ablation lower accuracy? Exact McNemar, Holm across thoughts."""

        def compute() -> list[StatResult]:
            cols = self.thought_columns(kind)
            keep = self.finite_rows(cols)
            clean = self.results.clean_correct[keep]
            return apply_holm(
                [
                    _guarded(
                        partial(
                            mcnemar_accuracy_drop,
                            clean,
                            self.results.correct[keep, c],
                            n_boot=self.n_boot,
                            seed=self.seed,
                        ),
                        int(keep.sum()),
                        "greater",
                    )
                    for c in cols
                ]
            )

        return self._memoised(("rq1_acc", kind), compute)  # type: ignore[return-value]

    def all_thoughts(self, kind: str) -> StatResult:
        """Control: ablating every thought at once lowers accuracy (exact McNemar)."""

        def compute() -> StatResult:
            col = self.results.column(f"all-{kind}")
            keep = self.finite_rows([col])
            return _guarded(
                lambda: mcnemar_accuracy_drop(
                    self.results.clean_correct[keep],
                    self.results.correct[keep, col],
                    n_boot=self.n_boot,
                    seed=self.seed,
                ),
                int(keep.sum()),
                "greater",
            )

        return self._memoised(("all", kind), compute)  # type: ignore[return-value]

    def last_most_important(self, kind: str) -> StatResult:
        """The last thought's delta log p exceeds every other thought's (intersection-union).

        Each comparison is a one-sided paired Wilcoxon of ``imp[last] - imp[t]``;
        the claim holds when all do, so its p-value is the largest of them (no
        multiplicity correction is needed for an intersection-union test). The
        statistic is the smallest mean difference.
        """

        def compute() -> StatResult:
            imp = self.importance(kind)
            imp = imp[~np.isnan(imp).any(axis=1)]
            last = self.n_thoughts - 1
            tests = [
                paired_shift_test(
                    imp[:, last] - imp[:, t],
                    alternative="greater",
                    n_boot=self.n_boot,
                    seed=self.seed,
                )
                for t in range(last)
            ]
            worst = min(range(last), key=lambda i: tests[i].statistic)
            p = max(t.p_value for t in tests)
            base = tests[worst]
            return StatResult(
                statistic=base.statistic,
                p_value=p,
                ci_low=base.ci_low,
                ci_high=base.ci_high,
                n=base.n,
                method=(
                    f"intersection-union of {last} one-sided Wilcoxon tests "
                    f"(closest rival: thought {worst})"
                ),
                alternative="greater",
                p_corrected=p,
            )

        return self._memoised(("last", kind), compute)  # type: ignore[return-value]

    # --- RQ2 --------------------------------------------------------------------------------
    def rq2(self, test: Rq2Test, difficulty: str | None = None) -> dict[int, StatResult]:
        """Per role layer: does attention predict importance? Holm across the role layers."""

        def compute() -> dict[int, StatResult]:
            imp = self.importance()
            rows = ~np.isnan(imp).any(axis=1)
            if difficulty is not None:
                rows &= np.array([d == difficulty for d in self.results.difficulty])
            layers = list(dict.fromkeys(self.layers.as_dict().values()))
            raw = [
                _guarded(
                    partial(self._rq2_one, test, self.attention(layer)[rows], imp[rows]),
                    int(rows.sum()),
                    "greater",
                )
                for layer in layers
            ]
            return dict(zip(layers, apply_holm(raw), strict=True))

        return self._memoised(("rq2", test, difficulty), compute)  # type: ignore[return-value]

    def _rq2_one(self, test: Rq2Test, attention: np.ndarray, importance: np.ndarray) -> StatResult:
        if test == "pooled":
            return pooled_correlation(
                attention, importance, alternative="greater", n_boot=self.n_boot, seed=self.seed
            )
        if test == "within":
            return within_problem_permutation_test(
                attention, importance, n_perm=self.n_perm, n_boot=self.n_boot, seed=self.seed
            )
        if test == "centred":
            return position_centred_correlation(
                attention, importance, n_perm=self.n_perm, n_boot=self.n_boot, seed=self.seed
            )
        raise ValueError(f"unknown RQ2 test {test!r}; use pooled, within or centred")

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
