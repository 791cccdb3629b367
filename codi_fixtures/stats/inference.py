"""Paired tests (RQ1), Holm correction, RQ2 tests and three-outcome verdicts.

Pure numpy/scipy. Every random procedure takes ``seed`` (an ``int`` or a
``numpy.random.Generator``, used as is), so results are reproducible.

Verdicts (see :mod:`codi_fixtures.stats.equivalence`): a claim is *supported* when
the effect exceeds a smallest effect size of interest (SESOI), *refuted* when
the effect is shown to be smaller than the SESOI, *inconclusive* otherwise.
The functions that decide return a :class:`StatResult` whose statistic, CI and
p-values are all about one quantity, with ``sesoi``, ``p_sesoi`` (H0: effect <=
SESOI), ``p_equivalence`` (H0: effect >= SESOI) and ``verdict`` set; their CI
is the two-sided ``1 - 2 alpha`` interval (dual to the one-sided tests):

- :func:`mean_effect`: 20% trimmed mean of per-problem deltas (e.g. delta log p);
  studentized bootstrap (bootstrap-t) CI and p-values.
- :func:`accuracy_drop_effect`: accuracy(clean) - accuracy(ablated); Tango's
  score test against zero (McNemar's asymptotic test) and against the SESOI,
  and Tango's score CI.
- :func:`rq2_tests`: does attention predict importance? Three questions
  (position level, beyond position, pooled) on ``(n_problems, n_thoughts)``
  arrays; :func:`holm_rq2` corrects a family of them (e.g. layers).
- :func:`apply_holm_verdicts`: Holm within a family, verdicts recomputed.

RQ1 compares a clean and an ablated run of the same problems: the problem is
the independent unit. RQ2 correlates attention with importance over
(problem, thought) pairs; the thoughts of one problem are not independent and
the six positions differ in mean and variance, so every RQ2 inference resamples
or permutes whole problems.

The older RQ2 functions (:func:`pooled_correlation`,
:func:`within_problem_permutation_test`, :func:`position_centred_correlation`,
:func:`cluster_bootstrap_ci`, :func:`bootstrap_ci`) are kept for existing
callers; :func:`rq2_tests` replaces them.

Degenerate RQ2 inputs (fewer than ``MIN_PROBLEMS`` problems, or a variable
that is constant) do not raise: they return a result with ``statistic=nan``,
``p_value=1.0`` and a ``method`` that says why, so that the caller can report
the test as inconclusive. Data that cannot support a statistic (too few
observations, non-finite values, too few thoughts) raise :class:`DegenerateData`,
which callers turn into an inconclusive verdict; malformed calls (wrong shape,
mismatched lengths, bad parameters) raise a plain ``ValueError``, which is a bug
and never a verdict.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, special, stats

from codi_fixtures.stats.equivalence import (
    SESOI_ACCURACY,
    SESOI_LOGP,
    SESOI_R,
    Outcome,
    Verdict,
    decide,
)
from codi_fixtures.stats.order_bounds import TrimmedMeanBounds

__all__ = [
    "MIN_PROBLEMS",
    "SESOI_ACCURACY",
    "SESOI_LOGP",
    "SESOI_R",
    "TRIM_FRACTION",
    "Alternative",
    "CorrelationMethod",
    "Outcome",
    "Rq2Tests",
    "ShiftMethod",
    "StatResult",
    "Verdict",
    "accuracy_drop_effect",
    "apply_holm",
    "apply_holm_verdicts",
    "bootstrap_ci",
    "cluster_bootstrap_ci",
    "decide",
    "flip_rate",
    "holm",
    "holm_rq2",
    "inconclusive",
    "inconclusive_verdict",
    "is_constant",
    "mcnemar_accuracy_drop",
    "mean_effect",
    "paired_shift_test",
    "pooled_correlation",
    "pooled_normal_scores",
    "position_centred_correlation",
    "pvalue_or_one",
    "rq2_tests",
    "two_way_residuals",
    "within_problem_permutation_test",
]

Alternative = Literal["greater", "less", "two-sided"]
CorrelationMethod = Literal["pearson", "spearman"]
ShiftMethod = Literal["permutation"]
"""The one test of :func:`paired_shift_test`: sign flips of the mean (Wilcoxon was removed)."""
ConstantRule = Literal["inconclusive", "exact"]
"""How :func:`mean_effect` judges all-equal values: undecided, or by the exact bound."""
Seed = int | np.random.Generator
FloatArray = NDArray[np.float64]

MIN_PROBLEMS = 3
"""Fewer problems than this make an RQ2 result inconclusive (nan statistic)."""

TRIM_FRACTION = 0.2
"""The share of problems :func:`mean_effect` cuts from each end (its estimand's trimming)."""

_ORDER_BOUND_NOTE = (
    "; p-values and CI ends are the more cautious of that and distribution-free "
    "order-statistic bounds"
)
_ALTERNATIVES = ("greater", "less", "two-sided")
_CORRELATION_METHODS = ("pearson", "spearman")
_EXACT_SIGN_FLIP_MAX_N = 16
_CHUNK_ELEMENTS = 1 << 21  # bound the memory of batched resamples (~16 MiB of float64)
_TIE_RTOL = 1e-10  # null statistics this close to the observed one count as ties
_CONSTANT_RTOL = float(np.finfo(np.float64).eps ** 0.75)  # scipy's near-constant threshold


@dataclass(frozen=True)
class StatResult:
    """One test's effect size, p-value and CI, ready for a report (and its verdict, if any)."""

    statistic: float
    """The effect size or test statistic; nan when the input was degenerate."""
    p_value: float
    """The p-value for ``alternative`` (H0: no effect); 1.0 when the input was degenerate."""
    ci_low: float
    """Lower end of the two-sided CI at ``ci_level`` (nan when not computed)."""
    ci_high: float
    """Upper end of the two-sided CI at ``ci_level`` (nan when not computed)."""
    n: int
    """Number of independent units (problems)."""
    method: str
    """What was computed, e.g. ``"McNemar's asymptotic test"``, or why it is inconclusive."""
    alternative: str = "two-sided"
    """The alternative hypothesis the p-value refers to."""
    p_corrected: float | None = None
    """The multiplicity-adjusted p-value, set by ``with_corrected`` or ``apply_holm``."""
    ci_level: float = 0.95
    """Two-sided coverage of the CI; results with a verdict use ``1 - 2 alpha``."""
    sesoi: float | None = None
    """Smallest effect size of interest the verdict was judged against (None: no verdict)."""
    p_sesoi: float | None = None
    """One-sided p of H0: effect <= SESOI (minimal-effect test); small supports the claim."""
    p_equivalence: float | None = None
    """One-sided p of H0: effect >= SESOI (upper test of TOST); small refutes the claim."""
    p_sesoi_corrected: float | None = None
    """Holm-adjusted ``p_sesoi`` within the family (set by ``apply_holm_verdicts``)."""
    p_equivalence_corrected: float | None = None
    """Holm-adjusted ``p_equivalence`` within the family (set by ``apply_holm_verdicts``)."""
    verdict: Outcome | None = None
    """``supported``, ``refuted``, ``inconclusive``, ``descriptive`` (decides nothing) or None."""
    verdict_reason: str | None = None
    """One line naming the tests and numbers that decided the verdict."""

    @property
    def inconclusive(self) -> bool:
        """True when the input was degenerate and the statistic is nan."""
        return math.isnan(self.statistic)

    def with_corrected(self, p_corrected: float) -> StatResult:
        """Return a copy carrying an adjusted p-value."""
        return replace(self, p_corrected=float(p_corrected))

    @property
    def adjusted(self) -> tuple[str, ...]:
        """The p-values corrected for their family (``decide``'s names; the CI never is)."""
        corrected = {
            "p": self.p_corrected,
            "p_sesoi": self.p_sesoi_corrected,
            "p_equivalence": self.p_equivalence_corrected,
        }
        return tuple(name for name, p in corrected.items() if p is not None)

    def with_verdict(self, alpha: float = 0.05) -> StatResult:
        """Return a copy whose verdict is recomputed from its (corrected, when set) p-values.

        Descriptive results and results without a SESOI are returned unchanged.
        ``alpha`` must be the level the CI was built for (``ci_level = 1 - 2 alpha``).
        """
        if self.sesoi is None or self.verdict == "descriptive":
            return self

        def pick(corrected: float | None, raw: float | None) -> float | None:
            return corrected if corrected is not None else raw

        p_value = pick(self.p_corrected, self.p_value)
        assert p_value is not None
        verdict, reason = decide(
            self.statistic,
            self.ci_low,
            self.ci_high,
            p_value=p_value,
            sesoi=self.sesoi,
            alpha=alpha,
            p_sesoi=pick(self.p_sesoi_corrected, self.p_sesoi),
            p_equivalence=pick(self.p_equivalence_corrected, self.p_equivalence),
            ci_level=self.ci_level,
            adjusted=self.adjusted,
        )
        if self.inconclusive:
            reason = self.method
        elif verdict == self.verdict == "inconclusive" and (
            math.isnan(self.ci_low) or math.isnan(self.ci_high)  # not -inf + inf: that is a CI
        ):
            reason = self.verdict_reason or reason  # keep why no interval could be given
        return replace(self, verdict=verdict, verdict_reason=reason)

    def as_dict(self) -> dict[str, float | int | str]:
        """Return the fields as a flat dict (optional fields only when set)."""
        out: dict[str, float | int | str] = {
            "statistic": self.statistic,
            "p_value": self.p_value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "ci_level": self.ci_level,
            "n": self.n,
            "method": self.method,
            "alternative": self.alternative,
        }
        optional = {
            "p_corrected": self.p_corrected,
            "sesoi": self.sesoi,
            "p_sesoi": self.p_sesoi,
            "p_sesoi_corrected": self.p_sesoi_corrected,
            "p_equivalence": self.p_equivalence,
            "p_equivalence_corrected": self.p_equivalence_corrected,
            "verdict": self.verdict,
            "verdict_reason": self.verdict_reason,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        return out


# --------------------------------------------------------------------------- input checks


class DegenerateData(ValueError):
    """The data cannot support the statistic: too few observations, non-finite values, ...

    An analysis turns this, and only this, into an *inconclusive* verdict. Any other
    exception from a statistic (a shape mismatch, a bad parameter) is a bug and is
    reported as an error.
    """


def _check_choice(value: str, allowed: Sequence[str], name: str) -> None:
    """Raise ValueError when ``value`` is not one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _check_resampling(n_boot: int, alpha: float, *, n_perm: int = 1) -> None:
    """Raise ValueError on a negative bootstrap size, bad alpha or no permutations."""
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0 (0 skips the CI), got {n_boot}")
    if n_perm < 1:
        raise ValueError(f"n_perm must be >= 1, got {n_perm}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _vector(values: ArrayLike, name: str, *, min_n: int = 1) -> FloatArray:
    """Return ``values`` as a finite 1-D float array of at least ``min_n`` entries."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size < min_n:
        raise DegenerateData(f"{name} needs at least {min_n} observations, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise DegenerateData(f"{name} contains non-finite values (nan or inf)")
    return arr


def _bool_vector(values: ArrayLike, name: str) -> NDArray[np.bool_]:
    """Return ``values`` as a non-empty 1-D boolean array (bools or 0/1 accepted)."""
    arr = _vector(values, name)
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name} must contain only booleans or 0/1")
    return arr.astype(bool)


def _paired_bools(
    clean: ArrayLike, ablated: ArrayLike
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Validate the per-problem correctness of the clean and ablated runs."""
    c = _bool_vector(clean, "clean_correct")
    a = _bool_vector(ablated, "ablated_correct")
    if c.shape != a.shape:
        raise ValueError(
            f"clean_correct and ablated_correct differ in length: {c.size} vs {a.size}"
        )
    return c, a


def _matrix(values: ArrayLike, name: str) -> FloatArray:
    """Return ``values`` as a finite (n_problems, n_thoughts) float array."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_problems, n_thoughts), got shape {arr.shape}")
    if arr.shape[1] < 2:
        raise DegenerateData(f"{name} needs at least 2 thoughts per problem, got {arr.shape[1]}")
    if not np.all(np.isfinite(arr)):
        raise DegenerateData(f"{name} contains non-finite values (nan or inf)")
    return arr


def _matrix_pair(attention: ArrayLike, importance: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Validate two (n_problems, n_thoughts) arrays of the same shape."""
    x = _matrix(attention, "attention")
    y = _matrix(importance, "importance")
    if x.shape != y.shape:
        raise ValueError(f"attention and importance differ in shape: {x.shape} vs {y.shape}")
    return x, y


# --------------------------------------------------------------------------- resampling helpers


def _chunks(total: int, row_elements: int) -> Iterator[int]:
    """Yield batch sizes summing to ``total`` whose batches stay under the memory bound."""
    step = max(1, _CHUNK_ELEMENTS // max(1, row_elements))
    for start in range(0, total, step):
        yield min(step, total - start)


def _percentile_ci(boot: FloatArray, alpha: float) -> tuple[float, float]:
    """Return the two-sided percentile interval of the finite bootstrap statistics."""
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return math.nan, math.nan
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


@dataclass(frozen=True)
class _BootstrapT:
    """Studentized bootstrap of a (trimmed) mean: estimate, its SE, sorted t* = (m* - m) / se*.

    An SE of 0 is never certainty. Values that vary but tie in the middle
    (``tied_middle``) give p = 1 and no interval. All-equal values give the
    exact bound ``constant_p`` = (1 - trim)^n as the p of any location other
    than theirs, and the dual CI: the point when the bound is below the tail,
    else no finite interval (nan).
    """

    mean: float
    se: float
    t: FloatArray
    tied_middle: bool = False
    """The values vary but their middle (after trimming) ties: the SE is 0 without certainty."""
    constant_p: float = 1.0
    """All values equal: P(n draws all at least (at most) the value | location beyond it)."""

    def ci(self, level: float) -> tuple[float, float]:
        """Two-sided bootstrap-t interval; for all-equal values the exact bound's dual (or nan)."""
        tail = (1.0 - level) / 2.0
        if self.se == 0.0:
            exact = not self.tied_middle and self.constant_p < tail
            return (self.mean, self.mean) if exact else (math.nan, math.nan)
        if self.t.size == 0:
            return math.nan, math.nan
        q_high = float(np.quantile(self.t, 1.0 - tail, method="higher"))
        q_low = float(np.quantile(self.t, tail, method="lower"))
        return self.mean - q_high * self.se, self.mean - q_low * self.se

    def p_greater(self, null: float) -> float:
        """The p-value of H0: location <= ``null`` (bootstrap-t, (k + 1) / (B + 1))."""
        if self.se == 0.0:
            above = not self.tied_middle and self.mean > null
            return self.constant_p if above else 1.0
        k = int(np.sum(self.t >= (self.mean - null) / self.se))
        return (k + 1) / (self.t.size + 1)

    def p_less(self, null: float) -> float:
        """The p-value of H0: location >= ``null`` (bootstrap-t, (k + 1) / (B + 1))."""
        if self.se == 0.0:
            below = not self.tied_middle and self.mean < null
            return self.constant_p if below else 1.0
        k = int(np.sum(self.t <= (self.mean - null) / self.se))
        return (k + 1) / (self.t.size + 1)


def _trimmed_mean_se(samples: FloatArray, trim: float) -> tuple[FloatArray, FloatArray]:
    """Trimmed mean along the last axis and its Tukey-McLaughlin standard error.

    ``g = floor(trim * n)`` values are cut from each end; the SE is the
    winsorized SD / ((1 - 2 trim) sqrt n) (Wilcox 2012, ch. 4). ``trim = 0``
    gives the mean and SD / sqrt n.
    """
    n = samples.shape[-1]
    g = math.floor(trim * n)
    if g == 0:
        return samples.mean(axis=-1), samples.std(axis=-1, ddof=1) / math.sqrt(n)
    ordered = np.sort(samples, axis=-1)
    estimate = ordered[..., g : n - g].mean(axis=-1)
    winsorized = np.clip(ordered, ordered[..., g : g + 1], ordered[..., n - g - 1 : n - g])
    se = winsorized.std(axis=-1, ddof=1) / ((1.0 - 2.0 * trim) * math.sqrt(n))
    return estimate, se


def _bootstrap_t(
    values: FloatArray, n_boot: int, rng: np.random.Generator, trim: float = 0.0
) -> _BootstrapT:
    """Studentized (bootstrap-t) resampling of the ``trim``-trimmed mean of ``values``, vectorised.

    A resample whose (winsorized) values are all equal has se* = 0: its t* is
    +-inf when its estimate differs from the observed one (kept, as the most
    extreme values) and is dropped when it does not. All-equal ``values`` get
    ``constant_p`` = (1 - trim)^n (:func:`mean_effect`, ``constant="exact"``).
    """
    n = values.size
    estimate, se_all = _trimmed_mean_se(values, trim)
    tiny = _CONSTANT_RTOL * float(np.max(np.abs(values))) / math.sqrt(n)
    se = 0.0 if float(se_all) <= tiny else float(se_all)
    tied = se == 0.0 and not is_constant(values)
    parts = []
    for size in _chunks(n_boot, n):
        boot, se_b = _trimmed_mean_se(values[rng.integers(0, n, (size, n))], trim)
        diff = boot - estimate
        ok = se_b > tiny
        t = np.full(size, math.nan)
        t[ok] = diff[ok] / se_b[ok]
        t[~ok & (diff > 0)] = math.inf
        t[~ok & (diff < 0)] = -math.inf
        parts.append(t[~np.isnan(t)])
    t_all = np.sort(np.concatenate(parts)) if parts else np.empty(0)
    constant_p = (1.0 - trim) ** n if se == 0.0 and not tied else 1.0
    return _BootstrapT(float(estimate), se, t_all, tied_middle=tied, constant_p=constant_p)


def _bootstrap_mean_ci(
    values: FloatArray, n_boot: int, alpha: float, rng: np.random.Generator
) -> tuple[float, float]:
    """Studentized bootstrap (bootstrap-t) (1 - alpha) CI of the mean; nan when ``n_boot == 0``."""
    if n_boot == 0:
        return math.nan, math.nan
    return _bootstrap_t(values, n_boot, rng).ci(1.0 - alpha)


def _tango_z(b: int, c: int, n: int, delta: float, correction: float = 0.0) -> float:
    """Tango's (1998) score statistic for H0: p(b) - p(c) = ``delta`` in a paired 2x2 table.

    b: pairs right-then-wrong, c: wrong-then-right, n: all pairs. Decreasing in
    ``delta``; equals McNemar's (b - c) / sqrt(b + c) at ``delta = 0``. ``correction``
    moves the numerator ``b - c - n delta`` that far towards 0 (a continuity correction).
    """
    lin = -b - c + (2 * n - b + c) * delta
    const = -c * delta * (1.0 - delta)
    p21 = (math.sqrt(max(lin * lin - 8.0 * n * const, 0.0)) - lin) / (4.0 * n)
    var = n * (2.0 * p21 + delta * (1.0 - delta))
    num = b - c - n * delta
    num = math.copysign(max(abs(num) - correction, 0.0), num)
    if var <= 0.0:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


TANGO_CONTINUITY = 0.25
"""The continuity correction of :func:`accuracy_drop_effect`'s score statistic (in pairs).

Without it the test said "supported" at the SESOI boundary in up to 0.087 of datasets (exact
over every table, n = 30, SESOI 0.1); ``tests/test_stats_calibration.py``."""


def _tango_ci(b: int, c: int, n: int, level: float, correction: float = 0.0) -> tuple[float, float]:
    """Tango's score interval for a paired difference of proportions, by root finding.

    The differences that the statistic (with ``correction``) does not reject at ``level``.
    """
    z = float(stats.norm.ppf((1.0 + level) / 2.0))
    estimate = (b - c) / n
    edge = 1.0 - 1e-12

    def score(d: float) -> float:
        return _tango_z(b, c, n, d, correction)

    def root(target: float, lo: float, hi: float, default: float) -> float:
        f_lo, f_hi = score(lo) - target, score(hi) - target
        if f_lo * f_hi > 0:
            return default
        return float(optimize.brentq(lambda d: score(d) - target, lo, hi, xtol=1e-12))

    low = root(z, -edge, estimate, -1.0) if estimate > -edge else -1.0
    high = root(-z, estimate, edge, 1.0) if estimate < edge else 1.0
    return low, high


def _count_extreme(null: FloatArray, observed: float, alternative: str, tol: float) -> int:
    """Count null statistics at least as extreme as ``observed`` in the direction tested."""
    if alternative == "greater":
        return int(np.sum(null >= observed - tol))
    if alternative == "less":
        return int(np.sum(null <= observed + tol))
    return int(np.sum(np.abs(null) >= abs(observed) - tol))


def bootstrap_ci(
    values: ArrayLike,
    stat_fn: Callable[[FloatArray], float] = np.mean,
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: Seed = 0,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) CI of ``stat_fn`` over resampled 1-D ``values``."""
    arr = _vector(values, "values", min_n=2)
    _check_resampling(n_boot, alpha)
    if n_boot == 0:
        raise ValueError("bootstrap_ci needs n_boot >= 1")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, (n_boot, arr.size))
    boot = np.array([float(stat_fn(arr[row])) for row in idx])
    return _percentile_ci(boot, alpha)


# --------------------------------------------------------------------------- RQ1


def _dual_ci_level(alternative: str, alpha: float) -> float:
    """The CI level dual to a test at ``alpha``: ``1 - 2 alpha`` one-sided, ``1 - alpha`` two-sided.

    A one-sided test needs alpha < 0.5 (a ValueError names it otherwise).
    """
    if alternative == "two-sided":
        return 1.0 - alpha
    if not alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5) for a one-sided test, got {alpha}")
    return 1.0 - 2.0 * alpha


def mcnemar_accuracy_drop(
    clean_correct: ArrayLike,
    ablated_correct: ArrayLike,
    *,
    alternative: Alternative = "greater",
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: Seed = 0,
) -> StatResult:
    """McNemar's test of accuracy(clean) - accuracy(ablated), paired over problems, with its CI.

    b counts problems right when clean and wrong when ablated, c the reverse; the statistic
    is the drop (b - c) / n. p and CI come from one procedure, Tango's (1998) score statistic
    for H0: drop = d0, so they are dual: p is its test at d0 = 0 (McNemar's asymptotic test
    (b - c) / sqrt(b + c)) for ``alternative`` (``"greater"`` tests for a drop), and the CI
    is Tango's score interval at ``1 - 2 alpha`` for a one-sided ``alternative`` (the interval
    dual to one-sided tests at alpha) and ``1 - alpha`` for ``"two-sided"``: it excludes 0 on
    the tested side exactly when p < alpha. p is 1.0 when there are no discordant pairs.
    ``n_boot=0`` skips the CI (no resampling; ``n_boot`` and ``seed`` are otherwise unused,
    kept for existing callers). The exact conditional (sign) test is not used: it is not dual
    to the score interval (b = 3, c = 0: exact p = 0.125, yet the 90% score CI excludes 0)
    and it is conservative (:func:`accuracy_drop_effect`).
    """
    _check_choice(alternative, _ALTERNATIVES, "alternative")
    _check_resampling(n_boot, alpha)
    level = _dual_ci_level(alternative, alpha)
    clean, ablated = _paired_bools(clean_correct, ablated_correct)
    b = int(np.sum(clean & ~ablated))
    c = int(np.sum(~clean & ablated))
    n = int(clean.size)
    z = _tango_z(b, c, n, 0.0)
    p = {
        "greater": float(stats.norm.sf(z)),
        "less": float(stats.norm.cdf(z)),
        "two-sided": float(min(1.0, 2.0 * stats.norm.sf(abs(z)))),
    }[alternative]
    p = 1.0 if b + c == 0 else p
    low, high = (math.nan, math.nan) if n_boot == 0 else _tango_ci(b, c, n, level)
    return StatResult(
        statistic=(b - c) / n,
        p_value=p,
        ci_low=low,
        ci_high=high,
        n=n,
        method=(
            f"McNemar's asymptotic test (Tango score test at 0; b={b}, c={c} discordant "
            "problems) and Tango's score CI, dual"
        ),
        alternative=alternative,
        ci_level=level,
    )


def _sign_flip_p(
    deltas: FloatArray, alternative: str, n_perm: int, rng: np.random.Generator
) -> tuple[float, str]:
    """Sign-flip permutation p-value of the mean: exact for n <= 16, else Monte Carlo."""
    n = deltas.size
    observed = float(deltas.sum())
    tol = _TIE_RTOL * float(np.abs(deltas).sum())
    if n <= _EXACT_SIGN_FLIP_MAX_N:
        bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
        null = (1.0 - 2.0 * bits) @ deltas  # (2**n,)
        k = _count_extreme(null, observed, alternative, tol)
        return k / null.size, f"exact sign-flip permutation test of the mean (2^{n} flips)"
    k = 0
    for size in _chunks(n_perm, n):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(size, n))
        k += _count_extreme(signs @ deltas, observed, alternative, tol)
    label = f"Monte Carlo sign-flip permutation test of the mean ({n_perm} flips)"
    return (k + 1) / (n_perm + 1), label


def paired_shift_test(
    deltas: ArrayLike,
    *,
    alternative: Alternative = "greater",
    method: ShiftMethod = "permutation",
    n_perm: int = 10000,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: Seed = 0,
) -> StatResult:
    """Test whether the mean of per-problem deltas (e.g. clean - ablated log p) is shifted from 0.

    Statistic, p and CI are all about the mean delta. p: the sign-flip permutation test of
    the mean, exact for n <= 16 and otherwise with ``n_perm`` random flips and p = (k + 1) /
    (n_perm + 1); p = 1.0 when all deltas are zero. CI: a studentized bootstrap of the mean,
    two-sided at ``1 - 2 alpha`` for a one-sided ``alternative`` (as every one-sided test
    here) and ``1 - alpha`` for ``"two-sided"``; ``n_boot=0`` skips it. The two come from
    different resampling schemes, so near alpha they can disagree.

    ``method`` accepts only ``"permutation"``. The Wilcoxon signed-rank test it used to
    default to tests the pseudo-median, not the mean: d = [-0.1] x 8 + [5.0] x 2 has mean
    +0.92 but Wilcoxon "greater" p = 0.77 (sign-flip p of the mean 0.25).
    """
    _check_choice(alternative, _ALTERNATIVES, "alternative")
    _check_choice(method, ("permutation",), "method")
    _check_resampling(n_boot, alpha, n_perm=n_perm)
    level = _dual_ci_level(alternative, alpha)
    d = _vector(deltas, "deltas", min_n=2)
    rng = np.random.default_rng(seed)
    p, label = _sign_flip_p(d, alternative, n_perm, rng)
    low, high = _bootstrap_mean_ci(d, n_boot, 1.0 - level, rng)
    return StatResult(
        statistic=float(d.mean()),
        p_value=p,
        ci_low=low,
        ci_high=high,
        n=int(d.size),
        method=f"{label}; studentized bootstrap CI of the mean",
        alternative=alternative,
        ci_level=level,
    )


def flip_rate(
    clean_correct: ArrayLike, ablated_correct: ArrayLike, *, given_clean_correct: bool = False
) -> float:
    """Fraction of problems that the clean run gets right and the ablated run gets wrong.

    The denominator is all problems; with ``given_clean_correct=True`` it is
    the problems the clean run gets right (nan when there are none).
    """
    clean, ablated = _paired_bools(clean_correct, ablated_correct)
    flips = int(np.sum(clean & ~ablated))
    denominator = int(clean.sum()) if given_clean_correct else int(clean.size)
    return flips / denominator if denominator else math.nan


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in input order, monotone and capped at 1."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_values must be 1-D, got shape {p.shape}")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("p_values must lie in [0, 1] (nan not allowed)")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = (m - np.arange(m)) * p[order]
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return [float(v) for v in adjusted]


def apply_holm(results: Sequence[StatResult]) -> list[StatResult]:
    """Return copies of ``results`` with Holm-adjusted ``p_corrected`` across the family."""
    adjusted = holm([r.p_value for r in results])
    return [r.with_corrected(p) for r, p in zip(results, adjusted, strict=True)]


def apply_holm_verdicts(results: Sequence[StatResult], *, alpha: float = 0.05) -> list[StatResult]:
    """Holm within a family (e.g. the layers of one question), then recompute every verdict.

    ``p_value``, ``p_sesoi`` and ``p_equivalence`` are each adjusted across the
    family (a missing one counts as 1.0, so the family size never shrinks) into
    ``p_corrected``, ``p_sesoi_corrected`` and ``p_equivalence_corrected``.
    Holm on ``p_sesoi`` bounds the chance of any false "supported", Holm on
    ``p_equivalence`` that of any false "refuted", each at ``alpha``.
    Descriptive results only get ``p_corrected``.
    """
    if not results:
        return []

    def adjusted(values: list[float | None]) -> list[float | None]:
        holm_p = holm([1.0 if v is None else v for v in values])
        return [None if v is None else p for v, p in zip(values, holm_p, strict=True)]

    p_all = adjusted([r.p_value for r in results])
    p_sesoi = adjusted([r.p_sesoi for r in results])
    p_equiv = adjusted([r.p_equivalence for r in results])
    out = []
    for r, p, ps, pe in zip(results, p_all, p_sesoi, p_equiv, strict=True):
        if r.verdict == "descriptive":
            out.append(replace(r, p_corrected=p))
            continue
        corrected = replace(r, p_corrected=p, p_sesoi_corrected=ps, p_equivalence_corrected=pe)
        out.append(corrected.with_verdict(alpha))
    return out


def union_route(result: StatResult, routes: int, *, alpha: float = 0.05) -> StatResult:
    """``result`` as one of ``routes`` ways to reach the same verdict (a union), re-judged.

    A claim refuted when *any* of k comparisons is refuted (or one of k comparisons
    supported) is wrong with probability up to k alpha when each is judged at alpha. Here
    each route's (corrected, when set) p-values are multiplied by k (Bonferroni over the
    routes, capped at 1) into the corrected fields and the verdict recomputed, so the union
    errs with probability at most alpha. The CI is unchanged.
    """
    if routes < 1:
        raise ValueError(f"routes must be >= 1, got {routes}")
    if routes == 1 or result.sesoi is None or result.verdict == "descriptive":
        return result

    def times_k(corrected: float | None, raw: float | None) -> float | None:
        p = corrected if corrected is not None else raw
        return None if p is None else min(1.0, routes * p)

    return replace(
        result,
        p_corrected=times_k(result.p_corrected, result.p_value),
        p_sesoi_corrected=times_k(result.p_sesoi_corrected, result.p_sesoi),
        p_equivalence_corrected=times_k(result.p_equivalence_corrected, result.p_equivalence),
    ).with_verdict(alpha)


def _decision_level(alpha: float, ci_level: float | None) -> float:
    """The CI level of a result that decides: ``1 - 2 alpha`` unless given."""
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5) for a verdict, got {alpha}")
    level = 1.0 - 2.0 * alpha if ci_level is None else ci_level
    if not 0.0 < level < 1.0:
        raise ValueError(f"ci_level must be in (0, 1), got {level}")
    return level


def pvalue_or_one(p: float | None) -> float:
    """A p-value that may be absent (a descriptive result) as a float: 1.0 when absent.

    Not ``p or 1.0``, which would turn a p-value of exactly 0 into 1.
    """
    return 1.0 if p is None else float(p)


def _check_sesoi(sesoi: float) -> float:
    """Raise ValueError unless ``sesoi`` is finite and >= 0."""
    if not (math.isfinite(sesoi) and sesoi >= 0):
        raise ValueError(f"sesoi must be finite and >= 0, got {sesoi}")
    return float(sesoi)


def mean_effect(
    deltas: ArrayLike,
    *,
    sesoi: float = SESOI_LOGP,
    alpha: float = 0.05,
    ci_level: float | None = None,
    n_boot: int = 4999,
    seed: Seed = 0,
    trim: float = TRIM_FRACTION,
    constant: ConstantRule = "inconclusive",
) -> StatResult:
    """Is the trimmed mean of per-problem deltas (e.g. clean - ablated log p) above ``sesoi``?

    The estimand is the 20% trimmed mean by default (``trim=0`` gives the
    plain mean): the mean of the middle 60% of problems, the typical effect,
    which a few problems with very large deltas cannot carry. One studentized
    bootstrap of it (bootstrap-t, B = ``n_boot``, Tukey-McLaughlin winsorized
    SE) gives the CI (two-sided, ``1 - 2 alpha`` by default) and the three
    one-sided p-values, so they are dual: ``p_value`` (H0: effect <= 0),
    ``p_sesoi`` (H0: effect <= sesoi), ``p_equivalence`` (H0: effect >= sesoi).
    The verdict is for a family of one; use :func:`apply_holm_verdicts` for
    several. A ``ci_level`` other than ``1 - 2 alpha`` changes only the reported
    CI (the verdict then needs that CI to clear the SESOI too).

    Why trimmed: at n = 10 no interval for the plain mean covers on the
    bundled model's skewed delta log p (0.91 for thought 5, skewness 2; every
    variant measured 0.83-0.93), because a sample of 10 often lacks the rare
    large values that carry the mean. The trimmed mean's bootstrap-t covers
    0.93-0.97 at n = 10, 30, 100 on Normal, log-normal (sigma 0.8 and 1.2) and
    all six thoughts' real delta log p (``tests/test_stats_calibration.py``).

    Every decision needs more than the bootstrap: with a trimmed mean
    (``trim > 0``), each p-value and each CI end is the more cautious of the
    bootstrap-t's and a distribution-free order-statistic bound
    (:mod:`codi_fixtures.stats.order_bounds`). On heavy-tailed effects (most
    problems unmoved, a few by nats) a small sample often misses the rare
    large values: the bootstrap alone refuted at the SESOI boundary in up to
    0.30 of datasets at n = 10, and supported knockout-shaped effects in
    0.10-0.12 at n = 30. No sample of 10 gives either bound at 95%
    (1 - 0.8^10 = 0.89), so a trimmed mean decides nothing from 10 problems.

    No variation is not certainty. Values whose middle ties although they vary
    are inconclusive (p = 1, no CI). So are all-equal values by default
    (``constant="inconclusive"``): the SE is 0 and the bootstrap says nothing.
    ``constant="exact"`` judges them by an exact bound instead, which is
    defensible: if the population trimmed mean were at most m0 < c, at least a
    ``trim`` share of the population would lie below c, so n values all equal
    to c have probability at most (1 - trim)^n. That is a valid p-value (for
    every null other than c; 1 for c itself) and the CI [c, c] is its dual,
    given only when the bound is below the CI's tail (else no finite CI, nan).
    It needs n > log(alpha) / log(1 - trim): n >= 14 at trim 0.2 and alpha
    0.05, before any Holm correction; with ``trim=0`` there is no bound (a rare
    large value can carry a mean), so the result stays inconclusive. The old
    rule (p = 0 and CI [c, c] from any n) was not defensible: at the boundary
    of "trimmed mean >= SESOI", n = 10 all-zero values occur with probability
    up to 0.8^10 = 0.11. :func:`~codi_fixtures.stats.equivalence_effect` opts in.
    """
    d = _vector(deltas, "deltas", min_n=2)
    level = _decision_level(alpha, ci_level)
    sesoi = _check_sesoi(sesoi)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim}")
    _check_choice(constant, ("inconclusive", "exact"), "constant")
    boot = _bootstrap_t(d, n_boot, np.random.default_rng(seed), trim)
    g = math.floor(trim * d.size)
    what = "mean" if g == 0 else f"{trim:.0%} trimmed mean ({g} of {d.size} cut at each end)"
    method = f"{what}; studentized bootstrap (bootstrap-t, {n_boot} resamples) CI and p"
    # every decision needs the distribution-free bounds too: a bootstrap cannot see missed tails
    p_value, p_sesoi, p_below = boot.p_greater(0.0), boot.p_greater(sesoi), boot.p_less(sesoi)
    bounds = TrimmedMeanBounds.of(d, trim) if trim > 0.0 else None
    if bounds is not None:
        p_value = max(p_value, bounds.p_greater(0.0))
        p_sesoi = max(p_sesoi, bounds.p_greater(sesoi))
        p_below = max(p_below, bounds.p_less(sesoi))
        method += _ORDER_BOUND_NOTE
    if boot.se == 0.0:  # a zero SE is not certainty: say so, or use the exact bound
        reason = _no_variation_reason(boot, what, int(d.size), trim, level, constant)
        if reason is not None:
            if constant == "inconclusive" or boot.tied_middle:
                p_value = p_sesoi = p_below = 1.0
            return StatResult(
                statistic=boot.mean,
                p_value=p_value,
                ci_low=math.nan,
                ci_high=math.nan,
                n=int(d.size),
                method=f"{what}; {reason}",
                alternative="greater",
                ci_level=level,
                sesoi=sesoi,
                p_sesoi=p_sesoi,
                p_equivalence=p_below,
                verdict="inconclusive",
                verdict_reason=reason,
            )
        method = (
            f"{what}; all {d.size} values equal: exact bound (1 - {trim:g})^{d.size} = "
            f"{boot.constant_p:.3g} for the p-values, CI its dual"
        )
    low, high = boot.ci(level)
    if bounds is not None:  # each end dual to its p-values: the more cautious of the two bounds
        bound_low, bound_high = bounds.ci(level)
        low, high = min(low, bound_low), max(high, bound_high)
    result = StatResult(
        statistic=boot.mean,
        p_value=p_value,
        ci_low=low,
        ci_high=high,
        n=int(d.size),
        method=method,
        alternative="greater",
        ci_level=level,
        sesoi=sesoi,
        p_sesoi=p_sesoi,
        p_equivalence=p_below,
    )
    return result.with_verdict(alpha)


def _no_variation_reason(
    boot: _BootstrapT, what: str, n: int, trim: float, level: float, constant: ConstantRule
) -> str | None:
    """Why a zero-SE sample decides nothing, or None when the exact bound decides it."""
    if boot.tied_middle:
        return (
            f"inconclusive: the middle values tie ({what} = {boot.mean:.3g}), so its "
            "standard error is 0 although the values vary; no interval can be given"
        )
    if constant == "inconclusive":
        return (
            f"inconclusive: all {n} values equal {boot.mean:.3g}: no variation, so no standard "
            "error or interval; zero variance is not certainty"
        )
    tail = (1.0 - level) / 2.0
    if boot.constant_p < tail:
        return None
    if trim == 0.0:
        return (
            f"inconclusive: all {n} values equal {boot.mean:.3g}; a plain mean has no bound "
            "from no variation (a rare large value can carry it), whatever n"
        )
    return (
        f"inconclusive: all {n} values equal {boot.mean:.3g}; the exact bound for no variation, "
        f"(1 - {trim:g})^{n} = {boot.constant_p:.3g}, is not below {tail:.3g}: too few problems"
    )


def accuracy_drop_effect(
    clean_correct: ArrayLike,
    ablated_correct: ArrayLike,
    *,
    sesoi: float = SESOI_ACCURACY,
    alpha: float = 0.05,
    ci_level: float | None = None,
) -> StatResult:
    """Does ablation lower accuracy by more than ``sesoi`` (a fraction of problems)?

    The statistic is accuracy(clean) - accuracy(ablated) = (b - c) / n over
    paired problems. All inference comes from Tango's (1998) score statistic
    for H0: drop = d0, so it is dual: ``p_value`` (d0 = 0, where it is
    McNemar's (b - c) / sqrt(b + c)), ``p_sesoi`` (H0: drop <= sesoi),
    ``p_equivalence`` (H0: drop >= sesoi) and the CI (``1 - 2 alpha`` by default,
    Tango's score interval). The numerator ``b - c - n d0`` is moved a quarter pair towards
    0 (:data:`TANGO_CONTINUITY`, a continuity correction): without it the test was
    anti-conservative at the SESOI boundary when nearly every discordant pair goes one way
    ("supported" in up to 0.065 / 0.087 of datasets at SESOI 0.05 / 0.1, "refuted" 0.076 at
    n = 5). Exact over every table (n = 5-100, discordant probability from the SESOI to
    0.95) the largest "supported" / "refuted" rates are now 0.064 / 0.051 at SESOI 0.05 and
    0.063 / 0.050 at SESOI 0.1 (half a pair: 0.061 at most, but quick-tier claims with 7
    of 10 problems discordant no longer survived Holm); the test of d0 = 0 is conservative
    at small n (p < 0.05 in at most 0.037 of null datasets at n = 10, 0.047 at n = 100).
    The exact conditional (sign) test is not used: it is not dual to the score interval,
    and it is more conservative still (``tests/test_stats_calibration.py``).
    """
    level = _decision_level(alpha, ci_level)
    sesoi = _check_sesoi(sesoi)
    clean, ablated = _paired_bools(clean_correct, ablated_correct)
    b = int(np.sum(clean & ~ablated))
    c = int(np.sum(~clean & ablated))
    n = int(clean.size)
    cc = TANGO_CONTINUITY
    z_sesoi = _tango_z(b, c, n, sesoi, cc)
    low, high = _tango_ci(b, c, n, level, cc)
    result = StatResult(
        statistic=(b - c) / n,
        p_value=float(stats.norm.sf(_tango_z(b, c, n, 0.0, cc))),
        ci_low=low,
        ci_high=high,
        n=n,
        method=(
            f"accuracy drop (b={b}, c={c} discordant problems); Tango score test "
            f"(McNemar's at 0), continuity-corrected by {cc:g} pair: CI and SESOI tests"
        ),
        alternative="greater",
        ci_level=level,
        sesoi=sesoi,
        p_sesoi=float(stats.norm.sf(z_sesoi)),
        p_equivalence=float(stats.norm.cdf(z_sesoi)),
    )
    return result.with_verdict(alpha)


# --------------------------------------------------------------------------- RQ2


def is_constant(values: FloatArray, reference: FloatArray | None = None) -> bool:
    """True when ``values`` is (nearly) constant, judged against the size of ``reference``.

    This is scipy's near-constant criterion; ``reference`` (default ``values``)
    lets residuals be judged against the data they came from.
    """
    ref = values if reference is None else reference
    centred_norm = float(np.linalg.norm(values - values.mean()))
    return centred_norm <= _CONSTANT_RTOL * float(np.linalg.norm(ref))


def _bare(reason: str) -> str:
    """``reason`` without any leading ``inconclusive:`` prefixes."""
    while reason.startswith("inconclusive: "):
        reason = reason.removeprefix("inconclusive: ")
    return reason


def inconclusive(reason: str, n: int, alternative: str) -> StatResult:
    """Result for a degenerate input: nan statistic, p = 1, the reason in ``method``.

    ``method`` starts with ``inconclusive:`` once, whether or not ``reason`` already does.
    """
    return StatResult(
        statistic=math.nan,
        p_value=1.0,
        ci_low=math.nan,
        ci_high=math.nan,
        n=n,
        method=f"inconclusive: {_bare(reason)}",
        alternative=alternative,
    )


def inconclusive_verdict(reason: str, n: int = 0, alternative: str = "greater") -> StatResult:
    """:func:`inconclusive` already judged: a claim reading it is skipped with ``reason``."""
    return replace(
        inconclusive(reason, n, alternative), verdict="inconclusive", verdict_reason=reason
    )


def _degenerate_reason(x: FloatArray, y: FloatArray) -> str | None:
    """Why (x, y) cannot be correlated, or None when they can."""
    if x.shape[0] < MIN_PROBLEMS:
        return f"fewer than {MIN_PROBLEMS} problems ({x.shape[0]})"
    for name, arr in (("attention", x), ("importance", y)):
        if is_constant(arr):
            return f"{name} is constant"
    return None


def _profile_only_reason(
    x_resid: FloatArray, y_resid: FloatArray, x: FloatArray, y: FloatArray
) -> str | None:
    """Which variable is a pure per-thought profile (constant residuals), or None."""
    for name, resid, raw in (("attention", x_resid, x), ("importance", y_resid, y)):
        if is_constant(resid, raw):
            return f"{name} is constant after removing the per-thought profile"
    return None


def _root_product(a: ArrayLike, b: ArrayLike) -> FloatArray:
    """``sqrt(a * b)`` for a, b >= 0, also where the product underflows to 0.

    There (values ~1e-100) each factor is rooted first; elsewhere the usual form, so results
    stay bit-identical.
    """
    out = np.sqrt(np.multiply(a, b))
    tiny = (out == 0.0) & (np.asarray(a) > 0.0) & (np.asarray(b) > 0.0)
    if np.any(tiny):
        out = np.where(tiny, np.sqrt(a) * np.sqrt(b), out)
    return np.asarray(out, dtype=np.float64)


def _clip_r(r: float) -> float:
    """A correlation clipped to [-1, 1] (rounding can give 1.0000000000000004); nan stays nan."""
    return r if math.isnan(r) else min(max(r, -1.0), 1.0)


def _pooled_ranks(values: FloatArray) -> FloatArray:
    """Average ranks of all entries pooled, in the original (problem, thought) shape."""
    return stats.rankdata(values, axis=None).reshape(values.shape)


def pooled_normal_scores(values: ArrayLike) -> FloatArray:
    """Van der Waerden normal scores of all entries pooled: ``Phi^-1(rank / (N + 1))``.

    ``N`` is the number of entries; ties get the score of their average rank. The
    scores keep the array's shape, so a position profile survives as score
    differences between columns. Pearson r of normal scores is the Gaussian rank
    correlation (Boudt, Cornelissen & Croux 2012): invariant to monotone
    transformations, as efficient as Pearson's r for Normal data, and with a
    bounded influence of single values. A NaN anywhere makes every score NaN (drop NaN
    rows first, as :func:`rq2_tests` does).
    """
    arr = np.asarray(values, dtype=np.float64)
    scores: FloatArray = special.ndtri(_pooled_ranks(arr) / (arr.size + 1))
    return scores


def _centre_positions(values: FloatArray) -> FloatArray:
    """Subtract each thought's mean over problems (axis -2), removing the position profile."""
    return values - values.mean(axis=-2, keepdims=True)


def _rows_vary(values: FloatArray, reference_norm: FloatArray) -> NDArray[np.bool_]:
    """Per row of a (batch, m) array: True when it is not (nearly) constant."""
    centred = values - values.mean(axis=1, keepdims=True)
    return np.linalg.norm(centred, axis=1) > _CONSTANT_RTOL * reference_norm


def _batch_pearson(x: FloatArray, y: FloatArray) -> FloatArray:
    """Pearson r of each row pair of (batch, m) arrays; nan where a row has zero variance."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    scale = _root_product(np.sum(xc * xc, axis=1), np.sum(yc * yc, axis=1))
    ok = scale > 0
    r = np.full(x.shape[0], math.nan)
    r[ok] = np.sum(xc[ok] * yc[ok], axis=1) / scale[ok]
    return np.clip(r, -1.0, 1.0)


def _cluster_bootstrap_r(
    x: FloatArray,
    y: FloatArray,
    method: str,
    *,
    centre: bool,
    n_boot: int,
    alpha: float,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """Percentile CI of pooled r over resampled problems (rows), vectorised."""
    if n_boot == 0:
        return math.nan, math.nan
    n_problems = x.shape[0]
    boot = []
    for size in _chunks(n_boot, x.size):
        idx = rng.integers(0, n_problems, (size, n_problems))
        xb, yb = x[idx], y[idx]  # (size, problem, thought)
        x_norm = np.linalg.norm(xb.reshape(size, -1), axis=1)
        y_norm = np.linalg.norm(yb.reshape(size, -1), axis=1)
        if centre:
            xb, yb = _centre_positions(xb), _centre_positions(yb)
        xb, yb = xb.reshape(size, -1), yb.reshape(size, -1)
        valid = _rows_vary(xb, x_norm) & _rows_vary(yb, y_norm)
        if method == "spearman":
            xb, yb = stats.rankdata(xb, axis=1), stats.rankdata(yb, axis=1)
        boot.append(np.where(valid, _batch_pearson(xb, yb), math.nan))
    return _percentile_ci(np.concatenate(boot), alpha)


def cluster_bootstrap_ci(
    attention: ArrayLike,
    importance: ArrayLike,
    stat_fn: Callable[[FloatArray, FloatArray], float],
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: Seed = 0,
) -> tuple[float, float]:
    """Percentile CI of ``stat_fn(attention, importance)`` resampling whole problems (rows).

    ``stat_fn`` receives two (n_problems, n_thoughts) arrays with the same
    rows drawn; nan values it returns are dropped before taking percentiles.
    """
    x, y = _matrix_pair(attention, importance)
    _check_resampling(n_boot, alpha)
    if n_boot == 0:
        raise ValueError("cluster_bootstrap_ci needs n_boot >= 1")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.shape[0], (n_boot, x.shape[0]))
    boot = np.array([float(stat_fn(x[rows], y[rows])) for rows in idx])
    return _percentile_ci(boot, alpha)


def pooled_correlation(
    attention: ArrayLike,
    importance: ArrayLike,
    *,
    method: CorrelationMethod = "pearson",
    alternative: Alternative = "two-sided",
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: Seed = 0,
) -> StatResult:
    """Pearson or Spearman r over all (problem, thought) pairs, as in earlier work.

    The scipy p-value treats the pairs as independent, which they are not
    (six thoughts per problem), so it is anti-conservative; the CI comes from
    the problem-level cluster bootstrap. Degenerate input gives nan, p = 1.
    """
    _check_choice(method, _CORRELATION_METHODS, "method")
    _check_choice(alternative, _ALTERNATIVES, "alternative")
    _check_resampling(n_boot, alpha)
    x, y = _matrix_pair(attention, importance)
    reason = _degenerate_reason(x, y)
    if reason is not None:
        return inconclusive(reason, x.shape[0], alternative)
    correlate = stats.pearsonr if method == "pearson" else stats.spearmanr
    res = correlate(x.ravel(), y.ravel(), alternative=alternative)
    rng = np.random.default_rng(seed)
    low, high = _cluster_bootstrap_r(
        x, y, method, centre=False, n_boot=n_boot, alpha=alpha, rng=rng
    )
    return StatResult(
        statistic=_clip_r(float(res.statistic)),
        p_value=float(res.pvalue),
        ci_low=low,
        ci_high=high,
        n=x.shape[0],
        method=f"pooled {method} r (p treats pairs as independent; cluster bootstrap CI)",
        alternative=alternative,
    )


def _within_row_permutation(
    x: FloatArray,
    y: FloatArray,
    alternative: str,
    n_perm: int,
    rng: np.random.Generator,
    *,
    within_scale: float = 1.0,
) -> tuple[float, float]:
    """Pooled Pearson r of (x, y) and its p-value under within-row permutation of x.

    Permuting within rows keeps the pooled mean and variance of x, so only
    the cross-product changes and r is computed from it directly. The
    between-row part of r is fixed under permutation; ``within_scale``
    stretches the null's within-row part around it.
    """
    xc, yc = x - x.mean(), y - y.mean()
    scale = float(_root_product(np.sum(xc * xc), np.sum(yc * yc)))
    observed = _clip_r(float(np.sum(xc * yc)) / scale)
    between = x.shape[1] * float(np.sum(xc.mean(axis=1) * yc.mean(axis=1))) / scale
    rows = np.arange(x.shape[0])[:, None]
    k = 0
    for size in _chunks(n_perm, x.size):
        perm = np.argsort(rng.random((size, *x.shape)), axis=-1)  # (size, problem, thought)
        null = np.einsum("bpt,pt->b", xc[rows, perm], yc) / scale
        null = between + within_scale * (null - between)
        k += _count_extreme(null, observed, alternative, _TIE_RTOL)
    return observed, (k + 1) / (n_perm + 1)


def _working_arrays(x: FloatArray, y: FloatArray, method: str) -> tuple[FloatArray, FloatArray]:
    """The arrays whose Pearson r is the requested correlation (pooled ranks for Spearman)."""
    if method == "spearman":
        return _pooled_ranks(x), _pooled_ranks(y)
    return x, y


def within_problem_permutation_test(
    attention: ArrayLike,
    importance: ArrayLike,
    *,
    method: CorrelationMethod = "pearson",
    alternative: Alternative = "greater",
    n_perm: int = 5000,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: Seed = 0,
) -> StatResult:
    """Pooled r tested against shuffling the thought order of attention within each problem.

    Each problem keeps its own set of values, so association that comes only
    from "which problem" (e.g. a shared per-problem offset) is part of the
    null; p = (k + 1) / (n_perm + 1). The CI is the problem-level cluster
    bootstrap of the pooled r. Degenerate input gives nan, p = 1.
    """
    _check_choice(method, _CORRELATION_METHODS, "method")
    _check_choice(alternative, _ALTERNATIVES, "alternative")
    _check_resampling(n_boot, alpha, n_perm=n_perm)
    x, y = _matrix_pair(attention, importance)
    reason = _degenerate_reason(x, y)
    if reason is not None:
        return inconclusive(reason, x.shape[0], alternative)
    rng = np.random.default_rng(seed)
    r, p = _within_row_permutation(*_working_arrays(x, y, method), alternative, n_perm, rng)
    low, high = _cluster_bootstrap_r(
        x, y, method, centre=False, n_boot=n_boot, alpha=alpha, rng=rng
    )
    return StatResult(
        statistic=r,
        p_value=p,
        ci_low=low,
        ci_high=high,
        n=x.shape[0],
        method=f"pooled {method} r, within-problem permutation ({n_perm} permutations)",
        alternative=alternative,
    )


def position_centred_correlation(
    attention: ArrayLike,
    importance: ArrayLike,
    *,
    method: CorrelationMethod = "pearson",
    alternative: Alternative = "greater",
    n_perm: int = 5000,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: Seed = 0,
) -> StatResult:
    """Correlation beyond the shared position profile: pooled r of position-centred values.

    Each thought's mean over problems is subtracted from both arrays, which
    removes the average per-thought profile that attention and importance may
    share (e.g. both highest at the first thought). The residuals are tested
    by within-problem permutation; because centring shrinks the residuals'
    within-problem spread by (1 - 1/n_problems), the permutation null's
    within-problem part is widened by sqrt(n / (n - 1)), which keeps the test
    at its nominal level down to a handful of problems (otherwise about 0.07
    at 5 problems, 0.06 at 10). The cluster bootstrap CI recentres each
    resample. Degenerate input (including residuals that are constant, i.e. a
    variable that is a pure position profile) gives nan, p = 1.
    """
    _check_choice(method, _CORRELATION_METHODS, "method")
    _check_choice(alternative, _ALTERNATIVES, "alternative")
    _check_resampling(n_boot, alpha, n_perm=n_perm)
    x, y = _matrix_pair(attention, importance)
    xr, yr = _centre_positions(x), _centre_positions(y)
    reason = _degenerate_reason(x, y) or _profile_only_reason(xr, yr, x, y)
    if reason is not None:
        return inconclusive(reason, x.shape[0], alternative)
    rng = np.random.default_rng(seed)
    n_problems = x.shape[0]
    r, p = _within_row_permutation(
        *_working_arrays(xr, yr, method),
        alternative,
        n_perm,
        rng,
        # Centring over problems shrinks the residuals' within-problem variance by a factor
        # (1 - 1/n_problems) that the observed statistic does not share; undo it in the null.
        within_scale=math.sqrt(n_problems / (n_problems - 1)),
    )
    low, high = _cluster_bootstrap_r(x, y, method, centre=True, n_boot=n_boot, alpha=alpha, rng=rng)
    return StatResult(
        statistic=r,
        p_value=p,
        ci_low=low,
        ci_high=high,
        n=x.shape[0],
        method=(
            f"position-centred pooled {method} r, within-problem permutation "
            f"({n_perm} permutations)"
        ),
        alternative=alternative,
    )


# --------------------------------------------------------------------------- RQ2, decomposed

_Z_CLIP = 1.0 - 1e-12  # keeps atanh finite for |r| = 1
_TINY_SE = 1e-300  # a zero jackknife SE becomes this, so t = +-inf instead of a warning
_LOO_RTOL = float(np.finfo(np.float64).eps ** 0.5)  # leave-one-out sums this small are zero


@dataclass(frozen=True)
class Rq2Tests:
    """RQ2 for one (attention, importance) pair of arrays, e.g. one layer: three questions.

    ``position`` and ``beyond_position`` decide verdicts; ``pooled`` is the
    earlier work's statistic, reported with verdict ``"descriptive"``.
    """

    position: StatResult
    """Across the thoughts, does mean attention track mean importance (r of column means)?"""
    beyond_position: StatResult
    """Beyond each problem's and each position's baseline, does attention predict importance?"""
    pooled: StatResult
    """Pooled r over all (problem, thought) pairs; decides nothing."""
    n_dropped: int = 0
    """Problems dropped because a value of theirs was nan."""

    QUESTIONS = ("position", "beyond_position", "pooled")

    def questions(self) -> dict[str, StatResult]:
        """The three results by question name."""
        return {name: getattr(self, name) for name in self.QUESTIONS}

    def as_dict(self) -> dict[str, object]:
        """Per question the flat result dict, plus ``n_dropped``."""
        out: dict[str, object] = {k: r.as_dict() for k, r in self.questions().items()}
        out["n_dropped"] = self.n_dropped
        return out


def _rq2_arrays(attention: ArrayLike, importance: ArrayLike) -> tuple[FloatArray, FloatArray, int]:
    """Validate two (n_problems, n_thoughts) arrays; drop rows with a nan in either."""
    x = np.asarray(attention, dtype=np.float64)
    y = np.asarray(importance, dtype=np.float64)
    for name, arr in (("attention", x), ("importance", y)):
        if arr.ndim != 2:
            raise ValueError(f"{name} must be 2-D (n_problems, n_thoughts), got shape {arr.shape}")
    if x.shape != y.shape:  # a malformed call, checked before any degenerate-data condition
        raise ValueError(f"attention and importance differ in shape: {x.shape} vs {y.shape}")
    for name, arr in (("attention", x), ("importance", y)):
        if arr.shape[1] < 3:
            raise DegenerateData(
                f"{name} needs at least 3 thoughts per problem, got {arr.shape[1]}"
            )
        if np.any(np.isinf(arr)):
            raise DegenerateData(f"{name} contains inf (nan rows are dropped, inf is not)")
    keep = ~(np.isnan(x).any(axis=1) | np.isnan(y).any(axis=1))
    return x[keep], y[keep], int((~keep).sum())


def _fisher_jackknife(r: float, loo: FloatArray) -> tuple[float, float]:
    """Fisher z of ``r`` and its delete-one-problem jackknife SE (nan if a LOO r is)."""
    n = loo.size
    z = math.atanh(min(max(r, -_Z_CLIP), _Z_CLIP))
    if not np.all(np.isfinite(loo)):
        return z, math.nan
    z_loo = np.arctanh(np.clip(loo, -_Z_CLIP, _Z_CLIP))
    se = math.sqrt((n - 1) / n * float(np.sum((z_loo - z_loo.mean()) ** 2)))
    return z, max(se, _TINY_SE)


@dataclass(frozen=True)
class _RInference:
    """Jackknife-t inference on Fisher z: CI and one-sided p-values, all dual."""

    z: float
    se: float
    df: int

    def ci(self, level: float) -> tuple[float, float]:
        q = float(special.stdtrit(self.df, (1.0 + level) / 2.0))
        return math.tanh(self.z - q * self.se), math.tanh(self.z + q * self.se)

    def _t(self, null: float) -> float:
        return (self.z - math.atanh(min(max(null, -_Z_CLIP), _Z_CLIP))) / self.se

    def p_greater(self, null: float) -> float:
        """The p-value of H0: r <= ``null``."""
        return float(special.stdtr(self.df, -self._t(null)))

    def p_less(self, null: float) -> float:
        """The p-value of H0: r >= ``null``."""
        return float(special.stdtr(self.df, self._t(null)))


def _pearson(x: FloatArray, y: FloatArray) -> float:
    """Pearson r of two equal-shape arrays, flattened, clipped to [-1, 1]; nan if constant."""
    xc, yc = x - x.mean(), y - y.mean()
    scale = float(_root_product(float(np.sum(xc * xc)), float(np.sum(yc * yc))))
    if scale == 0.0:
        return math.nan
    return _clip_r(float(np.sum(xc * yc)) / scale)


def _loo_r(
    cxy: FloatArray, cxx: FloatArray, cyy: FloatArray, ref: tuple[float, float]
) -> FloatArray:
    """Correlations from leave-one-out (co)variances; nan where a variance vanishes."""
    ok = (cxx > _LOO_RTOL * ref[0]) & (cyy > _LOO_RTOL * ref[1])
    r = np.full(cxy.shape, math.nan)
    r[ok] = cxy[ok] / _root_product(cxx[ok], cyy[ok])
    return np.clip(r, -1.0, 1.0)


def _profile_u_statistics(a: FloatArray, b: FloatArray) -> tuple[float, FloatArray]:
    """Unbiased profile (co)variance of two row-centred arrays: the full value and each LOO.

    With ``a_i``, ``b_i`` the row-centred vectors of problem ``i``, the plug-in
    profile covariance ``sum_t mean_a[t] mean_b[t]`` includes ``1/n`` times the
    within-problem covariance (the noise of the column means; it is what
    attenuates the correlation of the column means). The U-statistic
    ``sum_{i != j} a_i . b_j / (n (n - 1))`` leaves it out: its expectation is
    exactly the covariance of the population mean profiles.
    """
    n = a.shape[0]
    sa, sb = a.sum(axis=0), b.sum(axis=0)
    diag = np.sum(a * b, axis=1)
    full = (float(sa @ sb) - float(diag.sum())) / (n * (n - 1))
    loo = (np.sum((sa - a) * (sb - b), axis=1) - (float(diag.sum()) - diag)) / ((n - 1) * (n - 2))
    return full, loo


@dataclass(frozen=True)
class _ProfileR:
    """Position-level inference: the noise-corrected profile correlation and its jackknife."""

    r: float
    """Jackknife bias-corrected (mean of pseudo-values) disattenuated profile r."""
    se: float
    cov: float
    cov_se: float
    df: int

    def _t(self, null: float) -> float:
        return (self.r - null) / self.se

    def ci(self, level: float) -> tuple[float, float]:
        q = float(special.stdtrit(self.df, (1.0 + level) / 2.0))
        return _clip_r(self.r - q * self.se), _clip_r(self.r + q * self.se)

    def p_greater(self, null: float) -> float:
        """The p-value of H0: profile r <= ``null``."""
        return float(special.stdtr(self.df, -self._t(null)))

    def p_less(self, null: float) -> float:
        """The p-value of H0: profile r >= ``null``."""
        return float(special.stdtr(self.df, self._t(null)))

    def p_positive(self) -> float:
        """The p-value of H0: r <= 0, by a jackknife t-test of the profiles' covariance."""
        return float(special.stdtr(self.df, -self.cov / self.cov_se))


def _profile_r(x: FloatArray, y: FloatArray) -> _ProfileR | str:
    """The position-level (profile) correlation with its jackknife inference, or why not.

    The statistic is ``U_xy / sqrt(U_xx U_yy)`` with the U-statistic profile
    (co)variances of :func:`_profile_u_statistics` (the correlation of the
    column means, disattenuated for their sampling noise), jackknife
    bias-corrected: ``n r - (n - 1) mean(r_(-i))``. The CI and the SESOI tests use
    its delete-one-problem jackknife SE with t(n - 1) quantiles on the r scale;
    ``p_positive`` tests the covariance U_xy (same sign as r, bilinear, so its
    jackknife SE is nearly unbiased). Undefined (a reason string) when a
    variable's corrected profile variance is not positive, with all problems or
    with one left out: its position profile is not distinguishable from noise.
    """
    n = x.shape[0]
    if n < MIN_PROBLEMS:
        return f"fewer than {MIN_PROBLEMS} problems ({n})"
    xt = x - x.mean(axis=1, keepdims=True)
    yt = y - y.mean(axis=1, keepdims=True)
    cxy, lxy = _profile_u_statistics(xt, yt)
    for name, a in (("attention", xt), ("importance", yt)):
        c, loo = _profile_u_statistics(a, a)
        if not (c > 0 and np.all(loo > 0)):
            return (
                f"{name}'s position profile is not distinguishable from the noise of its "
                "column means (noise-corrected profile variance <= 0)"
            )
    cxx, lxx = _profile_u_statistics(xt, xt)
    cyy, lyy = _profile_u_statistics(yt, yt)
    r_full = cxy / float(_root_product(cxx, cyy))
    r_loo = lxy / _root_product(lxx, lyy)
    pseudo = n * r_full - (n - 1) * r_loo
    se = max(float(pseudo.std(ddof=1)) / math.sqrt(n), _TINY_SE)
    cov_se = math.sqrt((n - 1) / n * float(np.sum((lxy - lxy.mean()) ** 2)))
    return _ProfileR(r=float(pseudo.mean()), se=se, cov=cxy, cov_se=max(cov_se, _TINY_SE), df=n - 1)


def two_way_residuals(x: FloatArray) -> FloatArray:
    """Remove each problem's (row) and each position's (column) mean."""
    return x - x.mean(axis=1, keepdims=True) - x.mean(axis=0) + x.mean()


def _beyond_loo(x: FloatArray, y: FloatArray) -> FloatArray:
    """The r of two-way residuals with each problem left out in turn (closed form, O(n T))."""
    xt = x - x.mean(axis=1, keepdims=True)  # row-centred; leaving a row out changes only the
    yt = y - y.mean(axis=1, keepdims=True)  # column means of these
    m = x.shape[0] - 1
    col_x, col_y = xt.sum(axis=0) - xt, yt.sum(axis=0) - yt  # (n, T) column sums without i

    def loo_cov(a: FloatArray, b: FloatArray, ca: FloatArray, cb: FloatArray) -> FloatArray:
        return float(np.sum(a * b)) - np.sum(a * b, axis=1) - np.sum(ca * cb, axis=1) / m

    ref = (float(np.sum(xt * xt)), float(np.sum(yt * yt)))
    return _loo_r(
        loo_cov(xt, yt, col_x, col_y),
        loo_cov(xt, xt, col_x, col_x),
        loo_cov(yt, yt, col_y, col_y),
        ref,
    )


def _pooled_loo(x: FloatArray, y: FloatArray) -> FloatArray:
    """Pooled r over (problem, thought) pairs with each problem left out in turn."""
    xc, yc = x - x.mean(), y - y.mean()
    big_n = (x.shape[0] - 1) * x.shape[1]
    rx, ry = xc.sum(axis=1), yc.sum(axis=1)  # the full sums are zero after centring

    def loo_cov(a: FloatArray, b: FloatArray, ra: FloatArray, rb: FloatArray) -> FloatArray:
        return float(np.sum(a * b)) - np.sum(a * b, axis=1) - ra * rb / big_n

    ref = (float(np.sum(xc * xc)), float(np.sum(yc * yc)))
    return _loo_r(loo_cov(xc, yc, rx, ry), loo_cov(xc, xc, rx, rx), loo_cov(yc, yc, ry, ry), ref)


def _problem_permutation_p(
    xr: FloatArray, yr: FloatArray, observed: float, n_perm: int, rng: np.random.Generator
) -> float:
    """The p-value of H0: problems' attention and importance vectors are independent.

    Whole rows of the two-way residuals of attention are permuted against those
    of importance (two-way demeaning commutes with permuting rows, so this is
    the statistic recomputed on permuted raw data); p = (k + 1) / (n_perm + 1).
    """
    n = xr.shape[0]
    gram = xr @ yr.T  # gram[j, i]: attention residuals of problem j . importance of problem i
    scale = float(_root_product(float(np.sum(xr * xr)), float(np.sum(yr * yr))))
    cols = np.arange(n)
    k = 0
    for size in _chunks(n_perm, n):
        perms = rng.permuted(np.broadcast_to(cols, (size, n)), axis=1)
        null = gram[perms, cols].sum(axis=1) / scale
        k += int(np.sum(null >= observed - _TIE_RTOL))
    return (k + 1) / (n_perm + 1)


MIN_TARGET_SHARE = 0.05
"""RQ2 judges nothing when fewer than this share of importance values reach their SESOI."""


def negligible_share(values: FloatArray, sesoi: float) -> tuple[int, int] | None:
    """An effect too rare to judge anything by: (how many reach the SESOI, how many).

    None when at least ``MIN_TARGET_SHARE`` of ``values`` reach ``sesoi`` in magnitude.
    """
    large = int((np.abs(values) >= sesoi).sum())
    return (large, int(values.size)) if large < MIN_TARGET_SHARE * values.size else None


def _rq2_inconclusive(
    reason: str, n: int, sesoi: float, level: float, verdict: Outcome
) -> StatResult:
    """A degenerate RQ2 result: nan statistic, p = 1, the reason in ``method`` and the verdict."""
    base = replace(inconclusive(reason, n, "greater"), ci_level=level, verdict=verdict)
    if verdict == "descriptive":
        return replace(base, verdict_reason="reported only; decides nothing")
    return replace(base, sesoi=sesoi, p_sesoi=1.0, p_equivalence=1.0, verdict_reason=base.method)


def _r_result(
    r: float,
    loo: FloatArray,
    *,
    p_value: float | None,
    method: str,
    sesoi: float,
    level: float,
    alpha: float,
    verdict: Outcome | None = None,
) -> StatResult:
    """Assemble an RQ2 result from r, its leave-one-out values and (optionally) its own p."""
    n = loo.size
    z, se = _fisher_jackknife(r, loo)
    if math.isnan(se):
        reason = "leaving a problem out makes a variable constant (jackknife undefined)"
        return _rq2_inconclusive(reason, n, sesoi, level, verdict or "inconclusive")
    inf = _RInference(z=z, se=se, df=n - 1)
    low, high = inf.ci(level)
    result = StatResult(
        statistic=r,
        p_value=inf.p_greater(0.0) if p_value is None else p_value,
        ci_low=low,
        ci_high=high,
        n=n,
        method=method,
        alternative="greater",
        ci_level=level,
        sesoi=sesoi,
        p_sesoi=inf.p_greater(sesoi),
        p_equivalence=inf.p_less(sesoi),
    )
    if verdict is not None:  # descriptive: no SESOI, no tests against it
        return replace(
            result,
            sesoi=None,
            p_sesoi=None,
            p_equivalence=None,
            verdict=verdict,
            verdict_reason="reported only; decides nothing",
        )
    return result.with_verdict(alpha)


_JACKKNIFE = "delete-one-problem jackknife on Fisher z, t(n-1)"
_PROFILE = "delete-one-problem jackknife SE, t(n-1), on the r scale (clipped to [-1, 1])"


def rq2_tests(
    attention: ArrayLike,
    importance: ArrayLike,
    *,
    alpha: float = 0.05,
    seed: Seed = 0,
    sesoi_r: float = SESOI_R,
    n_perm: int = 5000,
    ci_level: float | None = None,
    sesoi_target: float | None = None,
    target: str = "importance",
) -> Rq2Tests:
    """Does attention predict importance? Three questions on ``(n_problems, n_thoughts)`` arrays.

    Rows with a nan in either array are dropped (counted in ``n_dropped``).
    Every CI is two-sided at ``1 - 2 alpha`` (unless ``ci_level``) and comes
    from a delete-one-problem jackknife with t(n - 1) quantiles (on Fisher's z
    for ``beyond_position`` and ``pooled``; the cluster jackknife, "CV3");
    ``p_sesoi`` (H0: r <= sesoi_r) and ``p_equivalence`` (H0: r >= sesoi_r)
    invert that same interval. All p-values are one-sided (a positive association is the claim).

    - ``position``: the correlation of the population mean profiles (one point
      per thought position). The plain r of the column means is attenuated by
      their sampling noise (it under-covered a strong profile correlation), so
      the statistic uses U-statistic profile (co)variances, which leave out each
      problem's product with itself, and is jackknife bias-corrected; its CI and
      SESOI tests are a delete-one-problem jackknife t(n - 1) interval on the r
      scale, clipped to [-1, 1]; ``p_value`` is the jackknife-t test of the
      profiles' (U-statistic) covariance, H0: r <= 0. Inconclusive when a
      variable's noise-corrected profile variance is not positive.
    - ``beyond_position``: the Gaussian rank correlation beyond position. Each
      array is replaced by its pooled van der Waerden normal scores
      (:func:`pooled_normal_scores`: ``Phi^-1(rank / (N + 1))`` over all
      ``n_problems * n_thoughts`` entries), then the statistic is r of the
      two-way residuals of the scores (each problem's and each position's mean
      removed; the standardised slope of the problem + position fixed-effects
      regression on the scores). Its estimand is that statistic on the whole
      population of problems, which equals the Pearson residual r when both
      variables are Normal. ``p_value`` is an exact permutation test
      (``n_perm`` permutations) that pairs whole problems' attention score
      vectors with other problems' importance score vectors (the scores of one
      array do not depend on how its rows are paired, so this is the statistic
      recomputed on permuted data). The jackknife leaves each problem's
      residual scores out without re-ranking the rest. Why scores: on raw
      values a few problems carried most of the residual covariance of the
      bundled model's attention (per-problem contributions with kurtosis ~15),
      and the Fisher-z jackknife CI covered only 0.92-0.94 at two of its six
      layers; on normal scores it covers 0.933-0.968 at every layer and n = 10,
      30, 100 (``tests/test_stats_calibration.py``). Inconclusive when the raw
      values (or their scores) have no variation beyond the two baselines. Every
      question is inconclusive (with the reason) on degenerate data: fewer than 3
      thoughts, an inf value, too few problems; a malformed call (shapes) raises.
    - ``pooled``: Pearson r over all pairs as in earlier work; its ``p_value`` is
      scipy's naive one (treats pairs as independent); verdict ``descriptive``.

    Verdicts (family of one; see :func:`holm_rq2` for layers): supported when
    ``p_value`` and ``p_sesoi`` are below ``alpha`` and the CI lies above
    ``sesoi_r``; refuted when ``p_equivalence`` is below ``alpha`` and the CI
    lies below ``sesoi_r``; inconclusive otherwise.

    ``sesoi_target`` (the importance's own SESOI, e.g. 0.1 nats): when fewer than
    ``MIN_TARGET_SHARE`` of the (problem, thought) importance values reach it in magnitude,
    every question is inconclusive: there is no importance for attention to predict, and a
    correlation with noise-level effects (a model whose thoughts are unused) would say
    "attention predicts importance" about nothing. ``target`` names the predicted quantity
    in that reason (e.g. "the knockout effect").
    """
    level = _decision_level(alpha, ci_level)
    sesoi = _check_sesoi(sesoi_r)
    if n_perm < 1:
        raise ValueError(f"n_perm must be >= 1, got {n_perm}")

    def fallback(reason: str) -> Rq2Tests:
        deciding = _rq2_inconclusive(reason, n, sesoi, level, "inconclusive")
        pooled = _rq2_inconclusive(reason, n, sesoi, level, "descriptive")
        return Rq2Tests(deciding, deciding, pooled, n_dropped=dropped)

    try:
        x, y, dropped = _rq2_arrays(attention, importance)
    except DegenerateData as err:  # e.g. fewer than 3 thoughts: every question inconclusive
        n, dropped = int(np.shape(attention)[0]), 0
        return fallback(str(err))
    n = x.shape[0]
    result = functools.partial(_r_result, sesoi=sesoi, level=level, alpha=alpha)

    if n < MIN_PROBLEMS:
        return fallback(f"fewer than {MIN_PROBLEMS} problems ({n})")
    rare = None if sesoi_target is None else negligible_share(y, sesoi_target)
    if rare is not None:
        return fallback(
            f"{target} is negligible: it reaches the SESOI ({sesoi_target:g}) in magnitude "
            f"in {rare[0]} of {rare[1]} (problem, thought) pairs (< {MIN_TARGET_SHARE:.0%}), so "
            "there is nothing for attention to predict"
        )
    for name, arr in (("attention", x), ("importance", y)):
        if is_constant(arr):
            return fallback(f"{name} is constant")
    x = x - x.mean()  # Pearson r is shift invariant; centring keeps the sums well conditioned
    y = y - y.mean()

    mx, my = x.mean(axis=0), y.mean(axis=0)
    profile = next(
        (name for name, m, a in (("attention", mx, x), ("importance", my, y)) if is_constant(m, a)),
        None,
    )
    if profile is not None:
        position = _rq2_inconclusive(
            f"{profile} has no position profile (equal column means)",
            n,
            sesoi,
            level,
            "inconclusive",
        )
    else:
        prof = _profile_r(x, y)
        if isinstance(prof, str):
            position = _rq2_inconclusive(prof, n, sesoi, level, "inconclusive")
        else:
            low, high = prof.ci(level)
            position = StatResult(
                statistic=_clip_r(prof.r),
                p_value=prof.p_positive(),
                ci_low=low,
                ci_high=high,
                n=n,
                method=(
                    f"position level: correlation of the {x.shape[1]} per-thought mean profiles, "
                    "corrected for the noise of the column means (U-statistic profile "
                    "covariances) and jackknife bias-corrected; p: jackknife t-test of the "
                    f"profiles' covariance (H0: r <= 0); CI, p_sesoi, p_equivalence: {_PROFILE}"
                ),
                alternative="greater",
                ci_level=level,
                sesoi=sesoi,
                p_sesoi=prof.p_greater(sesoi),
                p_equivalence=prof.p_less(sesoi),
            ).with_verdict(alpha)

    xr, yr = two_way_residuals(x), two_way_residuals(y)
    flat = next(
        (
            name
            for name, res, a in (("attention", xr, x), ("importance", yr, y))
            if is_constant(res, a)
        ),
        None,
    )
    if flat is None and not math.isfinite(_pearson(xr, yr)):  # squares of residuals underflow
        flat = "attention or importance"
    # The statistic and all its inference use the pooled normal scores (the raw values decide
    # only whether there is anything beyond the baselines at all).
    xs, ys = pooled_normal_scores(x), pooled_normal_scores(y)
    xsr, ysr = two_way_residuals(xs), two_way_residuals(ys)
    if flat is None:
        flat = next(
            (
                f"{name} (normal scores)"
                for name, res, a in (("attention", xsr, xs), ("importance", ysr, ys))
                if is_constant(res, a)
            ),
            None,
        )
    if flat is not None:
        reason = f"{flat} has no variation beyond the problem and position baselines"
        beyond = _rq2_inconclusive(reason, n, sesoi, level, "inconclusive")
    else:
        r_beyond = _pearson(xsr, ysr)
        p_perm = _problem_permutation_p(xsr, ysr, r_beyond, n_perm, np.random.default_rng(seed))
        beyond = result(
            r_beyond,
            _beyond_loo(xs, ys),
            p_value=p_perm,
            method=(
                "beyond position: r of two-way demeaned pooled normal scores (problem and "
                f"position removed); p: permutation of whole problems ({n_perm}); CI, p_sesoi, "
                f"p_equivalence: {_JACKKNIFE} (scores fixed)"
            ),
        )

    r_pooled = _pearson(x, y)
    df = x.size - 2
    naive_t = (
        r_pooled * math.sqrt(df / (1.0 - r_pooled**2)) if abs(r_pooled) < 1 else r_pooled * math.inf
    )
    naive_p = float(special.stdtr(df, -naive_t))  # scipy.stats.pearsonr's p, "greater"
    pooled = result(
        r_pooled,
        _pooled_loo(x, y),
        p_value=naive_p,
        method=f"pooled r; p naive (treats pairs as independent); CI: {_JACKKNIFE}",
        verdict="descriptive",
    )
    return Rq2Tests(position, beyond, pooled, n_dropped=dropped)


def holm_rq2(tests: Sequence[Rq2Tests], *, alpha: float = 0.05) -> list[Rq2Tests]:
    """Holm across a family (e.g. layers) within each question; verdicts recomputed.

    ``alpha`` must be the one the tests were computed with.
    """
    columns = {
        name: apply_holm_verdicts([getattr(t, name) for t in tests], alpha=alpha)
        for name in Rq2Tests.QUESTIONS
    }
    return [
        replace(
            t,
            position=columns["position"][i],
            beyond_position=columns["beyond_position"][i],
            pooled=columns["pooled"][i],
        )
        for i, t in enumerate(tests)
    ]
