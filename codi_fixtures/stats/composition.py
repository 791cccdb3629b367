"""RQ5 statistics on per-problem arrays (numpy/scipy only; problems are the units).

- :func:`interaction`: the interaction of a set of thoughts per problem, by Moebius
  inversion over its subsets (pairs: ``I_ij = E_ij - E_i - E_j``; triples:
  ``E_ijk - E_ij - E_ik - E_jk + E_i + E_j + E_k``), with ``E_{}`` = 0.
- :func:`interaction_tests`: per pair (or triple), synergy (typical I > SESOI) and
  redundancy (typical I < -SESOI) as two claims, each by :func:`~codi_fixtures.stats.mean_effect`
  (the 20% trimmed mean of the per-problem I, bootstrap-t), one Holm family over both
  directions of every interaction of that order (30 tests for the 15 pairs of six thoughts).
- :func:`reaching_subset_test`: "some proper subset's ablation reaches a fraction f of the
  all-thoughts effect", a union of the contrasts ``mean(E_S - f E_all) > 0`` over every proper
  subset (plain means: a ratio of means needs linearity), Holm across the subsets.
- :func:`smallest_reaching_subset`: the smallest subset whose mean ablation effect reaches the
  fraction (descriptive: chosen on the data, no test); :func:`per_problem_smallest_size` the
  same per problem.
- :func:`trend_test`: "accuracy (or any score) increases with k": the plain mean per-problem
  least-squares slope over k (the slope of the mean curve), one-sample t CI and p-values
  (degrees of freedom from the problems whose score moves with k), plus a within-problem
  permutation p-value (descriptive).
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
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from codi_fixtures.stats.equivalence import SESOI_ACCURACY, SESOI_LOGP
from codi_fixtures.stats.inference import (
    StatResult,
    accuracy_drop_effect,
    apply_holm_verdicts,
    inconclusive_verdict,
    mean_effect,
    pvalue_or_one,
)

__all__ = [
    "MIN_REACH_PROBLEMS",
    "InteractionTest",
    "ReachTest",
    "SmallestSubset",
    "TrendResult",
    "effect_grid",
    "interaction",
    "interaction_tests",
    "per_problem_smallest_size",
    "reaching_subset_test",
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
    """One interaction's 20% trimmed mean, CI and the two claims about it."""

    subset: Subset
    trimmed_mean: float
    """20% trimmed mean interaction over the usable problems (nats for delta log p)."""
    ci_low: float
    ci_high: float
    """Two-sided ``1 - 2 alpha`` bootstrap-t CI of the trimmed mean."""
    synergy: StatResult
    """Claim "trimmed mean I > SESOI" (Holm over both directions of every interaction)."""
    redundancy: StatResult
    """Claim "trimmed mean I < -SESOI" (tested on -I; Holm in the same family as ``synergy``)."""
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
    """Every interaction of ``order`` thoughts, tested both ways, one Holm family over all.

    Synergy (I > SESOI) and redundancy (I < -SESOI) are the two directions of one interaction,
    so both directions of every interaction form one Holm family of 2m tests (m interactions;
    30 for the 15 pairs of six thoughts): the chance of any false synergy-or-redundancy label
    is then at most ``alpha`` (two families of m, one per direction, allowed 2 alpha). As in
    every other Holm family here, each claim's CI is the two-sided ``1 - 2 alpha`` interval
    of its own test and its verdict needs the Holm-corrected p-values as well.

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
            why = (
                f"{inter.size} usable problem(s) for the interaction of "
                f"{_names(subset)} (a finite effect for each of its subsets); a trimmed "
                "mean and its interval need at least 2"
            )
            syn.append(inconclusive_verdict(why, int(inter.size), "greater"))
            red.append(syn[-1])
            continue
        syn.append(mean_effect(inter, sesoi=sesoi, alpha=alpha, n_boot=n_boot, seed=seed))
        red.append(mean_effect(-inter, sesoi=sesoi, alpha=alpha, n_boot=n_boot, seed=seed))
    m = len(sets)
    judged = apply_holm_verdicts([*syn, *red], alpha=alpha)  # one family: both directions
    syn, red = judged[:m], judged[m:]
    return [
        InteractionTest(
            subset=subset,
            trimmed_mean=s.statistic,
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
    """The smallest subset whose mean ablation effect reaches ``fraction`` of all thoughts'.

    Descriptive: the subset is chosen on the same data, so nothing here is a test (the claim
    is :func:`reaching_subset_test`).
    """

    subset: Subset | None
    """None when no subset smaller than all thoughts reaches it."""
    fraction_reached: float
    """Mean effect of ``subset`` / mean effect of all thoughts."""
    full_effect: float
    """Mean effect of ablating every thought."""
    single_best: Subset
    """The single thought with the largest mean effect."""
    single_fraction: float
    """Its fraction of the all-thoughts effect ("necessary alone" when >= ``fraction``)."""


def _finite_rows(effects: Effects, full_key: Subset) -> NDArray[np.bool_]:
    """(N,) bool: problems with a finite effect for every subset."""
    ok = np.ones(len(effects[full_key]), dtype=bool)
    for value in effects.values():
        ok &= np.isfinite(value)
    return ok


def smallest_reaching_subset(
    effects: Effects, n_thoughts: int, *, fraction: float = 0.8
) -> SmallestSubset:
    """Smallest (then largest-effect) proper subset whose mean effect >= ``fraction`` x all's."""
    full_key = tuple(range(n_thoughts))
    ok = _finite_rows(effects, full_key)
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
    return SmallestSubset(
        subset=chosen,
        fraction_reached=means[chosen] / full if chosen is not None and full else math.nan,
        full_effect=full,
        single_best=best_single,
        single_fraction=means[best_single] / full if full else math.nan,
    )


MIN_REACH_PROBLEMS = 30
"""Fewer problems make :func:`reaching_subset_test` inconclusive. Its tests reach alpha / 62,
where the plain mean's bootstrap-t is too optimistic on skewed contrasts: on the bundled
model's subset effects with every proper subset at exactly 80%, "supported" in 0.09 of
datasets at n = 10 and 15, 0.07 at n = 20, 0.05 at n = 30, 0.02 at n = 100."""


@dataclass(frozen=True)
class ReachTest:
    """Does some proper subset's ablation reach ``fraction`` of the all-thoughts effect?"""

    result: StatResult
    """The verdict, with the statistic, CI and p-values of the subset that decides it."""
    subset: Subset | None
    """That subset (None when nothing could be tested)."""
    per_subset: dict[Subset, StatResult]
    """Every proper subset's contrast mean(E_S - fraction E_all) > 0, Holm across them."""

    @property
    def shown_to_reach(self) -> list[Subset]:
        """The subsets whose contrast survives Holm, smallest first."""
        found = [s for s, r in self.per_subset.items() if r.verdict == "supported"]
        return sorted(found, key=lambda s: (len(s), s))


def _names(subset: Subset) -> str:
    return "{" + ", ".join(f"t{t}" for t in subset) + "}"


def reaching_subset_test(
    effects: Effects,
    n_thoughts: int,
    *,
    fraction: float = 0.8,
    alpha: float = 0.05,
    n_boot: int = 4999,
    seed: int = 0,
    min_n: int = MIN_REACH_PROBLEMS,
) -> ReachTest:
    """Union test of "some proper subset's mean effect >= ``fraction`` x all thoughts'".

    Per proper subset S (m = 2^T - 2 of them) the per-problem contrast
    ``d_S = E_S - fraction E_all``, its plain mean (a ratio of means needs linearity) tested
    one-sided against 0 by :func:`mean_effect` (bootstrap-t), Holm across the m subsets.

    - supported: some subset survives Holm. Shown is the subset with the smallest p (then the
      smallest, then the largest mean), whose Holm p is m x p; its CI is at the level
      ``1 - 2 alpha / m`` of Holm's first step, so CI and corrected p agree (up to one
      bootstrap resample at the quantile's edge; the verdict needs both, so it errs on the
      side of inconclusive). p_equivalence is the shown subset's own.
    - refuted: every subset is shown short of the fraction (each CI's upper end < 0 with
      p_equivalence < alpha). All must be shown, so each is judged at ``alpha`` without
      correction (intersection-union); shown is the subset closest to reaching (largest
      p_equivalence).
    - otherwise inconclusive, shown as the smallest-p subset with the Holm-level CI.

    ``n_boot`` must exceed m / alpha (1240 for six thoughts) for "supported" to be reachable.
    Problems with a non-finite effect for any subset are dropped; fewer than ``min_n`` usable
    ones are inconclusive (:data:`MIN_REACH_PROBLEMS`).
    """
    full_key = tuple(range(n_thoughts))
    proper = [s for s in effects if len(s) < n_thoughts]
    ok = _finite_rows(effects, full_key)
    n = int(ok.sum())
    if n < max(2, min_n) or not proper:
        why = (
            "no proper subset was ablated"
            if not proper
            else f"{n} usable problems; testing every proper subset's mean contrast at the "
            f"Holm level needs >= {max(2, min_n)} (the plain mean's bootstrap-t is too "
            "optimistic in its far tail on fewer)"
        )
        return ReachTest(inconclusive_verdict(why, n), None, {})
    m = len(proper)
    full = np.asarray(effects[full_key], dtype=np.float64)[ok]
    diffs = {s: np.asarray(effects[s], dtype=np.float64)[ok] - fraction * full for s in proper}

    def contrast(s: Subset, level_alpha: float) -> StatResult:
        return mean_effect(
            diffs[s], sesoi=0.0, alpha=level_alpha, n_boot=n_boot, seed=seed, trim=0.0
        )

    raw = {s: contrast(s, alpha) for s in proper}
    per_subset = dict(
        zip(proper, apply_holm_verdicts(list(raw.values()), alpha=alpha), strict=True)
    )
    what = f"mean(E_S - {fraction:g} E_all) over {m} proper subsets"
    if all(r.verdict == "refuted" for r in raw.values()):
        closest = max(proper, key=lambda s: (pvalue_or_one(raw[s].p_equivalence), raw[s].ci_high))
        r = raw[closest]
        result = replace(
            r,
            p_corrected=per_subset[closest].p_corrected,
            method=(
                f"subset {_names(closest)}, the closest of {m} proper subsets to reaching "
                f"{fraction:.0%}; refuted only when every subset is, each at alpha "
                f"(intersection-union); {what}; {r.method}"
            ),
            verdict_reason=(
                f"refuted: every proper subset falls short of {fraction:.0%} of the "
                f"all-thoughts effect; closest {_names(closest)}: {r.verdict_reason}"
            ),
        )
        return ReachTest(result, closest, per_subset)
    best = min(
        proper,
        key=lambda s: (pvalue_or_one(per_subset[s].p_corrected), len(s), -raw[s].statistic),
    )
    holm_level = contrast(best, alpha / m)  # its CI at Holm's first-step level alpha / m
    judged = replace(
        holm_level,
        p_corrected=per_subset[best].p_corrected,
        p_sesoi_corrected=per_subset[best].p_sesoi_corrected,
        method=(
            f"subset {_names(best)}, the smallest p of {m} proper subsets (Holm x{m}; CI at "
            f"the level 1 - 2 alpha/{m}; refuted only when every subset is: largest "
            f"p_equivalence over the subsets "
            f"{max(pvalue_or_one(r.p_equivalence) for r in raw.values()):.3g}); {what}; "
            f"{holm_level.method}"
        ),
    ).with_verdict(alpha)
    if judged.verdict != "supported":
        judged = replace(
            judged,
            verdict="inconclusive",
            verdict_reason=(
                f"inconclusive: no proper subset is shown to reach {fraction:.0%} after Holm "
                f"over {m}, nor is every one shown short; best {_names(best)}: "
                f"{str(judged.verdict_reason).removeprefix('inconclusive: ')}"
            ),
        )
    else:
        judged = replace(judged, verdict_reason=f"subset {_names(best)}: {judged.verdict_reason}")
    return ReachTest(judged, best, per_subset)


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
    """Mean per-problem least-squares slope, t CI / p / verdict against the SESOI."""
    p_permutation: float
    """H0: the k-labels are exchangeable within each problem (no effect of k at all);
    one-sided (slope > 0), Monte Carlo within-problem permutation, (k + 1) / (B + 1).
    Descriptive: it is not a test of "mean slope <= 0" (problems that step up and down
    with k break exchangeability without a mean trend: p < 0.05 in 0.13-0.22 of such
    datasets with mean slope 0)."""
    per_k_mean: NDArray[np.float64]
    """(K,) mean score at each k."""


def _student_t_mean(values: NDArray[np.float64], *, sesoi: float, alpha: float) -> StatResult:
    """Is the plain mean of ``values`` above ``sesoi``? Student t on the non-zero values' df.

    ``p_value`` (H0: mean <= 0), ``p_sesoi`` (H0: mean <= sesoi), ``p_equivalence`` (H0:
    mean >= sesoi) and the two-sided ``1 - 2 alpha`` CI come from the one t statistic
    ``mean / (sd / sqrt(n))``, so they are dual. Its reference is t(m - 1) with ``m`` the
    number of non-zero values, not t(n - 1): a problem whose score is the same at every k has
    slope exactly 0, and when few problems move, the standard deviation rests on those few
    (with a tenth of 30-100 curves moving, t(n - 1) said "refuted" at the SESOI boundary in
    0.07-0.10 of datasets; ``tests/test_stats_calibration.py``). Fewer than two non-zero
    values, or no variation, is inconclusive: a zero SE is not certainty.
    """
    n = int(values.size)
    movers = int(np.count_nonzero(values))
    level = 1.0 - 2.0 * alpha
    what = (
        f"mean per-problem slope; one-sample t, reference t(m - 1) with m = {movers} of {n} "
        "problems whose score changes with k, CI and p"
    )
    if movers < 2 or float(np.ptp(values)) == 0.0:
        reason = (
            f"inconclusive: the score changes with k in {movers} of {n} problem(s), too few "
            "for a trend (a spread needs two)"
            if movers < 2
            else f"inconclusive: all {n} slopes equal {values[0]:.3g}: no variation, so no "
            "standard error or interval; zero variance is not certainty"
        )
        return StatResult(
            statistic=float(np.mean(values)) if n else math.nan,
            p_value=1.0,
            ci_low=math.nan,
            ci_high=math.nan,
            n=n,
            method=f"{what}; {reason}",
            alternative="greater",
            ci_level=level,
            sesoi=sesoi,
            p_sesoi=1.0,
            p_equivalence=1.0,
            verdict="inconclusive",
            verdict_reason=reason,
        )
    mean = float(values.mean())
    se = float(values.std(ddof=1)) / math.sqrt(n)
    t_dist = stats.t(movers - 1)
    q = float(t_dist.ppf(1.0 - alpha))
    result = StatResult(
        statistic=mean,
        p_value=float(t_dist.sf(mean / se)),
        ci_low=mean - q * se,
        ci_high=mean + q * se,
        n=n,
        method=what,
        alternative="greater",
        ci_level=level,
        sesoi=sesoi,
        p_sesoi=float(t_dist.sf((mean - sesoi) / se)),
        p_equivalence=float(t_dist.cdf((mean - sesoi) / se)),
    )
    return result.with_verdict(alpha)


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

    The CI (two-sided ``1 - 2 alpha``) and the three one-sided p-values are a
    one-sample t on the slopes (:func:`_student_t_mean`), not the bootstrap-t of
    :func:`~codi_fixtures.stats.mean_effect`: with 0/1 correctness most slopes are 0 and the
    rest a few discrete values, where the bootstrap-t was anti-conservative at the quick
    tier's 10 problems (step-shaped curves, 1000 datasets: p < 0.05 in 0.11-0.12 of null
    datasets, "refuted" in 0.11-0.16 and "supported" in up to 0.09 at the SESOI boundary).
    The t's degrees of freedom are those of the problems whose score changes with k (the
    zeros carry no spread): t(n - 1) said "refuted" at the boundary in 0.07-0.10 of datasets
    when only 5-10% of 30-100 curves move; ``tests/test_stats_calibration.py``.
    """
    y = np.asarray(scores, dtype=np.float64)
    x = np.asarray(ks, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] != x.size or x.size < 2:
        raise ValueError("scores must be (problems, len(ks)) with at least two k")
    y = y[np.isfinite(y).all(axis=1)]
    xc = x - x.mean()
    denom = float(xc @ xc)
    slopes = (y @ xc) / denom
    # the plain mean: it is the slope of the mean curve, and with 0/1 correctness most
    # problems' slopes are exactly 0, so a trimmed mean would test only those
    slope = _student_t_mean(slopes, sesoi=sesoi, alpha=alpha)
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
    """Per condition (columns): 20% trimmed mean delta log p and accuracy drop, Holm across columns.

    A column with fewer than 2 finite delta log p is inconclusive (with the count as reason).
    """
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
            else inconclusive_verdict(
                f"{int(usable.sum())} usable problem(s) in condition {col} (a finite delta "
                "log p); a trimmed mean and its interval need at least 2",
                int(usable.sum()),
                "greater",
            )
        )
        acc_results.append(
            accuracy_drop_effect(clean[usable], acc[usable, col], sesoi=sesoi_acc, alpha=alpha)
        )
    return (
        apply_holm_verdicts(logp_results, alpha=alpha),
        apply_holm_verdicts(acc_results, alpha=alpha),
    )
