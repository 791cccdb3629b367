"""Unit tests for codi_fixtures.stats: known answers, planted effects, null calibration."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import get_args

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats as sps

from codi_fixtures.stats import (
    MIN_PROBLEMS,
    SESOI_R,
    StatResult,
    Verdict,
    accuracy_drop_effect,
    apply_holm,
    apply_holm_verdicts,
    bootstrap_ci,
    cluster_bootstrap_ci,
    decide,
    flip_rate,
    holm,
    holm_rq2,
    mcnemar_accuracy_drop,
    mean_effect,
    paired_shift_test,
    pooled_correlation,
    position_centred_correlation,
    pvalue_or_one,
    rq2_tests,
    within_problem_permutation_test,
)
from codi_fixtures.stats.composition import trend_test
from codi_fixtures.stats.decoding import equivalence_effect
from codi_fixtures.stats.inference import _tango_z, inconclusive_verdict
from codi_fixtures.stats.order_bounds import TrimmedMeanBounds

ALPHA = 0.05
MAX_FALSE_POSITIVE = 0.08  # 0.05 plus about three binomial SDs at 300-500 simulations
MIN_FALSE_POSITIVE = 0.01  # a calibrated continuous test is not absurdly conservative
N_THOUGHTS = 6

CorrelationTest = Callable[..., StatResult]
RQ2_TESTS = [pooled_correlation, within_problem_permutation_test, position_centred_correlation]


def _rate(p_values: list[float]) -> float:
    """Fraction of p-values below ALPHA."""
    return float(np.mean(np.asarray(p_values) < ALPHA))


def _offset_data(
    rng: np.random.Generator, *, shared: bool, n_problems: int = 30, offset_sd: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """Attention/importance with per-problem offsets and no within-problem association."""
    a = rng.normal(0.0, offset_sd, (n_problems, 1))
    b = a if shared else rng.normal(0.0, offset_sd, (n_problems, 1))
    x = a + rng.normal(size=(n_problems, N_THOUGHTS))
    y = b + rng.normal(size=(n_problems, N_THOUGHTS))
    return x, y


def _profile_data(
    rng: np.random.Generator, *, n_problems: int = 30
) -> tuple[np.ndarray, np.ndarray]:
    """Attention/importance sharing only a fixed per-thought profile, plus independent noise."""
    profile = np.linspace(2.0, -1.0, N_THOUGHTS)
    x = profile + rng.normal(size=(n_problems, N_THOUGHTS))
    y = 0.5 * profile + rng.normal(size=(n_problems, N_THOUGHTS))
    return x, y


def _within_signal_data(
    rng: np.random.Generator, *, n_problems: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """Attention/importance sharing a within-problem signal and a profile; unrelated offsets."""
    signal = rng.normal(size=(n_problems, N_THOUGHTS))
    profile = np.linspace(2.0, -1.0, N_THOUGHTS)
    x = profile + rng.normal(0.0, 2.0, (n_problems, 1)) + signal + rng.normal(size=signal.shape)
    y = profile + rng.normal(0.0, 2.0, (n_problems, 1)) + signal + rng.normal(size=signal.shape)
    return x, y


class TestResultType:
    def test_as_dict_and_correction(self) -> None:
        """as_dict is flat and carries p_corrected only once it is set."""
        result = StatResult(0.1, 0.02, 0.0, 0.2, 10, "m", "greater")
        assert "p_corrected" not in result.as_dict()
        corrected = result.with_corrected(0.04)
        assert corrected.as_dict()["p_corrected"] == 0.04
        assert result.p_corrected is None
        assert not corrected.inconclusive

    def test_apply_holm_sets_adjusted_copies(self) -> None:
        """apply_holm attaches the Holm-adjusted p-values in input order."""
        results = [StatResult(0.0, p, 0.0, 0.0, 5, "m") for p in (0.01, 0.04, 0.03)]
        adjusted = [r.p_corrected for r in apply_holm(results)]
        assert adjusted == pytest.approx([0.03, 0.06, 0.06])


class TestHolm:
    def test_known_values(self) -> None:
        """Holm on [0.01, 0.04, 0.03] gives [0.03, 0.06, 0.06]."""
        assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])

    def test_caps_at_one_and_handles_empty(self) -> None:
        """Adjusted p-values never exceed 1; an empty family stays empty."""
        assert holm([0.5, 0.9]) == [1.0, 1.0]
        assert holm([]) == []

    @given(st.lists(st.floats(min_value=0.0, max_value=1.0), max_size=30))
    def test_properties(self, p_values: list[float]) -> None:
        """Adjusted p-values are >= raw, <= 1, keep the order of the raw ones, start at m*min."""
        adjusted = holm(p_values)
        assert len(adjusted) == len(p_values)
        for raw, adj in zip(p_values, adjusted, strict=True):
            assert raw <= adj <= 1.0
        order = np.argsort(p_values, kind="stable")
        assert np.all(np.diff(np.asarray(adjusted)[order]) >= 0)
        if p_values:
            assert min(adjusted) == pytest.approx(min(1.0, len(p_values) * min(p_values)))

    def test_rejects_invalid_p(self) -> None:
        """A p-value outside [0, 1] is refused."""
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            holm([0.2, 1.5])


class TestMcNemar:
    @staticmethod
    def _counts(b: int, c: int, both_right: int, both_wrong: int) -> tuple[list[int], list[int]]:
        clean = [1] * b + [0] * c + [1] * both_right + [0] * both_wrong
        ablated = [0] * b + [1] * c + [1] * both_right + [0] * both_wrong
        return clean, ablated

    @pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
    def test_p_is_mcnemars_asymptotic_test(self, alternative: str) -> None:
        """The p-value is McNemar's asymptotic z = (b - c) / sqrt(b + c) for ``alternative``."""
        clean, ablated = self._counts(9, 2, 20, 5)
        result = mcnemar_accuracy_drop(clean, ablated, alternative=alternative, n_boot=0)
        z = 7 / math.sqrt(11)
        expected = {"greater": sps.norm.sf(z), "less": sps.norm.cdf(z)}.get(
            alternative, 2 * sps.norm.sf(z)
        )
        assert result.p_value == pytest.approx(expected, rel=1e-12)
        assert result.statistic == pytest.approx(7 / 36)
        assert result.n == 36
        assert math.isnan(result.ci_low)

    @pytest.mark.parametrize(
        ("b", "c", "n"),
        [(3, 0, 36), (0, 3, 36), (9, 2, 36), (6, 1, 20), (2, 8, 20), (12, 4, 100), (5, 5, 30)],
    )
    @pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
    def test_ci_is_dual_to_the_p_value(self, b: int, c: int, n: int, alternative: str) -> None:
        """The CI excludes 0 on the tested side exactly when p < alpha.

        One-sided: the two-sided 1 - 2 alpha interval; two-sided: 1 - alpha. b = 3, c = 0
        is the case the old exact (sign-test) p got wrong: p = 0.125, 90% score CI above 0.
        """
        clean, ablated = self._counts(b, c, n - b - c - 2, 2)
        for alpha in (0.05, 0.1, 0.025):
            r = mcnemar_accuracy_drop(clean, ablated, alternative=alternative, alpha=alpha)
            two = alternative == "two-sided"
            assert r.ci_level == pytest.approx(1 - alpha if two else 1 - 2 * alpha)
            excludes = {
                "greater": r.ci_low > 0,
                "less": r.ci_high < 0,
                "two-sided": r.ci_low > 0 or r.ci_high < 0,
            }[alternative]
            assert excludes == (r.p_value < alpha), (alpha, r.p_value, r.ci_low, r.ci_high)
        if (b, c, alternative) == (3, 0, "greater"):
            assert r.p_value < 0.05 < sps.binomtest(3, 3, 0.5, alternative="greater").pvalue

    def test_no_discordant_pairs_gives_p_one(self) -> None:
        """Identical runs give a zero drop and p = 1."""
        clean, ablated = self._counts(0, 0, 7, 3)
        result = mcnemar_accuracy_drop(clean, ablated)
        assert result.statistic == 0.0
        assert result.p_value == 1.0

    def test_recovers_planted_drop(self) -> None:
        """A 40-point accuracy drop on 100 problems is detected and its CI excludes 0."""
        clean, ablated = self._counts(40, 0, 40, 20)
        result = mcnemar_accuracy_drop(clean, ablated, seed=1)
        assert result.statistic == pytest.approx(0.4)
        assert result.p_value < 0.01
        assert 0.0 < result.ci_low < 0.4 < result.ci_high

    def test_false_positive_rate(self) -> None:
        """On 500 null datasets (independent runs) the one-sided test rejects at most nominally."""
        rng = np.random.default_rng(11)
        p_values = [
            mcnemar_accuracy_drop(rng.random(100) < 0.7, rng.random(100) < 0.7, n_boot=0).p_value
            for _ in range(500)
        ]
        assert MIN_FALSE_POSITIVE < _rate(p_values) <= MAX_FALSE_POSITIVE

    def test_flip_rate_denominators(self) -> None:
        """flip_rate counts clean-right/ablated-wrong over all problems or over clean-right."""
        clean, ablated = [1, 1, 1, 0], [0, 1, 0, 1]
        assert flip_rate(clean, ablated) == 0.5
        assert flip_rate(clean, ablated, given_clean_correct=True) == pytest.approx(2 / 3)
        assert math.isnan(flip_rate([0, 0], [1, 0], given_clean_correct=True))


class TestPairedShift:
    def test_p_is_about_the_mean_like_the_statistic_and_ci(self) -> None:
        """The review's repro: mean +0.92, but Wilcoxon (pseudo-median) "greater" p = 0.77.

        The default p is the exact sign-flip test of the mean (2^10 flips), p = 0.25 here.
        """
        deltas = np.array([-0.1] * 8 + [5.0] * 2)
        result = paired_shift_test(deltas)
        bits = (np.arange(2**10)[:, None] >> np.arange(10)) & 1
        exact = float(np.mean((1.0 - 2.0 * bits) @ deltas >= deltas.sum() - 1e-12))
        assert result.statistic == pytest.approx(0.92)
        assert result.p_value == pytest.approx(exact) and result.p_value < 0.3
        assert sps.wilcoxon(deltas, alternative="greater").pvalue > 0.7  # the old default
        assert "mean" in result.method and "Wilcoxon" not in result.method
        with pytest.raises(ValueError, match="method must be"):
            paired_shift_test(deltas, method="wilcoxon")

    @pytest.mark.parametrize(
        ("alternative", "level"), [("greater", 0.9), ("less", 0.9), ("two-sided", 0.95)]
    )
    def test_ci_level_matches_the_alternative(self, alternative: str, level: float) -> None:
        """One-sided: the two-sided 1 - 2 alpha CI (dual level); two-sided: 1 - alpha."""
        deltas = np.random.default_rng(6).normal(0.3, 1.0, 30)
        result = paired_shift_test(deltas, alternative=alternative)
        assert result.ci_level == pytest.approx(level)
        wider = paired_shift_test(deltas, alternative="two-sided", alpha=0.05 / 2)
        assert wider.ci_level == pytest.approx(0.975)

    @pytest.mark.parametrize("n", [10, 30])
    def test_all_zero_deltas_give_p_one(self, n: int) -> None:
        """No shift at all gives p = 1 without warnings (exact and Monte Carlo flips)."""
        assert paired_shift_test(np.zeros(n)).p_value == 1.0

    def test_exact_sign_flip_known_value(self) -> None:
        """Five positive deltas: only the identity flip is as extreme, p = 1/32."""
        result = paired_shift_test([0.5, 1.0, 0.2, 0.7, 0.1], method="permutation")
        assert result.p_value == pytest.approx(1 / 32)

    def test_monte_carlo_matches_enumeration(self) -> None:
        """For n = 17 the Monte Carlo p is close to the fully enumerated one."""
        deltas = np.random.default_rng(4).normal(0.4, 1.0, 17)
        bits = (np.arange(2**17)[:, None] >> np.arange(17)) & 1
        exact = float(np.mean((1.0 - 2.0 * bits) @ deltas >= deltas.sum() - 1e-12))
        result = paired_shift_test(deltas, method="permutation", n_perm=20000, n_boot=0)
        assert result.p_value == pytest.approx(exact, abs=0.01)

    def test_recovers_planted_shift(self) -> None:
        """A mean shift of 0.5 SD on 100 problems is detected and its CI excludes 0."""
        deltas = np.random.default_rng(5).normal(0.5, 1.0, 100)
        result = paired_shift_test(deltas, n_perm=2000)
        assert result.p_value < 0.01
        assert 0.0 < result.ci_low < result.statistic < result.ci_high

    @pytest.mark.parametrize(
        ("method", "n", "n_sims"),
        [("permutation", 12, 300), ("permutation", 40, 300)],
        ids=["exact-n12", "monte-carlo-n40"],
    )
    def test_false_positive_rate(self, method: str, n: int, n_sims: int) -> None:
        """On null deltas the one-sided test rejects at about the nominal rate."""
        rng = np.random.default_rng(12)
        p_values = [
            paired_shift_test(
                rng.normal(size=n), method=method, n_perm=200, n_boot=0, seed=rng
            ).p_value
            for _ in range(n_sims)
        ]
        assert MIN_FALSE_POSITIVE < _rate(p_values) <= MAX_FALSE_POSITIVE


class TestBootstrap:
    def test_bootstrap_ci_recovers_mean(self) -> None:
        """The CI of the mean of N(1, 1) x 200 contains 1 and excludes 0."""
        values = np.random.default_rng(6).normal(1.0, 1.0, 200)
        low, high = bootstrap_ci(values, n_boot=500, seed=0)
        assert 0.0 < low < 1.0 < high
        assert bootstrap_ci(values, n_boot=500, seed=0) == (low, high)

    def test_bootstrap_ci_coverage(self) -> None:
        """The 95% percentile CI of a mean covers the truth in most of 200 datasets."""
        rng = np.random.default_rng(7)
        covered = [
            low <= 0.0 <= high
            for low, high in (
                bootstrap_ci(rng.normal(size=50), n_boot=200, seed=rng) for _ in range(200)
            )
        ]
        assert np.mean(covered) >= 0.88

    def test_cluster_bootstrap_resamples_rows(self) -> None:
        """stat_fn sees whole problems: every resampled row is a row of the input."""
        x = np.arange(24.0).reshape(4, 6)
        rows = {tuple(r) for r in x}

        def check(a: np.ndarray, b: np.ndarray) -> float:
            assert a.shape == x.shape
            assert all(tuple(r) in rows for r in a)
            np.testing.assert_array_equal(a, b - 100.0)
            return float(a.mean())

        low, high = cluster_bootstrap_ci(x, x + 100.0, check, n_boot=50, seed=0)
        assert x.min() <= low <= high <= x.max()

    def test_cluster_ci_covers_zero_under_independent_offsets(self) -> None:
        """With unrelated per-problem offsets the cluster CI of pooled r still covers 0."""
        rng = np.random.default_rng(8)
        covered = []
        for _ in range(200):
            x, y = _offset_data(rng, shared=False)
            result = pooled_correlation(x, y, n_boot=300, seed=rng)
            covered.append(result.ci_low <= 0.0 <= result.ci_high)
        assert np.mean(covered) >= 0.88


class TestCorrelationStatistics:
    @pytest.mark.parametrize("method", ["pearson", "spearman"])
    def test_statistic_is_pooled_r(self, method: str) -> None:
        """All three tests report the scipy r of the (centred, for one) flattened arrays."""
        x, y = _within_signal_data(np.random.default_rng(9), n_problems=20)
        correlate = sps.pearsonr if method == "pearson" else sps.spearmanr
        pooled = correlate(x.ravel(), y.ravel()).statistic
        xr, yr = x - x.mean(axis=0), y - y.mean(axis=0)
        centred = correlate(xr.ravel(), yr.ravel()).statistic
        kwargs = {"method": method, "n_perm": 50, "n_boot": 50}
        assert pooled_correlation(x, y, method=method).statistic == pytest.approx(pooled)
        assert within_problem_permutation_test(x, y, **kwargs).statistic == pytest.approx(pooled)
        assert position_centred_correlation(x, y, **kwargs).statistic == pytest.approx(centred)

    @pytest.mark.parametrize("method", ["pearson", "spearman"])
    @pytest.mark.parametrize("test", RQ2_TESTS, ids=lambda f: f.__name__)
    def test_recovers_planted_within_problem_signal(
        self, test: CorrelationTest, method: str
    ) -> None:
        """A within-problem signal shared by both variables is detected; the CI excludes 0."""
        x, y = _within_signal_data(np.random.default_rng(10))
        result = test(x, y, method=method, seed=0)
        assert result.p_value < 0.01
        assert 0.0 < result.ci_low < result.statistic < result.ci_high
        assert result.n == 100

    def test_within_problem_ignores_between_problem_structure(self) -> None:
        """Rows constant within each problem carry no within-problem evidence: p = 1."""
        x = np.repeat(np.arange(10.0)[:, None], N_THOUGHTS, axis=1)
        y = x + np.random.default_rng(0).normal(size=x.shape)
        result = within_problem_permutation_test(x, y, n_perm=100, n_boot=0)
        assert result.statistic > 0.9
        assert result.p_value == 1.0

    def test_permutation_is_reproducible(self) -> None:
        """The same seed gives the same result."""
        x, y = _offset_data(np.random.default_rng(1), shared=True)
        first = within_problem_permutation_test(x, y, n_perm=200, n_boot=100, seed=3)
        assert within_problem_permutation_test(x, y, n_perm=200, n_boot=100, seed=3) == first


class TestClusterAwareCalibration:
    @pytest.mark.parametrize("shared", [True, False], ids=["shared-offset", "independent-offset"])
    def test_problem_offsets_fool_pooled_not_within(self, shared: bool) -> None:
        """Problem-level offsets make pooled p small; the within-problem test stays nominal."""
        rng = np.random.default_rng(13)
        pooled, within = [], []
        for _ in range(300):
            x, y = _offset_data(rng, shared=shared)
            pooled.append(pooled_correlation(x, y, n_boot=0).p_value)
            within.append(
                within_problem_permutation_test(x, y, n_perm=200, n_boot=0, seed=rng).p_value
            )
        assert _rate(pooled) > (0.9 if shared else 0.15)
        assert MIN_FALSE_POSITIVE < _rate(within) <= MAX_FALSE_POSITIVE

    def test_position_profile_fools_within_not_centred(self) -> None:
        """A shared position profile fools the within-problem test, not the centred one."""
        rng = np.random.default_rng(14)
        within, centred = [], []
        for _ in range(300):
            x, y = _profile_data(rng)
            kwargs = {"n_perm": 200, "n_boot": 0, "seed": rng}
            within.append(within_problem_permutation_test(x, y, **kwargs).p_value)
            centred.append(position_centred_correlation(x, y, **kwargs).p_value)
        assert _rate(within) > 0.5
        assert MIN_FALSE_POSITIVE < _rate(centred) <= MAX_FALSE_POSITIVE

    def test_spearman_within_problem_false_positive_rate(self) -> None:
        """The Spearman variant of the within-problem test is calibrated too."""
        rng = np.random.default_rng(15)
        p_values = []
        for _ in range(300):
            x, y = _offset_data(rng, shared=True)
            result = within_problem_permutation_test(
                x, y, method="spearman", n_perm=200, n_boot=0, seed=rng
            )
            p_values.append(result.p_value)
        assert MIN_FALSE_POSITIVE < _rate(p_values) <= MAX_FALSE_POSITIVE


class TestDegenerateInput:
    @pytest.mark.parametrize("test", RQ2_TESTS, ids=lambda f: f.__name__)
    def test_constant_attention_is_inconclusive(self, test: CorrelationTest) -> None:
        """Constant attention gives nan, p = 1 and says why, without warnings."""
        y = np.random.default_rng(0).normal(size=(10, N_THOUGHTS))
        result = test(np.full((10, N_THOUGHTS), 0.3), y)
        assert result.inconclusive
        assert result.p_value == 1.0
        assert "attention is constant" in result.method

    @pytest.mark.parametrize("test", RQ2_TESTS, ids=lambda f: f.__name__)
    def test_too_few_problems_is_inconclusive(self, test: CorrelationTest) -> None:
        """Fewer than MIN_PROBLEMS problems gives an inconclusive result."""
        x = np.random.default_rng(0).normal(size=(MIN_PROBLEMS - 1, N_THOUGHTS))
        result = test(x, x + 1.0)
        assert result.inconclusive
        assert f"fewer than {MIN_PROBLEMS} problems" in result.method

    def test_pure_profile_is_inconclusive_after_centring(self) -> None:
        """Attention equal to a per-thought profile has nothing left after centring."""
        x = np.tile(np.linspace(0.1, 0.6, N_THOUGHTS), (10, 1))
        y = np.random.default_rng(0).normal(size=x.shape)
        result = position_centred_correlation(x, y)
        assert result.inconclusive
        assert "after removing the per-thought profile" in result.method

    @settings(deadline=None)
    @given(
        hnp.arrays(
            np.float64,
            st.tuples(st.integers(1, 6), st.integers(2, N_THOUGHTS)),
            elements=st.floats(-1e6, 1e6, allow_subnormal=False),
        ),
        st.data(),
    )
    def test_any_finite_input_gives_a_valid_result(
        self, x: np.ndarray, data: st.DataObject
    ) -> None:
        """Any finite input yields p in [0, 1] and r in [-1, 1] or nan, with no warnings."""
        y = data.draw(
            hnp.arrays(np.float64, x.shape, elements=st.floats(-1e6, 1e6, allow_subnormal=False))
        )
        for test in RQ2_TESTS:
            fast = {"n_boot": 20} | ({} if test is pooled_correlation else {"n_perm": 20})
            result = test(x, y, **fast)
            assert 0.0 <= result.p_value <= 1.0
            assert result.inconclusive or -1.0 <= result.statistic <= 1.0


BAD_INPUTS: list[tuple[Callable[[], object], str]] = [
    (lambda: mcnemar_accuracy_drop([1, 0, 1], [1, 0]), "differ in length"),
    (lambda: mcnemar_accuracy_drop([[1, 0]], [[1, 0]]), "must be 1-D"),
    (lambda: mcnemar_accuracy_drop([1, 2], [1, 0]), "booleans or 0/1"),
    (lambda: mcnemar_accuracy_drop([1, 0], [1, 0], alternative="bigger"), "alternative must be"),
    (lambda: flip_rate([1, 0], [1]), "differ in length"),
    (lambda: paired_shift_test([0.3]), "at least 2 observations"),
    (lambda: paired_shift_test([0.3, np.nan]), "non-finite"),
    (lambda: paired_shift_test([0.3, 0.1], method="ttest"), "method must be"),
    (lambda: paired_shift_test([0.3, 0.1], n_perm=0, method="permutation"), "n_perm"),
    (lambda: paired_shift_test([0.3, 0.1], n_boot=-1), "n_boot"),
    (lambda: bootstrap_ci([1.0, 2.0], alpha=1.5), "alpha"),
    (lambda: pooled_correlation(np.ones(6), np.ones(6)), "must be 2-D"),
    (lambda: pooled_correlation(np.ones((4, 6)), np.ones((4, 5))), "differ in shape"),
    (lambda: pooled_correlation(np.ones((4, 1)), np.ones((4, 1))), "at least 2 thoughts"),
    (lambda: pooled_correlation(np.ones((4, 6)), np.ones((4, 6)), method="kendall"), "method"),
    (lambda: within_problem_permutation_test(np.ones((3, 2, 2)), np.ones((3, 2, 2))), "2-D"),
    (lambda: position_centred_correlation(np.full((4, 6), np.inf), np.ones((4, 6))), "non-finite"),
    (lambda: cluster_bootstrap_ci(np.ones((4, 6)), np.ones((4, 5)), np.mean), "differ in shape"),
]


@pytest.mark.parametrize(
    ("call", "message"), BAD_INPUTS, ids=[f"{i}-{m}" for i, (_, m) in enumerate(BAD_INPUTS)]
)
def test_bad_input_raises_value_error(call: Callable[[], object], message: str) -> None:
    """Malformed input raises ValueError naming the problem."""
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------- verdicts


class TestDecide:
    def test_supported_needs_test_and_ci_above_sesoi(self) -> None:
        """Supported: p < alpha, p_sesoi < alpha and the CI above the SESOI."""
        verdict, reason = decide(0.3, 0.15, 0.45, p_value=0.001, p_sesoi=0.01, sesoi=0.1)
        assert verdict == "supported"
        assert "SESOI 0.1" in reason

    @pytest.mark.parametrize(
        ("low", "p_value", "p_sesoi"),
        [(0.05, 0.001, None), (0.15, 0.06, None), (0.15, 0.001, 0.06)],
        ids=["ci-below-sesoi", "p-not-significant", "p-sesoi-not-significant"],
    )
    def test_one_failing_condition_is_inconclusive(
        self, low: float, p_value: float, p_sesoi: float | None
    ) -> None:
        """Significance alone, a CI alone, or a corrected p_sesoi above alpha do not support."""
        verdict, _ = decide(0.3, low, 0.45, p_value=p_value, p_sesoi=p_sesoi, sesoi=0.1)
        assert verdict == "inconclusive"

    def test_significant_but_trivial_effect_is_refuted(self) -> None:
        """An r of 0.05 with a tight CI is significant but below the SESOI: refuted."""
        verdict, reason = decide(0.05, 0.02, 0.08, p_value=1e-4, p_equivalence=0.001, sesoi=0.1)
        assert verdict == "refuted"
        assert "equivalent to zero" in reason

    def test_wrong_sign_is_refuted(self) -> None:
        """A CI entirely below -SESOI refutes a positive claim (wrong sign)."""
        verdict, reason = decide(-0.4, -0.5, -0.3, p_value=0.99, sesoi=0.1)
        assert verdict == "refuted"
        assert "wrong sign" in reason

    def test_refuted_needs_the_equivalence_test(self) -> None:
        """A CI below the SESOI with a (corrected) equivalence p above alpha is inconclusive."""
        verdict, _ = decide(0.0, -0.05, 0.05, p_value=0.5, p_equivalence=0.2, sesoi=0.1)
        assert verdict == "inconclusive"

    def test_ci_containing_sesoi_is_inconclusive(self) -> None:
        """A CI that straddles the SESOI decides nothing."""
        verdict, reason = decide(0.1, -0.2, 0.4, p_value=0.3, sesoi=0.1)
        assert verdict == "inconclusive"
        assert "contains SESOI" in reason

    def test_nan_is_inconclusive(self) -> None:
        """A degenerate statistic is inconclusive, never supported or refuted."""
        assert decide(math.nan, math.nan, math.nan, p_value=1.0, sesoi=0.1)[0] == "inconclusive"

    def test_less_mirrors_greater(self) -> None:
        """alternative='less' judges 'effect < -SESOI' by mirroring."""
        assert decide(-0.3, -0.45, -0.15, p_value=0.001, sesoi=0.1, alternative="less")[0] == (
            "supported"
        )
        assert decide(0.3, 0.15, 0.45, p_value=0.99, sesoi=0.1, alternative="less")[0] == "refuted"

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [({"sesoi": -0.1}, "sesoi"), ({"alpha": 0.6}, "alpha"), ({"alternative": "x"}, "altern")],
    )
    def test_rejects_bad_arguments(self, kwargs: dict[str, object], message: str) -> None:
        """A negative SESOI, alpha >= 0.5 or an unknown alternative is refused."""
        args: dict[str, object] = {"p_value": 0.1, "sesoi": 0.1} | kwargs
        with pytest.raises(ValueError, match=message):
            decide(0.1, 0.0, 0.2, **args)  # type: ignore[arg-type]


class TestVerdictFields:
    def test_old_positional_construction_still_works(self) -> None:
        """Existing callers build StatResult positionally; the new fields default to None."""
        result = StatResult(0.1, 0.02, 0.0, 0.2, 10, "m", "greater", 0.04)
        assert result.sesoi is None
        assert result.verdict is None
        assert result.ci_level == 0.95
        assert result.with_verdict() is result  # no SESOI: nothing to decide

    def test_as_dict_carries_verdict_fields_only_when_set(self) -> None:
        """New optional fields appear in as_dict once set; ci_level always does."""
        plain = StatResult(0.1, 0.02, 0.0, 0.2, 10, "m").as_dict()
        assert plain["ci_level"] == 0.95
        assert not {"sesoi", "verdict", "p_sesoi", "p_equivalence"} & set(plain)
        decided = mean_effect(np.full(30, 1.0) + np.linspace(0, 0.1, 30), sesoi=0.1).as_dict()
        assert decided["verdict"] == "supported"
        assert {"sesoi", "p_sesoi", "p_equivalence", "verdict_reason"} <= set(decided)

    def test_holm_rewrites_the_reason_of_an_unbounded_inconclusive_result(self) -> None:
        """A CI of (-inf, inf) is an interval: after Holm its reason shows the corrected p."""
        rng = np.random.default_rng(1)
        raw = [mean_effect(rng.normal(1.0, 0.5, 10), n_boot=499, seed=i) for i in range(3)]
        assert all(r.ci_low == -math.inf and r.ci_high == math.inf for r in raw)
        for r in apply_holm_verdicts(raw):
            assert r.p_corrected is not None
            assert f"p={r.p_corrected:.3g}" in str(r.verdict_reason)

    def test_apply_holm_verdicts_corrects_each_p_and_redecides(self) -> None:
        """Holm adjusts p, p_sesoi and p_equivalence per family and recomputes the verdict."""
        base = StatResult(0.3, 0.01, 0.15, 0.45, 50, "m", "greater", ci_level=0.9, sesoi=0.1)
        family = [
            replace(base, p_sesoi=0.03, p_equivalence=0.97),
            replace(base, p_value=0.02, p_sesoi=0.2, p_equivalence=0.8),
            replace(base, p_value=0.04, p_sesoi=0.3, p_equivalence=0.7),
        ]
        assert family[0].with_verdict().verdict == "supported"  # alone: supported
        out = apply_holm_verdicts(family)
        assert [r.p_corrected for r in out] == pytest.approx([0.03, 0.04, 0.04])
        assert out[0].p_sesoi_corrected == pytest.approx(0.09)
        assert out[0].verdict == "inconclusive"  # Holm p_sesoi 0.09 >= 0.05
        assert "p_sesoi=0.09" in (out[0].verdict_reason or "")
        assert apply_holm_verdicts([]) == []


class TestMeanEffect:
    def test_strong_effect_is_supported_and_dual(self) -> None:
        """A clear effect is supported; CI bound and p_sesoi agree (one bootstrap)."""
        deltas = np.random.default_rng(0).normal(1.0, 1.0, 40)
        result = mean_effect(deltas, sesoi=0.1)
        assert result.verdict == "supported"
        assert result.statistic == pytest.approx(sps.trim_mean(deltas, 0.2))
        assert result.ci_level == pytest.approx(0.9)
        assert result.ci_low > 0.1
        assert result.p_sesoi is not None
        assert result.p_sesoi < 0.05

    def test_duality_of_ci_and_sesoi_test(self) -> None:
        """p_sesoi < alpha exactly when the (1 - 2 alpha) lower bound exceeds the SESOI."""
        rng = np.random.default_rng(1)
        for _ in range(60):
            result = mean_effect(rng.normal(0.3, 1.0, 20), sesoi=0.1, n_boot=999, seed=rng)
            assert result.p_sesoi is not None
            assert result.p_equivalence is not None
            assert (result.p_sesoi < 0.05) == (result.ci_low > 0.1)
            assert (result.p_equivalence < 0.05) == (result.ci_high < 0.1)

    @pytest.mark.parametrize(
        "values", [np.zeros(12), np.full(3, 0.107), np.ones(30), np.full(40, -2.0)]
    )
    def test_no_variation_is_inconclusive_not_certain(self, values: np.ndarray) -> None:
        """All-equal deltas: an SE of 0 is not certainty (no p = 0, no zero-width CI)."""
        for trim in (0.0, 0.2):
            result = mean_effect(values, sesoi=0.1, trim=trim)
            assert result.verdict == "inconclusive"
            assert result.p_value == result.p_sesoi == result.p_equivalence == 1.0
            assert math.isnan(result.ci_low) and math.isnan(result.ci_high)
            assert "no variation" in (result.verdict_reason or "")
            # a Holm family recomputes verdicts: the reason why survives it
            (judged,) = apply_holm_verdicts([result])
            assert judged.verdict == "inconclusive"
            assert "no variation" in (judged.verdict_reason or "")

    def test_few_tied_per_problem_slopes_are_inconclusive(self) -> None:
        """The review's repro: two or three identical 0/1 curves gave p = 0 and a point CI."""
        rising = trend_test(np.array([[0, 1, 1, 1, 1, 1, 1]] * 2, float), range(7)).slope
        flat = trend_test(np.ones((3, 7)), range(7)).slope
        for result in (rising, flat):
            assert result.verdict == "inconclusive"
            assert min(result.p_value, pvalue_or_one(result.p_sesoi)) == 1.0
            assert pvalue_or_one(result.p_equivalence) == 1.0
            assert math.isnan(result.ci_low)

    def test_one_moving_problem_is_no_trend(self) -> None:
        """29 flat curves and one that falls: one mover is not a spread (t(n - 1) refuted it)."""
        correct = np.ones((30, 7))
        correct[0, 3:] = 0.0
        result = trend_test(correct, range(7)).slope
        assert result.verdict == "inconclusive"
        assert "1 of 30" in (result.verdict_reason or "")
        two = trend_test(np.vstack([correct, 1.0 - correct[:1]]), range(7)).slope
        assert "t(m - 1) with m = 2 of 31" in two.method

    @pytest.mark.parametrize(("n", "verdict"), [(13, "inconclusive"), (14, "refuted")])
    def test_no_variation_opted_in_is_judged_by_the_exact_bound(self, n: int, verdict: str) -> None:
        """``constant="exact"``: p = 0.8^n against every other location, CI [c, c] once < alpha."""
        result = mean_effect(np.zeros(n), sesoi=0.1, constant="exact")
        assert result.p_equivalence == pytest.approx(0.8**n)
        assert result.p_value == result.p_sesoi == 1.0
        assert result.verdict == verdict
        if verdict == "refuted":
            assert result.ci_low == result.ci_high == 0.0
            assert "exact bound" in result.method
        else:
            assert math.isnan(result.ci_low) and "too few problems" in str(result.verdict_reason)

    def test_the_exact_bound_supports_only_a_trimmed_mean(self) -> None:
        """All-equal values above the SESOI: supported by 0.8^20; a plain mean has no bound."""
        trimmed = mean_effect(np.full(20, 0.5), sesoi=0.1, constant="exact")
        assert trimmed.verdict == "supported"
        assert trimmed.p_value == trimmed.p_sesoi == pytest.approx(0.8**20)
        assert trimmed.p_equivalence == 1.0
        plain = mean_effect(np.full(200, 0.5), sesoi=0.1, constant="exact", trim=0.0)
        assert plain.verdict == "inconclusive" and plain.p_sesoi == 1.0
        with pytest.raises(ValueError, match="constant must be one of"):
            mean_effect(np.ones(5), constant="certain")  # type: ignore[arg-type]

    def test_studentized_ci_matches_t_interval_for_normal_data(self) -> None:
        """For Normal data and large n the bootstrap-t CI is close to the t interval."""
        deltas = np.random.default_rng(2).normal(0.5, 1.0, 400)
        result = mean_effect(deltas, ci_level=0.95, n_boot=9999, trim=0.0)
        low, high = sps.t.interval(0.95, 399, deltas.mean(), sps.sem(deltas))
        assert result.statistic == deltas.mean()
        assert result.ci_low == pytest.approx(low, abs=0.02)
        assert result.ci_high == pytest.approx(high, abs=0.02)

    def test_trimmed_ci_matches_the_tukey_mclaughlin_interval_for_normal_data(self) -> None:
        """Large n: trimmed bootstrap-t CI ~ trim_mean +- t(n - 2g - 1) * trimmed_stde.

        Each end is the more cautious of that and the distribution-free bound.
        """
        deltas = np.random.default_rng(3).normal(0.5, 1.0, 400)
        result = mean_effect(deltas, ci_level=0.95, n_boot=9999)
        centre = sps.trim_mean(deltas, 0.2)
        se = sps.mstats.trimmed_stde(deltas, limits=(0.2, 0.2))
        half = sps.t.ppf(0.975, 400 - 2 * 80 - 1) * se
        assert result.statistic == pytest.approx(centre)
        bounds = TrimmedMeanBounds.of(deltas, 0.2)
        low, high = bounds.lower_bound(0.975), bounds.upper_bound(0.975)
        assert low < centre - half and high > centre + half  # the price of no assumption
        assert result.ci_low == pytest.approx(low)
        assert result.ci_high == pytest.approx(high)
        assert high - low < 2.0 * 2 * half  # 1.86x as wide here: a band on every quantile
        assert "20% trimmed mean" in result.method

    def test_a_few_huge_deltas_do_not_carry_the_trimmed_effect(self) -> None:
        """Two problems with enormous deltas: the mean clears the SESOI, the typical effect not."""
        deltas = np.r_[np.zeros(8), 40.0, 60.0]
        assert mean_effect(deltas, trim=0.0).statistic == pytest.approx(10.0)
        result = mean_effect(deltas)
        assert result.statistic == 0.0
        assert result.verdict != "supported"

    def test_trim_out_of_range_is_an_error(self) -> None:
        with pytest.raises(ValueError, match="trim must be in"):
            mean_effect(np.ones(5), trim=0.5)

    @pytest.mark.parametrize("values", [[0] * 8 + [5, 7], [-1, -2, 0, 0, 0, 0, 0, 0, 5, 7]])
    def test_a_tied_middle_is_inconclusive_not_certain(self, values: list[float]) -> None:
        """Values that vary but whose middle 60% tie: SE 0 is not certainty (no p = 0)."""
        result = mean_effect(np.array(values, dtype=float))
        assert result.verdict == "inconclusive"
        assert result.p_equivalence == result.p_sesoi == result.p_value == 1.0
        assert "middle values tie" in (result.verdict_reason or "")

    def test_equivalence_of_no_change_at_all_is_supported(self) -> None:
        """No change on any problem is an equivalence once the exact bound 0.8^n is < alpha.

        A p-value of exactly 0 stays 0 (``p or 1.0`` had made it 1). Ten unchanged problems
        are not enough: at the boundary (21% of problems moved) they occur 0.79^10 = 9.5% of
        the time (calibrated in tests/test_stats_calibration.py).
        """
        assert pvalue_or_one(0.0) == 0.0 and pvalue_or_one(None) == 1.0
        assert equivalence_effect(np.zeros(14), sesoi=0.1).verdict == "supported"
        few = equivalence_effect(np.zeros(10), sesoi=0.1)
        assert few.verdict == "inconclusive" and few.p_value == pytest.approx(0.8**10)
        assert "too few problems" in str(few.verdict_reason)
        assert equivalence_effect(np.array([0.0] * 8 + [3, -4]), sesoi=0.1).verdict != "supported"


class TestAccuracyDropEffect:
    def test_tango_score_is_mcnemar_at_zero_and_decreasing(self) -> None:
        """Tango's statistic equals McNemar's z at delta = 0 and decreases in delta."""
        b, c, n = 9, 3, 40
        assert _tango_z(b, c, n, 0.0) == pytest.approx((b - c) / math.sqrt(b + c))
        grid = [_tango_z(b, c, n, d) for d in np.linspace(-0.99, 0.99, 199)]
        assert np.all(np.diff(grid) < 0)

    def test_ci_inverts_the_score_test(self) -> None:
        """The CI ends are where the continuity-corrected score crosses the normal quantile."""
        clean = [1] * 12 + [0] * 3 + [1] * 20 + [0] * 5
        ablated = [0] * 12 + [1] * 3 + [1] * 20 + [0] * 5
        result = accuracy_drop_effect(clean, ablated, ci_level=0.95)
        z = sps.norm.ppf(0.975)
        assert _tango_z(12, 3, 40, result.ci_low, 0.25) == pytest.approx(z, abs=1e-6)
        assert _tango_z(12, 3, 40, result.ci_high, 0.25) == pytest.approx(-z, abs=1e-6)
        assert result.statistic == pytest.approx(9 / 40)
        assert result.p_value == pytest.approx(sps.norm.sf((12 - 3 - 0.25) / math.sqrt(15)))
        assert "continuity-corrected by 0.25 pair" in result.method

    def test_tests_and_ci_are_dual(self) -> None:
        """p_sesoi < alpha exactly when the CI's lower end is above the SESOI (and mirrored)."""
        for b in range(0, 12):
            for c in range(0, 6):
                clean = [1] * b + [0] * c + [1] * 10
                ablated = [0] * b + [1] * c + [1] * 10
                r = accuracy_drop_effect(clean, ablated, sesoi=0.1)
                assert r.p_sesoi is not None and r.p_equivalence is not None
                assert (r.p_sesoi < 0.05) == (r.ci_low > 0.1)
                assert (r.p_equivalence < 0.05) == (r.ci_high < 0.1)

    def test_verdicts(self) -> None:
        """A 40-point drop is supported; identical runs on 200 problems refute a 5-point drop."""
        big = accuracy_drop_effect([1] * 60 + [0] * 40, [0] * 40 + [1] * 20 + [0] * 40)
        assert big.verdict == "supported"
        same = accuracy_drop_effect([1] * 150 + [0] * 50, [1] * 150 + [0] * 50)
        assert same.verdict == "refuted"
        small = accuracy_drop_effect([1] * 8 + [0] * 2, [1] * 8 + [0] * 2)
        assert small.verdict == "inconclusive"  # 10 problems cannot exclude a 5-point drop


# --------------------------------------------------------------------------- RQ2, decomposed


def _fe_slope_standardised(x: np.ndarray, y: np.ndarray) -> float:
    """Slope of y on x with problem and position fixed effects, times sd(x_res) / sd(y_res)."""
    n, t = x.shape
    rows = np.repeat(np.eye(n), t, axis=0)
    cols = np.tile(np.eye(t), (n, 1))[:, 1:]
    design = np.column_stack([x.ravel(), rows, cols])
    coef = np.linalg.lstsq(design, y.ravel(), rcond=None)[0]
    xr = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0) + x.mean()
    yr = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0) + y.mean()
    return float(coef[0] * np.sqrt(np.sum(xr**2) / np.sum(yr**2)))


def _jackknife_ci(stat: Callable[[np.ndarray, np.ndarray], float], x, y, level: float):
    """Brute-force delete-one-problem jackknife t-interval on Fisher z."""
    n = x.shape[0]
    z = np.arctanh(stat(x, y))
    loo = np.arctanh([stat(np.delete(x, i, 0), np.delete(y, i, 0)) for i in range(n)])
    se = np.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2))
    q = sps.t.ppf((1 + level) / 2, n - 1)
    return np.tanh(z - q * se), np.tanh(z + q * se)


def _position_r(x: np.ndarray, y: np.ndarray) -> float:
    """Correlation of the mean profiles from the products of distinct problems' profiles only.

    sum_{i != j} (a_i . b_j): the column means' cross-products without each problem's
    own term, whose expectation is the population mean profiles' covariance.
    """
    xt = x - x.mean(axis=1, keepdims=True)
    yt = y - y.mean(axis=1, keepdims=True)
    n = x.shape[0]

    def u(a: np.ndarray, b: np.ndarray) -> float:
        return sum(float(a[i] @ b[j]) for i in range(n) for j in range(n) if i != j)

    return u(xt, yt) / math.sqrt(u(xt, xt) * u(yt, yt))


def _position_jackknife(x: np.ndarray, y: np.ndarray, level: float):
    """Brute force: jackknife bias-corrected profile r and its t-interval on the r scale."""
    n = x.shape[0]
    loo = np.array([_position_r(np.delete(x, i, 0), np.delete(y, i, 0)) for i in range(n)])
    pseudo = n * _position_r(x, y) - (n - 1) * loo
    se = pseudo.std(ddof=1) / np.sqrt(n)
    q = sps.t.ppf((1 + level) / 2, n - 1)
    r = pseudo.mean()
    return r, se, (max(r - q * se, -1.0), min(r + q * se, 1.0))


def _normal_scores(x: np.ndarray) -> np.ndarray:
    """Van der Waerden scores of all entries pooled: Phi^-1(average rank / (N + 1))."""
    return sps.norm.ppf(sps.rankdata(x, axis=None).reshape(x.shape) / (x.size + 1))


def _residual_r(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r of the two-way residuals (problem and position means removed)."""
    xr = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0) + x.mean()
    yr = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0) + y.mean()
    return float(np.corrcoef(xr.ravel(), yr.ravel())[0, 1])


def _beyond_r(x: np.ndarray, y: np.ndarray) -> float:
    """The beyond-position statistic: residual r of the pooled normal scores."""
    return _residual_r(_normal_scores(x), _normal_scores(y))


def _pooled_r(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(x.ravel(), y.ravel())[0, 1])


class TestRq2Tests:
    @staticmethod
    def _data(n: int = 25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        x = np.linspace(1.0, 2.0, N_THOUGHTS) + rng.normal(size=(n, 1)) + rng.normal(size=(n, 6))
        y = 0.4 * x + rng.normal(0, 0.5, (n, 1)) * np.linspace(1, 2, 6) + rng.normal(size=(n, 6))
        return x, y

    def test_statistics_are_the_documented_quantities(self) -> None:
        """Position r of column means, normal-score two-way residual r (= FE slope), pooled r."""
        x, y = self._data()
        tests = rq2_tests(x, y, n_perm=99)
        position, _, _ = _position_jackknife(x, y, 0.9)
        assert tests.position.statistic == pytest.approx(min(position, 1.0))
        assert tests.beyond_position.statistic == pytest.approx(_beyond_r(x, y))
        scores = _normal_scores(x), _normal_scores(y)
        assert tests.beyond_position.statistic == pytest.approx(_fe_slope_standardised(*scores))
        # monotone transformations of either variable leave it unchanged
        assert rq2_tests(np.exp(x), y**3, n_perm=9).beyond_position.statistic == pytest.approx(
            tests.beyond_position.statistic
        )
        assert tests.pooled.statistic == pytest.approx(_pooled_r(x, y))
        naive = sps.pearsonr(x.ravel(), y.ravel(), alternative="greater").pvalue
        assert tests.pooled.p_value == pytest.approx(naive, rel=1e-8)

    def test_negligible_importance_judges_nothing(self) -> None:
        """Importance at noise level (an unused thought) makes every question inconclusive.

        The same data scaled so that importance reaches its SESOI are judged as usual: a
        strong correlation with noise-level effects (r is scale-free) is not a finding.
        """
        x, y = self._data(n=60)
        tiny = 1e-3 * y  # |y| ~ 1e-3 nats: far below a 0.1-nat SESOI everywhere
        plain = rq2_tests(x, tiny, n_perm=99)
        assert plain.beyond_position.verdict == "supported"  # r is scale-free
        guarded = rq2_tests(x, tiny, n_perm=99, sesoi_target=0.1)
        for result in guarded.questions().values():
            assert result.inconclusive and result.verdict in ("inconclusive", "descriptive")
        assert "importance is negligible" in guarded.beyond_position.method
        assert "0 of 360" in guarded.beyond_position.method
        judged = rq2_tests(x, y, n_perm=99, sesoi_target=0.1)  # most |y| >= 0.1
        assert judged.beyond_position.verdict == plain.beyond_position.verdict
        assert judged.beyond_position.statistic == plain.beyond_position.statistic
        # the threshold is a share of (problem, thought) pairs: 4% large is negligible, 6% not
        for share, negligible in ((0.04, True), (0.06, False)):
            mixed = tiny.copy().ravel()
            mixed[: int(share * mixed.size)] = 1.0
            result = rq2_tests(x, mixed.reshape(tiny.shape), n_perm=9, sesoi_target=0.1)
            assert result.beyond_position.inconclusive == negligible

    @pytest.mark.parametrize(
        ("question", "stat", "scored"),
        [("beyond_position", _residual_r, True), ("pooled", _pooled_r, False)],
    )
    def test_ci_is_the_cluster_jackknife_of_the_same_statistic(
        self, question: str, stat: Callable[[np.ndarray, np.ndarray], float], scored: bool
    ) -> None:
        """Each CI equals a brute-force delete-one-problem jackknife of its own statistic.

        Beyond position: the normal scores are computed once on all problems and the
        jackknife leaves each problem's scores out (no re-ranking).
        """
        x, y = self._data(n=12, seed=3)
        result = getattr(rq2_tests(x, y, n_perm=9, ci_level=0.95), question)
        if scored:
            x, y = _normal_scores(x), _normal_scores(y)
        low, high = _jackknife_ci(stat, x, y, 0.95)
        assert (result.ci_low, result.ci_high) == pytest.approx((low, high), rel=1e-9)
        assert result.ci_level == 0.95

    def test_position_ci_is_the_jackknife_of_the_corrected_profile_r(self) -> None:
        """Position level: statistic, CI and SESOI p-values from one brute-force jackknife."""
        x, y = self._data(n=12, seed=3)
        y = y + 3.0 * np.linspace(0.0, 1.0, N_THOUGHTS)  # a clear importance profile
        result = rq2_tests(x, y, n_perm=9, ci_level=0.95).position
        r, se, (low, high) = _position_jackknife(x, y, 0.95)
        assert result.statistic == pytest.approx(r, rel=1e-9)
        assert (result.ci_low, result.ci_high) == pytest.approx((low, high), rel=1e-9)
        assert result.ci_level == 0.95
        assert result.p_sesoi == pytest.approx(sps.t.sf((r - SESOI_R) / se, 11), rel=1e-6)

    def test_position_r_is_not_attenuated_by_noisy_column_means(self) -> None:
        """Profiles correlated 0.9 with noisy column means: the plain r of the means is low."""
        rng = np.random.default_rng(7)
        profile = np.array([0.0, 1.0, 0.5, -0.5, -1.0, 0.2])
        other = np.array([0.3, -0.2, 0.9, -0.6, 0.1, -0.5])
        other -= other.mean() + (other @ profile) / (profile @ profile) * profile
        mu_y = 0.9 * profile / np.linalg.norm(profile) + math.sqrt(
            1 - 0.81
        ) * other / np.linalg.norm(other)
        plain, corrected = [], []
        for _ in range(200):
            x = profile / np.linalg.norm(profile) + rng.normal(0, 0.5, (10, N_THOUGHTS))
            y = mu_y + rng.normal(0, 0.5, (10, N_THOUGHTS))
            plain.append(np.corrcoef(x.mean(axis=0), y.mean(axis=0))[0, 1])
            corrected.append(rq2_tests(x, y, n_perm=1).position.statistic)
        assert np.mean(plain) < 0.85
        assert abs(np.nanmean(corrected) - 0.9) < abs(np.mean(plain) - 0.9)

    def test_permutation_p_matches_full_enumeration(self) -> None:
        """With 6 problems the Monte Carlo p is close to the exact one over all 720 pairings."""
        x, y = self._data(n=6, seed=4)
        observed = _beyond_r(x, y)
        exact = np.mean(
            [_beyond_r(x[list(p)], y) >= observed - 1e-12 for p in itertools.permutations(range(6))]
        )
        result = rq2_tests(x, y, n_perm=20000, seed=1).beyond_position
        assert result.p_value == pytest.approx(exact, abs=0.01)

    def test_verdict_fields_and_labels(self) -> None:
        """Deciding questions carry a verdict; pooled is descriptive with a naive-p label."""
        tests = rq2_tests(*self._data(n=60), n_perm=499)
        for result in (tests.position, tests.beyond_position):
            assert result.verdict in ("supported", "refuted", "inconclusive")
            assert result.sesoi == 0.1
            assert result.ci_level == pytest.approx(0.9)
        assert tests.pooled.verdict == "descriptive"
        assert tests.pooled.sesoi is None
        assert tests.pooled.p_sesoi is None
        assert "naive (treats pairs as independent)" in tests.pooled.method
        assert "permutation of whole problems" in tests.beyond_position.method
        assert set(tests.as_dict()) == {"position", "beyond_position", "pooled", "n_dropped"}

    def test_planted_problem_level_signal_is_supported(self) -> None:
        """A strong within-problem link beyond position is supported."""
        rng = np.random.default_rng(5)
        signal = rng.normal(size=(80, N_THOUGHTS))
        x = np.linspace(3, 0, 6) + rng.normal(size=(80, 1)) + signal
        y = np.linspace(0, 3, 6) + rng.normal(size=(80, 1)) + signal + rng.normal(size=signal.shape)
        tests = rq2_tests(x, y, n_perm=999)
        assert tests.beyond_position.verdict == "supported"
        assert tests.position.verdict == "refuted"  # opposite position profiles

    def test_nan_rows_are_dropped_and_counted(self) -> None:
        """Problems with a nan anywhere are left out and counted; the rest is analysed."""
        x, y = self._data(n=20)
        y_nan = y.copy()
        y_nan[[2, 7], 3] = np.nan
        keep = np.ones(20, bool)
        keep[[2, 7]] = False
        tests = rq2_tests(x, y_nan, n_perm=99)
        assert tests.n_dropped == 2
        assert tests.beyond_position.n == 18
        assert tests.beyond_position.statistic == pytest.approx(_beyond_r(x[keep], y[keep]))

    def test_reproducible(self) -> None:
        """The same seed gives the same result."""
        x, y = self._data()
        assert rq2_tests(x, y, n_perm=200, seed=3) == rq2_tests(x, y, n_perm=200, seed=3)

    def test_holm_rq2_corrects_within_each_question(self) -> None:
        """holm_rq2 adjusts each question across the family and recomputes verdicts."""
        family = [rq2_tests(*self._data(n=30, seed=s), n_perm=199) for s in range(3)]
        corrected = holm_rq2(family)
        raw = [t.beyond_position.p_sesoi for t in family]
        expected = holm([p for p in raw if p is not None])
        assert [t.beyond_position.p_sesoi_corrected for t in corrected] == pytest.approx(expected)
        for t in corrected:
            assert t.position.p_corrected is not None
            assert t.pooled.p_corrected is not None
            assert t.pooled.verdict == "descriptive"
            assert t.pooled.p_sesoi_corrected is None

    def test_degenerate_inputs_are_inconclusive(self) -> None:
        """Too few problems, constant data, no profile or nothing beyond baselines: inconclusive."""
        rng = np.random.default_rng(0)
        y = rng.normal(size=(10, N_THOUGHTS))
        few = rq2_tests(y[:2], y[:2])
        assert all(r.inconclusive for r in few.questions().values())
        assert few.position.verdict == "inconclusive"
        assert few.pooled.verdict == "descriptive"
        const = rq2_tests(np.full((10, 6), 0.3), y)
        assert "attention is constant" in const.beyond_position.method
        additive = np.linspace(0, 1, 6) + rng.normal(size=(10, 1))  # problem + position only
        tests = rq2_tests(additive, y)
        assert tests.beyond_position.verdict == "inconclusive"
        assert "beyond the problem and position baselines" in tests.beyond_position.method
        assert not tests.position.inconclusive
        flat = rng.normal(size=(10, 6))
        flat -= flat.mean(axis=0)  # equal column means
        assert "no position profile" in rq2_tests(flat, y).position.method

    def test_perfect_correlation_is_clipped(self) -> None:
        rng = np.random.default_rng(6)
        x = rng.random((15, N_THOUGHTS)) * 1e-3 + 0.1 + 1e-3 * np.arange(N_THOUGHTS)
        for result in rq2_tests(x, x.copy(), n_perm=50).questions().values():
            assert result.statistic <= 1.0
            assert result.ci_high <= 1.0

    @settings(deadline=None, max_examples=60)
    @given(
        hnp.arrays(
            np.float64,
            st.tuples(st.integers(1, 8), st.integers(3, N_THOUGHTS)),
            elements=st.floats(-1e6, 1e6, allow_subnormal=False),
        ),
        st.data(),
    )
    def test_any_finite_input_gives_a_valid_result(
        self, x: np.ndarray, data: st.DataObject
    ) -> None:
        """Any finite input: p in [0, 1], r and CI in [-1, 1] or nan, a verdict, no warning."""
        y = data.draw(
            hnp.arrays(np.float64, x.shape, elements=st.floats(-1e6, 1e6, allow_subnormal=False))
        )
        for name, result in rq2_tests(x, y, n_perm=20).questions().items():
            deciding = name != "pooled"
            for p in (result.p_value, result.p_sesoi, result.p_equivalence):
                assert (p is not None) == deciding or p is result.p_value
                assert p is None or 0.0 <= p <= 1.0
            for value in (result.statistic, result.ci_low, result.ci_high):
                assert math.isnan(value) or -1.0 <= value <= 1.0
            expected = {"descriptive"} if name == "pooled" else set(get_args(Verdict))
            assert result.verdict in expected

    def test_within_problem_test_survives_values_whose_squares_underflow(self) -> None:
        """Found by Hypothesis in CI: values of 4e-159, whose sums of squares multiply to 0."""
        x = np.zeros((3, 2))
        x[0, 0] = 4.03289306e-159
        y = np.full((3, 2), 4.03289306e-159)
        y[0, 0] = 0.0
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            result = within_problem_permutation_test(x, y, n_perm=20)
        assert -1.0 <= result.statistic <= 1.0 and 0.0 <= result.p_value <= 1.0

    def test_values_whose_squares_underflow_are_inconclusive_not_a_warning(self) -> None:
        """Found by Hypothesis in CI: one value of 6e-98, the rest 0 (sums of squares -> 0)."""
        x = np.zeros((3, 3))
        x[0, 0] = 5.93886829e-98
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            results = rq2_tests(x, x.copy(), n_perm=20).questions()
        assert results["beyond_position"].verdict == "inconclusive"
        assert results["position"].verdict == "inconclusive"

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            ((np.ones(6), np.ones(6)), "must be 2-D"),
            ((np.ones((4, 6)), np.ones((4, 5))), "differ in shape"),
            ((np.ones((4, 2)), np.ones((5, 6))), "differ in shape"),  # also too few thoughts
            ((np.full((4, 6), np.inf), np.ones((5, 6))), "differ in shape"),  # also an inf
        ],
    )
    def test_bad_input_raises(self, args: tuple[np.ndarray, np.ndarray], message: str) -> None:
        """Malformed arrays raise ValueError naming the problem.

        Degenerate data does not (``test_rq2_on_degenerate_data_is_inconclusive_...``).
        """
        with pytest.raises(ValueError, match=message):
            rq2_tests(*args)


def test_an_inconclusive_result_names_itself_inconclusive_once() -> None:
    """Callers that already say 'inconclusive: ...' do not get the prefix twice."""
    for reason in (
        "no problem has a step 3",
        "inconclusive: no problem has a step 3",
        "inconclusive: inconclusive: no problem has a step 3",
    ):
        result = inconclusive_verdict(reason)
        assert result.method == "inconclusive: no problem has a step 3"
        assert result.verdict == "inconclusive"


def test_rq2_on_degenerate_data_is_inconclusive_with_its_reason_and_bugs_raise():
    """Two thoughts or an inf: every question inconclusive (a claim skips); shapes: a bug."""
    from codi_fixtures.stats import rq2_tests

    rng = np.random.default_rng(0)
    two = rq2_tests(rng.random((20, 2)), rng.random((20, 2)))
    for result in (two.position, two.beyond_position):
        assert result.verdict == "inconclusive" and "at least 3 thoughts" in result.method
    assert two.pooled.verdict == "descriptive"
    y = rng.random((20, 6))
    y[3, 2] = np.inf
    assert "inf" in rq2_tests(rng.random((20, 6)), y).beyond_position.method
    with pytest.raises(ValueError, match="differ in shape"):
        rq2_tests(rng.random((20, 6)), rng.random((19, 6)))


def test_union_route_multiplies_the_corrected_p_values_and_re_judges() -> None:
    """One of k routes to a verdict: every (corrected, else raw) p x k, capped at 1."""
    from codi_fixtures.stats import StatResult, union_route

    r = StatResult(
        0.0,
        0.5,
        -0.05,
        0.05,
        30,
        "synthetic",
        "greater",
        ci_level=0.9,
        sesoi=0.1,
        p_sesoi=0.9,
        p_equivalence=0.02,
        p_equivalence_corrected=0.03,
    ).with_verdict(0.05)
    assert r.verdict == "refuted"
    two = union_route(r, 2, alpha=0.05)
    assert two.verdict == "inconclusive"
    assert (two.p_corrected, two.p_sesoi_corrected, two.p_equivalence_corrected) == (
        pytest.approx(1.0),
        pytest.approx(1.0),
        pytest.approx(0.06),
    )
    assert union_route(r, 1) is r
    with pytest.raises(ValueError, match="routes"):
        union_route(r, 0)


def test_reasons_mark_exactly_the_family_corrected_p_values() -> None:
    """'(adjusted)' beside each corrected p-value, '(unadjusted)' beside a 1 - 2 alpha CI."""
    from codi_fixtures.stats.equivalence import decide

    _, plain = decide(0.5, 0.15, 0.9, p_value=0.01, sesoi=0.1, p_sesoi=0.2)
    assert "adjusted" not in plain
    _, reason = decide(0.5, 0.15, 0.9, p_value=0.01, sesoi=0.1, p_sesoi=0.2, adjusted=("p_sesoi",))
    assert "p_sesoi=0.2 (adjusted) >= 0.05" in reason
    assert "90% CI [0.15, 0.9] (unadjusted)" in reason
    assert "p=0.01 (adjusted)" not in reason  # p itself was not corrected
    # A CI at another level (a Bonferroni level) shows that level instead.
    _, bonferroni = decide(
        0.5, 0.15, 0.9, p_value=0.01, sesoi=0.1, p_sesoi=0.2, adjusted=("p_sesoi",), ci_level=0.99
    )
    assert "99% CI [0.15, 0.9]" in bonferroni and "(unadjusted)" not in bonferroni
    # StatResult names its corrected p-values; Holm sets all three.
    from codi_fixtures.stats import apply_holm_verdicts, mean_effect

    rng = np.random.default_rng(0)
    raw = mean_effect(rng.normal(0.5, 0.3, 60), sesoi=0.1, n_boot=499)
    assert raw.adjusted == ()
    (holm_result,) = apply_holm_verdicts([raw])
    assert holm_result.adjusted == ("p", "p_sesoi", "p_equivalence")
    assert "(adjusted)" in (holm_result.verdict_reason or "")
