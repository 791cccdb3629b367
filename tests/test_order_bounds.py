"""The distribution-free trimmed-mean bound: exact coverage, validity, duality, power."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from codi_fixtures.stats.order_bounds import (
    TrimmedMeanBounds,
    _bands,
    _binomial_steps,
    _blocks,
    _coverages,
    fewest_to_bound,
)

TRIM = 0.2


def _population_trimmed_mean(atoms: np.ndarray, probs: np.ndarray, trim: float) -> float:
    """The trimmed mean of a discrete distribution: its quantile function over [trim, 1-trim]."""
    order = np.argsort(atoms)
    atoms, cum = atoms[order], np.cumsum(probs[order])
    edges = np.concatenate([[0.0], cum])
    overlap = np.clip(np.minimum(edges[1:], 1 - trim) - np.maximum(edges[:-1], trim), 0.0, None)
    return float(overlap @ atoms / (1 - 2 * trim))


@pytest.mark.parametrize("n", [10, 30, 100])
def test_band_coverage_is_the_uniform_order_statistics_probability(n: int) -> None:
    """Each band's computed coverage matches simulated uniform order statistics (4 SE)."""
    _, _, ends = _blocks(n, TRIM)
    bands, coverage = _bands(n, TRIM)
    rng = np.random.default_rng(n)
    uniforms = np.sort(rng.random((40_000, n)), axis=1)
    for row in np.linspace(0, len(bands) - 1, 6).round().astype(int):
        held = np.all(uniforms[:, bands[row] - 1] >= ends, axis=1).mean()
        se = math.sqrt(coverage[row] * (1 - coverage[row]) / uniforms.shape[0])
        assert abs(held - coverage[row]) <= 4 * se + 1e-12, (row, held, coverage[row])
    assert np.all(np.diff(coverage) >= -1e-12)  # wider bands never cover less
    assert np.all(bands[-1] == n)
    assert coverage[-1] == pytest.approx(1 - (1 - TRIM) ** n)  # the best any sample can do


@pytest.mark.parametrize("n", [10, 30, 100])
def test_valid_where_the_bootstrap_is_not(n: int) -> None:
    """Most values 0, 21% at 6: population trimmed mean exactly 0.1, the null's boundary.

    A sample often misses the rare large values; "below 0.1" must stay at most alpha.
    """
    atoms, probs = np.array([0.0, 6.0]), np.array([0.79, 0.21])
    truth = _population_trimmed_mean(atoms, probs, TRIM)
    assert truth == pytest.approx(0.1)
    rng = np.random.default_rng(3)
    p = [
        TrimmedMeanBounds.of(rng.choice(atoms, n, p=probs) + rng.normal(0, 0.01, n), TRIM).p_less(
            truth
        )
        for _ in range(2000)
    ]
    assert np.mean(np.array(p) < 0.05) <= 0.05


def test_never_below_when_n_cannot_tell() -> None:
    """At n = 10 no sample bounds a 20% trimmed mean at 95%: 1 - 0.8^10 = 0.89 at best."""
    ten = TrimmedMeanBounds.of(np.zeros(10), TRIM)
    assert ten.p_less(1.0) == pytest.approx(0.8**10)
    assert ten.upper_bound(0.95) == math.inf
    assert TrimmedMeanBounds.of(np.zeros(14), TRIM).upper_bound(0.95) == 0.0  # 0.8^14 = 0.044


@pytest.mark.parametrize("null", [-0.2, 0.0, 0.1, 0.3, 0.6])
def test_p_and_bound_are_dual(null: float) -> None:
    """A p below alpha exactly when the (1 - alpha) upper bound is below the null."""
    bounds = TrimmedMeanBounds.of(np.random.default_rng(5).normal(0.0, 1.0, 60), TRIM)
    for alpha in (0.01, 0.05, 0.1, 0.3):
        below = bounds.upper_bound(1 - alpha) < null
        assert (bounds.p_less(null) <= alpha) == below


def _dense_steps(n: int, q: float) -> np.ndarray:
    """Every binomial transition, evaluated: the reference the banded steps leave tails out of."""
    counts = np.arange(n + 1)
    new = counts[None, :] - counts[:, None]
    left = (n - counts)[:, None]
    return np.where(new >= 0, stats.binom.pmf(np.clip(new, 0, None), left, q), 0.0)


@pytest.mark.parametrize(("n", "q"), [(5, 0.3), (60, 0.01), (300, 0.004), (300, 0.21), (300, 0.9)])
def test_banded_binomial_steps_drop_only_a_negligible_tail(n: int, q: float) -> None:
    """Each left-out transition is below 1e-15 and the banded rows never sum above the dense."""
    banded, dense = _binomial_steps(n, q), _dense_steps(n, q)
    kept = banded != 0.0
    np.testing.assert_array_equal(banded[kept], dense[kept])
    assert dense[~kept].max(initial=0.0) < 1e-15
    assert np.all(banded.sum(axis=1) <= dense.sum(axis=1) + 1e-15)


@pytest.mark.parametrize("n", [10, 57, 211])
def test_coverages_equal_the_dense_dynamic_programme(n: int) -> None:
    """The banded DP gives the dense DP's coverages (and so the same p-values and bounds)."""
    _, _, ends = _blocks(n, TRIM)
    bands, coverage = _bands(n, TRIM)
    counts = np.arange(n + 1)
    probs = np.zeros((bands.shape[0], n + 1))
    probs[:, 0] = 1.0
    previous = 0.0
    for k, t in enumerate(ends):
        probs = probs @ _dense_steps(n, (t - previous) / (1.0 - previous))
        probs[counts[None, :] >= bands[:, k : k + 1]] = 0.0
        previous = float(t)
    np.testing.assert_allclose(coverage, probs.sum(axis=1), rtol=0, atol=1e-14)
    np.testing.assert_array_equal(coverage, _coverages(n, ends, bands))


@pytest.mark.parametrize("level", [0.8, 0.9, 0.95])
def test_two_sided_interval_ends_are_dual_to_both_p_values(level: float) -> None:
    """Each end of ``ci(level)`` rejects exactly the nulls its one-sided p puts below the tail."""
    x = np.random.default_rng(11).lognormal(0.0, 0.8, 80) - 1.0
    bounds = TrimmedMeanBounds.of(x, TRIM)
    low, high = bounds.ci(level)
    assert (low, high) == (
        bounds.lower_bound(1 - (1 - level) / 2),
        bounds.upper_bound(1 - (1 - level) / 2),
    )
    tail = (1 - level) / 2
    for null in np.linspace(low - 1.0, high + 1.0, 41):
        assert (bounds.p_less(null) <= tail) == (high < null)
        assert (bounds.p_greater(null) <= tail) == (low > null)


def test_lower_bounds_mirror_upper_bounds() -> None:
    """The lower bound of X is minus the upper bound of -X, and valid on the mirrored mixture."""
    x = np.random.default_rng(8).lognormal(0.0, 1.0, 50)
    assert TrimmedMeanBounds.of(x, TRIM).lower_bound(0.9) == -TrimmedMeanBounds.of(
        -x, TRIM
    ).upper_bound(0.9)
    assert TrimmedMeanBounds.of(x, TRIM).p_greater(0.2) == TrimmedMeanBounds.of(-x, TRIM).p_less(
        -0.2
    )
    atoms, probs = np.array([0.0, -6.0]), np.array([0.79, 0.21])
    rng = np.random.default_rng(9)
    p = [
        TrimmedMeanBounds.of(rng.choice(atoms, 30, p=probs), TRIM).p_greater(-0.1)
        for _ in range(2000)
    ]
    assert np.mean(np.array(p) < 0.05) <= 0.05


@pytest.mark.parametrize("n", [20, 30, 300])
def test_tied_values_never_reject_their_own_value(n: int) -> None:
    """A point mass at c has trimmed mean c: "below c" and "above c" must both keep p = 1.

    (The weights sum to 1 only up to rounding; an unclipped bound sat 1e-17 below c.)
    The n = 300 case goes through merged blocks.
    """
    bounds = TrimmedMeanBounds.of(np.full(n, 0.1), TRIM)
    assert bounds.p_less(0.1) == 1.0
    assert bounds.p_greater(0.1) == 1.0
    assert bounds.upper_bound(0.95) >= 0.1
    assert bounds.lower_bound(0.95) <= 0.1


def test_merged_blocks_are_still_exact() -> None:
    """At n = 300 blocks are merged: coverage still matches simulated order statistics."""
    n = 300
    _, _, ends = _blocks(n, TRIM)
    assert ends.size <= 100
    bands, coverage = _bands(n, TRIM)
    uniforms = np.sort(np.random.default_rng(12).random((20_000, n)), axis=1)
    for row in (0, len(bands) // 8, len(bands) // 4):
        held = np.all(uniforms[:, bands[row] - 1] >= ends, axis=1).mean()
        se = math.sqrt(coverage[row] * (1 - coverage[row]) / uniforms.shape[0])
        assert abs(held - coverage[row]) <= 4 * se + 1e-12, (row, held, coverage[row])


def test_power_at_a_hundred_problems() -> None:
    """Normal data, trimmed mean 0, SD 1: shown below +0.5 SD in most samples of 100."""
    rng = np.random.default_rng(6)
    p = [TrimmedMeanBounds.of(rng.normal(0, 1, 100), TRIM).p_less(0.5) for _ in range(300)]
    assert np.mean(np.array(p) < 0.05) >= 0.8


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="trim must be in"):
        TrimmedMeanBounds.of(np.zeros(5), 0.0)
    with pytest.raises(ValueError, match="finite"):
        TrimmedMeanBounds.of(np.array([0.0, math.nan]), TRIM).p_less(1.0)


def test_population_helper_matches_scipy_on_a_large_sample() -> None:
    atoms, probs = np.array([-1.0, 0.0, 5.0]), np.array([0.3, 0.5, 0.2])
    sample = np.random.default_rng(7).choice(atoms, 200_000, p=probs)
    assert _population_trimmed_mean(atoms, probs, TRIM) == pytest.approx(
        stats.trim_mean(sample, TRIM), abs=0.01
    )


@pytest.mark.parametrize(("level", "trim"), [(0.025, 0.2), (0.05, 0.2), (0.01, 0.1)])
def test_fewest_to_bound_is_the_sample_size_where_a_bound_first_reaches_the_level(level, trim):
    """Below it no sample, however far from the null, gets p < level; at it a clear one does."""
    n = fewest_to_bound(level, trim)
    assert (1 - trim) ** n < level <= (1 - trim) ** (n - 1)
    far = np.linspace(50.0, 60.0, n)  # every value far above the null 0
    assert TrimmedMeanBounds.of(far, trim).p_greater(0.0) < level
    assert TrimmedMeanBounds.of(far[1:], trim).p_greater(0.0) >= level
