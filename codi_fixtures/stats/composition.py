"""RQ5 statistics on per-problem arrays (numpy/scipy only; problems are the units).

- :func:`interaction`: the interaction of a set of thoughts per problem, by Moebius
  inversion over its subsets (pairs: ``I_ij = E_ij - E_i - E_j``; triples:
  ``E_ijk - E_ij - E_ik - E_jk + E_i + E_j + E_k``), with ``E_{}`` = 0.
- :func:`interaction_tests`: per pair (or triple), synergy (typical I > SESOI) and
  redundancy (typical I < -SESOI) as two claims, each by :func:`~codi_fixtures.stats.mean_effect`
  (the 20% trimmed mean of the per-problem I, bootstrap-t), Holm across the family of
  interactions of that order.
- :func:`smallest_reaching_subset`: the smallest subset whose ablation effect reaches a
  fraction of the all-thoughts effect (on plain means), with the contrast test
  ``E_S - f E_all > 0`` (plain mean: a ratio of means needs linearity);
  :func:`per_problem_smallest_size` the same per problem.
- :func:`trend_test`: "accuracy (or any score) increases with k": the plain mean per-problem
  least-squares slope over k (the slope of the mean curve), bootstrap-t CI, plus a
  within-problem permutation p-value.
- :func:`saturation`: the smallest k from which no larger k loses more than a SESOI of
  accuracy against the full run (non-inferiority, Holm across k).
- :func:`effect_grid`: trimmed-mean delta log p and accuracy drop per condition, Holm across them.

Why not Cochran-Armitage: it assumes independent observations in each k group, but every
problem is run at every k, so the groups share problems (repeated measures). The tests
here take the problem as the unit: a statistic per problem, then a one-sample
bootstrap-t on those, or a permutation of k-labels within each problem.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from codi_fixtures.stats.equivalence import SESOI_ACCURACY, SESOI_LOGP
from codi_fixtures.stats.inference import (
    StatResult,
    accuracy_drop_effect,
    apply_holm_verdicts,
    inconclusive,
    mean_effect,
)

__all__ = [
    "InteractionTest",
    "SmallestSubset",
    "TrendResult",
    "effect_grid",
    "interaction",
    "interaction_tests",
    "per_problem_smallest_size",
    "saturation",
    "smallest_reaching_subset",
    "trend_test",
]

Subset = tuple[int, ...]
Effects = Mapping[Subset, NDArray[np.float64]]
"""Per-problem effect (N,) of ablating each subset (sorted tuples), e.g. delta log p."""


def _key(subset: Sequence[int]) -> Subset:
    return tuple(sorted(subset))


def interaction(effects: Effects, subset: Sequence[int]) -> NDArray[np.float64]:
    """Per-problem interaction of ``subset`` (Moebius inversion over all its sub-subsets)."""
    subset = _key(subset)
    if len(subset) < 2:
        raise ValueError("an interaction needs at least two thoughts")
    total: NDArray[np.float64] | None = None
    for size in range(1, len(subset) + 1):
        sign = (-1) ** (len(subset) - size)
        for part in itertools.combinations(subset, size):
            if part not in effects:
                raise KeyError(f"no effect for subset {part}: run all subsets first")
            term = sign * np.asarray(effects[part], dtype=np.float64)
            total = term if total is None else total + term
    assert total is not None
    return total


@dataclass(frozen=True)
class InteractionTest:
    """One interaction's mean, CI and the two claims about it."""

    subset: Subset
    mean: float
    """Mean interaction over the usable problems (nats for delta log p)."""
    ci_low: float
    ci_high: float
    """Two-sided ``1 - 2 alpha`` bootstrap-t CI of the mean."""
    synergy: StatResult
    """Claim "mean I > SESOI" (Holm across the family)."""
    redundancy: StatResult
    """Claim "mean I < -SESOI" (tested as mean(-I) > SESOI; Holm across the family)."""
    n: int

    @property
    def label(self) -> str:
        """``synergy`` / ``redundancy`` when that claim is supported, else ``additive?``."""
        if self.synergy.verdict == "supported":
            return "synergy"
        if self.redundancy.verdict == "supported":
            return "redundancy"
        if self.synergy.verdict == "refuted" and self.redundancy.verdict == "refuted":
            return "additive"
        return "inconclusive"


def interaction_tests(
    effects: Effects,
    *,
    order: int = 2,
    n_thoughts: int | None = None,
    sesoi: float = SESOI_LOGP,
    alpha: float = 0.05,
    n_boot: int = 4999,
    seed: int = 0,
) -> list[InteractionTest]:
    """Every interaction of ``order`` thoughts, tested both ways, Holm across the family.

    Problems with a nan in any effect an interaction uses are dropped from that one.
    """
    n_thoughts = n_thoughts or 1 + max(t for s in effects for t in s)
    sets = list(itertools.combinations(range(n_thoughts), order))
    values, syn, red = [], [], []
    for subset in sets:
        inter = interaction(effects, subset)
        inter = inter[np.isfinite(inter)]
        values.append(inter)
        if inter.size < 2:
            syn.append(inconclusive("fewer than 2 usable problems", int(inter.size), "greater"))
            red.append(syn[-1])
            continue
        syn.append(mean_effect(inter, sesoi=sesoi, alpha=alpha, n_boot=n_boot, seed=seed))
        red.append(mean_effect(-inter, sesoi=sesoi, alpha=alpha, n_boot=n_boot, seed=seed))
    syn = apply_holm_verdicts(syn, alpha=alpha)
    red = apply_holm_verdicts(red, alpha=alpha)
    return [
        InteractionTest(
            subset=subset,
            mean=s.statistic,
            ci_low=s.ci_low,
            ci_high=s.ci_high,
            synergy=s,
            redundancy=r,
            n=int(v.size),
        )
        for subset, v, s, r in zip(sets, values, syn, red, strict=True)
    ]


@dataclass(frozen=True)
class SmallestSubset:
    """The smallest subset whose mean ablation effect reaches ``fraction`` of all thoughts'."""

    subset: Subset | None
    """None when no subset smaller than all thoughts reaches it."""
    fraction_reached: float
    """Mean effect of ``subset`` / mean effect of all thoughts."""
    full_effect: float
    """Mean effect of ablating every thought."""
    contrast: StatResult | None
    """Test of mean(E_S - fraction * E_all) > 0 (bootstrap-t; S chosen on the same data, so
    read it as descriptive of the selected subset, optimistic by selection)."""
    single_best: Subset
    """The single thought with the largest mean effect."""
    single_fraction: float
    """Its fraction of the all-thoughts effect ("necessary alone" when >= ``fraction``)."""


def smallest_reaching_subset(
    effects: Effects,
    n_thoughts: int,
    *,
    fraction: float = 0.8,
    alpha: float = 0.05,
    seed: int = 0,
) -> SmallestSubset:
    """Smallest (then largest-effect) proper subset whose mean effect >= ``fraction`` x all's."""
    full_key = tuple(range(n_thoughts))
    ok = np.ones(len(effects[full_key]), dtype=bool)
    for value in effects.values():
        ok &= np.isfinite(value)
    means = {s: float(np.mean(v[ok])) for s, v in effects.items()}
    full = means[full_key]
    singles = [(t,) for t in range(n_thoughts)]
    best_single = max(singles, key=lambda s: means[s])
    chosen: Subset | None = None
    for size in range(1, n_thoughts):
        sized = [s for s in effects if len(s) == size and means[s] >= fraction * full]
        if sized:
            chosen = max(sized, key=lambda s: means[s])
            break
    contrast = None
    if chosen is not None and int(ok.sum()) >= 2:
        diff = effects[chosen][ok] - fraction * effects[full_key][ok]
        contrast = mean_effect(diff, sesoi=0.0, alpha=alpha, seed=seed, trim=0.0)  # as chosen
    return SmallestSubset(
        subset=chosen,
        fraction_reached=means[chosen] / full if chosen is not None and full else math.nan,
        full_effect=full,
        contrast=contrast,
        single_best=best_single,
        single_fraction=means[best_single] / full if full else math.nan,
    )


def per_problem_smallest_size(
    effects: Effects, n_thoughts: int, *, fraction: float = 0.8, min_full: float = SESOI_LOGP
) -> NDArray[np.float64]:
    """Per problem: the smallest subset size reaching ``fraction`` of its all-thoughts effect.

    Its own all-thoughts effect (nan where that effect is below ``min_full`` or not finite).
    """
    full = np.asarray(effects[tuple(range(n_thoughts))], dtype=np.float64)
    out = np.full(full.shape, np.nan)
    for size in range(n_thoughts, 0, -1):  # descending: the last assignment is the smallest
        sized = np.stack([np.asarray(v) for s, v in effects.items() if len(s) == size])
        reach = (sized >= fraction * full[None, :]).any(axis=0)
        out[reach] = size
    out[~np.isfinite(full) | (full < min_full)] = np.nan
    return out


@dataclass(frozen=True)
class TrendResult:
    """Does the score rise with k? Mean per-problem slope (score per added thought)."""

    slope: StatResult
    """Mean per-problem least-squares slope, bootstrap-t CI / p / verdict against the SESOI."""
    p_permutation: float
    """H0: the k-labels are exchangeable within each problem (no effect of k at all);
    one-sided (slope > 0), Monte Carlo within-problem permutation, (k + 1) / (B + 1)."""
    per_k_mean: NDArray[np.float64]
    """(K,) mean score at each k."""


def trend_test(
    scores: ArrayLike,
    ks: Sequence[int],
    *,
    sesoi: float = SESOI_ACCURACY / 6,
    alpha: float = 0.05,
    n_perm: int = 9999,
    seed: int = 0,
) -> TrendResult:
    """Trend in ``scores`` (N problems x K values of k; correctness as 0/1 or log p) over ``ks``.

    Each problem's slope ``b_i = sum_k (k - kbar) y_ik / sum_k (k - kbar)^2`` is one
    independent observation; their mean is the slope of the mean curve. Default SESOI:
    5 accuracy points over six thoughts. Rows with a nan are dropped.
    """
    y = np.asarray(scores, dtype=np.float64)
    x = np.asarray(ks, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] != x.size or x.size < 2:
        raise ValueError("scores must be (problems, len(ks)) with at least two k")
    y = y[np.isfinite(y).all(axis=1)]
    xc = x - x.mean()
    denom = float(xc @ xc)
    slopes = (y @ xc) / denom
    # the plain mean (trim=0): it is the slope of the mean curve, and with 0/1 correctness
    # most problems' slopes are exactly 0, so a trimmed mean would test only those
    slope = mean_effect(slopes, sesoi=sesoi, alpha=alpha, seed=seed, trim=0.0)
    rng = np.random.default_rng(seed)
    observed = float(slopes.sum())
    count = 0
    done = 0
    while done < n_perm:
        size = min(1000, n_perm - done)
        perm = np.argsort(rng.random((size, *y.shape)), axis=2)  # a permutation per problem
        shuffled = np.take_along_axis(np.broadcast_to(y, (size, *y.shape)), perm, axis=2)
        stat = (shuffled @ xc).sum(axis=1) / denom
        count += int(np.sum(stat >= observed - 1e-12 * max(1.0, abs(observed))))
        done += size
    return TrendResult(
        slope=slope,
        p_permutation=(count + 1) / (n_perm + 1),
        per_k_mean=y.mean(axis=0),
    )


def saturation(
    correct: ArrayLike,
    ks: Sequence[int],
    *,
    sesoi: float = SESOI_ACCURACY,
    alpha: float = 0.05,
) -> tuple[int | None, list[StatResult]]:
    """Smallest k from which every larger k is within ``sesoi`` accuracy of the largest k.

    For each k < max: the accuracy drop acc(max) - acc(k), Tango's score test, Holm across
    k; "within" = refuted (drop shown < SESOI). Returns (k or None, the per-k results).
    """
    y = np.asarray(correct, dtype=bool)
    top = int(np.argmax(ks))
    others = [i for i in range(len(ks)) if i != top]
    results = apply_holm_verdicts(
        [accuracy_drop_effect(y[:, top], y[:, i], sesoi=sesoi, alpha=alpha) for i in others],
        alpha=alpha,
    )
    within = {ks[i]: r.verdict == "refuted" for i, r in zip(others, results, strict=True)}
    saturated: int | None = int(ks[top])
    for k in sorted(within, reverse=True):
        if not within[k]:
            break
        saturated = int(k)
    return saturated, results


def effect_grid(
    delta_logp: ArrayLike,
    clean_correct: ArrayLike,
    correct: ArrayLike,
    *,
    sesoi_logp: float = SESOI_LOGP,
    sesoi_acc: float = SESOI_ACCURACY,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[list[StatResult], list[StatResult]]:
    """Per condition (columns): mean delta log p and accuracy drop, each Holm across columns."""
    delta = np.asarray(delta_logp, dtype=np.float64)
    acc = np.asarray(correct, dtype=bool)
    clean = np.asarray(clean_correct, dtype=bool)
    logp_results, acc_results = [], []
    for col in range(delta.shape[1]):
        d = delta[:, col]
        usable = np.isfinite(d)
        logp_results.append(
            mean_effect(d[usable], sesoi=sesoi_logp, alpha=alpha, seed=seed)
            if usable.sum() >= 2
            else inconclusive("fewer than 2 usable problems", int(usable.sum()), "greater")
        )
        acc_results.append(
            accuracy_drop_effect(clean[usable], acc[usable, col], sesoi=sesoi_acc, alpha=alpha)
        )
    return (
        apply_holm_verdicts(logp_results, alpha=alpha),
        apply_holm_verdicts(acc_results, alpha=alpha),
    )
