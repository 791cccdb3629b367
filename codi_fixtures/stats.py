"""Paired tests (RQ1), Holm correction and problem-aware correlation tests (RQ2).

Pure numpy/scipy. Every random procedure takes ``seed`` (an ``int`` or a
``numpy.random.Generator``, used as is), so results are reproducible.

RQ1 compares a clean and an ablated run of the same problems: the problem is
the independent unit. RQ2 correlates attention with importance over
(problem, thought) pairs; the thoughts of one problem are not independent, so
besides the pooled correlation (comparable with earlier work) this module
offers a within-problem permutation test, a position-centred test and a
problem-level (cluster) bootstrap CI.

Degenerate RQ2 inputs (fewer than ``MIN_PROBLEMS`` problems, or a variable
that is constant) do not raise: they return a result with ``statistic=nan``,
``p_value=1.0`` and a ``method`` that says why, so that the caller can report
the test as inconclusive. Malformed inputs (wrong shape, mismatched lengths,
non-finite values, too few observations for RQ1) raise ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

__all__ = [
    "MIN_PROBLEMS",
    "Alternative",
    "CorrelationMethod",
    "ShiftMethod",
    "StatResult",
    "apply_holm",
    "bootstrap_ci",
    "cluster_bootstrap_ci",
    "flip_rate",
    "holm",
    "inconclusive",
    "is_constant",
    "mcnemar_accuracy_drop",
    "paired_shift_test",
    "pooled_correlation",
    "position_centred_correlation",
    "within_problem_permutation_test",
]

Alternative = Literal["greater", "less", "two-sided"]
CorrelationMethod = Literal["pearson", "spearman"]
ShiftMethod = Literal["wilcoxon", "permutation"]
Seed = int | np.random.Generator
FloatArray = NDArray[np.float64]

MIN_PROBLEMS = 3
"""Fewer problems than this make an RQ2 result inconclusive (nan statistic)."""

_ALTERNATIVES = ("greater", "less", "two-sided")
_CORRELATION_METHODS = ("pearson", "spearman")
_EXACT_SIGN_FLIP_MAX_N = 16
_CHUNK_ELEMENTS = 1 << 21  # bound the memory of batched resamples (~16 MiB of float64)
_TIE_RTOL = 1e-10  # null statistics this close to the observed one count as ties
_CONSTANT_RTOL = float(np.finfo(np.float64).eps ** 0.75)  # scipy's near-constant threshold


@dataclass(frozen=True)
class StatResult:
    """One test's effect size, p-value and CI, ready for a report."""

    statistic: float
    """The effect size or test statistic; nan when the input was degenerate."""
    p_value: float
    """The p-value for ``alternative``; 1.0 when the input was degenerate."""
    ci_low: float
    """Lower end of the two-sided percentile bootstrap CI (nan when not computed)."""
    ci_high: float
    """Upper end of the two-sided percentile bootstrap CI (nan when not computed)."""
    n: int
    """Number of independent units (problems)."""
    method: str
    """What was computed, e.g. ``"exact McNemar (sign test)"``, or why it is inconclusive."""
    alternative: str = "two-sided"
    """The alternative hypothesis the p-value refers to."""
    p_corrected: float | None = None
    """The multiplicity-adjusted p-value, set by ``with_corrected`` or ``apply_holm``."""

    @property
    def inconclusive(self) -> bool:
        """True when the input was degenerate and the statistic is nan."""
        return math.isnan(self.statistic)

    def with_corrected(self, p_corrected: float) -> StatResult:
        """Return a copy carrying an adjusted p-value."""
        return replace(self, p_corrected=float(p_corrected))

    def as_dict(self) -> dict[str, float | int | str]:
        """Return the fields as a flat dict (``p_corrected`` only when set)."""
        out: dict[str, float | int | str] = {
            "statistic": self.statistic,
            "p_value": self.p_value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "n": self.n,
            "method": self.method,
            "alternative": self.alternative,
        }
        if self.p_corrected is not None:
            out["p_corrected"] = self.p_corrected
        return out


# --------------------------------------------------------------------------- input checks


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
        raise ValueError(f"{name} needs at least {min_n} observations, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values (nan or inf)")
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
        raise ValueError(f"{name} needs at least 2 thoughts per problem, got {arr.shape[1]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values (nan or inf)")
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


def _bootstrap_mean_ci(
    values: FloatArray, n_boot: int, alpha: float, rng: np.random.Generator
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, vectorised; nan when ``n_boot == 0``."""
    if n_boot == 0:
        return math.nan, math.nan
    n = values.size
    means = [values[rng.integers(0, n, (size, n))].mean(axis=1) for size in _chunks(n_boot, n)]
    return _percentile_ci(np.concatenate(means), alpha)


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


def mcnemar_accuracy_drop(
    clean_correct: ArrayLike,
    ablated_correct: ArrayLike,
    *,
    alternative: Alternative = "greater",
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: Seed = 0,
) -> StatResult:
    """Exact McNemar test of accuracy(clean) - accuracy(ablated), paired over problems.

    b counts problems right when clean and wrong when ablated, c the reverse;
    under the null b ~ Binomial(b + c, 1/2). ``alternative="greater"`` tests
    for a drop. p is 1.0 when there are no discordant pairs. The CI is a
    percentile bootstrap over problems (``n_boot=0`` skips it).
    """
    _check_choice(alternative, _ALTERNATIVES, "alternative")
    _check_resampling(n_boot, alpha)
    clean, ablated = _paired_bools(clean_correct, ablated_correct)
    b = int(np.sum(clean & ~ablated))
    c = int(np.sum(~clean & ablated))
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5, alternative=alternative).pvalue)
    diff = clean.astype(np.float64) - ablated.astype(np.float64)
    low, high = _bootstrap_mean_ci(diff, n_boot, alpha, np.random.default_rng(seed))
    return StatResult(
        statistic=float(diff.mean()),
        p_value=p,
        ci_low=low,
        ci_high=high,
        n=int(clean.size),
        method=f"exact McNemar (sign test on b={b}, c={c} discordant problems)",
        alternative=alternative,
    )


def _wilcoxon_p(deltas: FloatArray, alternative: str) -> float:
    """Wilcoxon signed-rank p-value (zeros dropped); 1.0 when every delta is zero."""
    if not np.any(deltas != 0):
        return 1.0
    res = stats.wilcoxon(deltas, zero_method="wilcox", alternative=alternative)
    return float(res.pvalue)


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
    method: ShiftMethod = "wilcoxon",
    n_perm: int = 10000,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: Seed = 0,
) -> StatResult:
    """Test whether per-problem deltas (e.g. clean - ablated log p) are shifted from zero.

    The statistic is the mean delta. ``method="wilcoxon"`` uses scipy's
    signed-rank test with ``zero_method="wilcox"`` (p = 1.0 when all deltas
    are zero); ``method="permutation"`` flips signs, exactly for n <= 16 and
    otherwise with ``n_perm`` random flips and p = (k + 1) / (n_perm + 1).
    The CI is a percentile bootstrap of the mean (``n_boot=0`` skips it).
    """
    _check_choice(alternative, _ALTERNATIVES, "alternative")
    _check_choice(method, ("wilcoxon", "permutation"), "method")
    _check_resampling(n_boot, alpha, n_perm=n_perm)
    d = _vector(deltas, "deltas", min_n=2)
    rng = np.random.default_rng(seed)
    if method == "wilcoxon":
        p, label = _wilcoxon_p(d, alternative), "Wilcoxon signed-rank (zero_method='wilcox')"
    else:
        p, label = _sign_flip_p(d, alternative, n_perm, rng)
    low, high = _bootstrap_mean_ci(d, n_boot, alpha, rng)
    return StatResult(
        statistic=float(d.mean()),
        p_value=p,
        ci_low=low,
        ci_high=high,
        n=int(d.size),
        method=label,
        alternative=alternative,
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


# --------------------------------------------------------------------------- RQ2


def is_constant(values: FloatArray, reference: FloatArray | None = None) -> bool:
    """True when ``values`` is (nearly) constant, judged against the size of ``reference``.

    This is scipy's near-constant criterion; ``reference`` (default ``values``)
    lets residuals be judged against the data they came from.
    """
    ref = values if reference is None else reference
    centred_norm = float(np.linalg.norm(values - values.mean()))
    return centred_norm <= _CONSTANT_RTOL * float(np.linalg.norm(ref))


def inconclusive(reason: str, n: int, alternative: str) -> StatResult:
    """Result for a degenerate input: nan statistic, p = 1, the reason in ``method``."""
    return StatResult(
        statistic=math.nan,
        p_value=1.0,
        ci_low=math.nan,
        ci_high=math.nan,
        n=n,
        method=f"inconclusive: {reason}",
        alternative=alternative,
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


def _pooled_ranks(values: FloatArray) -> FloatArray:
    """Average ranks of all entries pooled, in the original (problem, thought) shape."""
    return stats.rankdata(values, axis=None).reshape(values.shape)


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
    scale = np.sqrt(np.sum(xc * xc, axis=1) * np.sum(yc * yc, axis=1))
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
        statistic=float(res.statistic),
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
    scale = float(np.sqrt(np.sum(xc * xc) * np.sum(yc * yc)))
    observed = float(np.sum(xc * yc)) / scale
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
