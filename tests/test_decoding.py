"""RQ3 / RQ4 statistics on synthetic arrays with a known answer (no torch)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from codi_fixtures.analyses.rq3 import _combine, _holm, _probe_cell
from codi_fixtures.stats import StatResult, pvalue_or_one
from codi_fixtures.stats.decoding import (
    ProbeGrid,
    cv_probe,
    iia_summary,
    lens_rate,
    lens_rate_table,
    probe_effects,
    probe_grid,
    rq1_link_test,
    value_baseline,
)


def test_decoding_never_imports_torch():
    code = "import sys, codi_fixtures.stats.decoding; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_value_baseline_is_the_commonest_first_token_share():
    tokens = np.array([5, 5, 5, 7, 9, -1, -1])
    assert value_baseline(tokens) == (pytest.approx(0.6), 5)
    assert np.isnan(value_baseline(np.array([-1]))[0])


def test_lens_rate_against_the_value_baseline():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 4, 200)
    base = value_baseline(tokens)[0]
    perfect = lens_rate(np.zeros(200, dtype=int), tokens)
    assert perfect.rate == 1.0 and perfect.baseline == pytest.approx(base)
    assert perfect.result.statistic == pytest.approx(1.0 - base)
    assert perfect.result.p_value < 1e-6 and perfect.result.ci_low > 0
    assert perfect.result.verdict == "supported"
    # a reader that always names the commonest token only matches the baseline
    common = value_baseline(tokens)[1]
    ranks = np.where(tokens == common, 0, 3)
    blind = lens_rate(ranks, tokens)
    assert blind.result.statistic == pytest.approx(0.0) and blind.result.p_value > 0.4
    assert blind.result.ci_low < 0 < blind.result.ci_high < 0.15  # two-sided, not one-sided
    never = lens_rate(np.full(200, 7), tokens)
    # no hit: the CI stays near rate 0 (widened by the baseline's own sampling error)
    assert never.result.ci_high < 0.08 - base
    assert never.result.verdict == "refuted" and blind.result.verdict == "refuted"
    missing = lens_rate(np.full(3, -1), np.full(3, -1))
    assert missing.result.n == 0 and np.isnan(missing.rate)
    # no target at all is a verdict a claim can judge (skipped, with the reason), not a crash
    assert missing.result.verdict == "inconclusive"
    assert "no problem has a target" in str(missing.result.verdict_reason)


def test_lens_rate_table_counts_undecodable_targets_apart():
    ranks = np.zeros((4, 2, 3, 2), dtype=np.int32)
    ranks[:, 1] = 5
    tokens = np.array([[1, 2], [1, -1], [3, 2], [-1, -1]])
    values = np.array([[1.0, 2.0], [1.0, 9.5], [3.0, 2.0], [np.nan, np.nan]])
    ranks[tokens[:, None, None, :].repeat(2, 1).repeat(3, 2) < 0] = -1
    rates, base, n, bad = lens_rate_table(ranks, tokens, values)
    assert n.tolist() == [3, 2] and bad.tolist() == [0, 1]
    assert rates[0, 0].tolist() == [1.0, 1.0] and rates[1, 0].tolist() == [0.0, 0.0]
    assert base.tolist() == [pytest.approx(2 / 3), 1.0]


def _planted(n: int = 240, d: int = 16, seed: int = 0):
    """Hidden (N, 3, 2, d): position 2 site 1 holds the label linearly; the rest is noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, n)
    hidden = rng.normal(size=(n, 3, 2, d))
    hidden[:, 2, 1, :5] += 3.0 * np.eye(5)[labels]
    values = np.stack([labels.astype(float), np.full(n, np.nan)], axis=1)
    values[: n // 2, 1] = labels[: n // 2]
    return hidden, values, labels


def test_cv_probe_recovers_a_linear_label_and_permuting_destroys_it():
    hidden, _, labels = _planted()
    acc = cv_probe(hidden[:, 2, 1], labels).mean()
    perm = cv_probe(hidden[:, 2, 1], labels, permute=True).mean()
    noise = cv_probe(hidden[:, 0, 0], labels).mean()
    assert acc > 0.9
    assert perm < 0.35 and noise < 0.35


def test_probe_effects_support_the_planted_cell_only():
    hidden, values, _ = _planted()
    positions, sites = ("q_last", "bot", "t0"), ("emb", "L0")
    grid = probe_grid(hidden, values, positions, sites, n_folds=4)
    assert np.isnan(grid.correct[1, :, :, 120:]).all()  # no target: no row
    hit = probe_effects(grid, 0, "t0", "L0")
    assert hit["accuracy"].statistic > 0.8
    assert hit["minus_permuted"].verdict == "supported"
    assert hit["minus_question"].verdict == "supported"
    miss = probe_effects(grid, 0, "t0", "emb")
    assert miss["minus_question"].verdict != "supported"
    assert miss["minus_permuted"].verdict != "supported"


def test_iia_summary_pairs_rows_per_recipient():
    # 4 recipients, one cell: "different" rows hit the counterfactual for 3 of them,
    # random rows for none, the same-value donor never moves the answer.
    rec = np.repeat(np.arange(4), 3)
    kind = ["same", "different", "random"] * 4
    cf = np.repeat([10.0, 11.0, 12.0, 13.0], 3)
    clean = np.array([1.0, 2.0, 3.0, 4.0])
    answer = np.array([1, 10, 7, 2, 11, 7, 3, 12, 7, 4, 5, 7], dtype=float)
    dlp = np.tile([0.0, 2.0, 1.0], 4)
    (cell,) = iia_summary(
        recipient=rec,
        thought=np.full(12, 3),
        step=np.full(12, 2),
        kind=kind,
        answer=answer,
        delta_logp=dlp,
        counterfactual=cf,
        clean_answer=clean,
    )
    assert (cell.thought, cell.step, cell.n) == (3, 2, 4)
    assert cell.iia == 0.75 and cell.random_baseline == 0.0 and cell.unpatched_baseline == 0.0
    assert cell.same_unchanged == 1.0
    assert cell.same_delta_logp == 0.0 and cell.different_delta_logp == 2.0
    assert cell.iia_minus_random.statistic == pytest.approx(0.75)


def _link_data(linked: bool, n: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    # step k is best encoded in thought 5 - k (k = 0, 1)
    dec = rng.random((n, 2, 6)) < 0.2
    dec[:, 0, 5] = rng.random(n) < 0.9
    dec[:, 1, 4] = rng.random(n) < 0.9
    means = np.array([0.1, 0.2, 0.3, 0.4, 2.0, 3.0]) if linked else np.linspace(3, 0.1, 6)
    imp = means + rng.normal(0, 0.5, (n, 6))
    return dec.astype(float), imp


def test_rq1_link_is_supported_when_best_thoughts_are_the_important_ones():
    dec, imp = _link_data(linked=True)
    link = rq1_link_test(dec, imp)
    assert link.best_thought == (5, 4) and link.importance_rank == (1, 2)
    assert link.in_top == (True, True)
    assert link.result.statistic == pytest.approx(2.0)
    assert link.result.verdict == "supported"
    assert link.p_permutation == pytest.approx(1 / 15)  # the coarse exact p, reported only


def test_rq1_link_fails_when_best_thoughts_matter_least():
    dec, imp = _link_data(linked=False)
    link = rq1_link_test(dec, imp)
    assert link.importance_rank == (6, 5)
    assert link.result.statistic < 0
    assert link.result.verdict == "refuted"


def test_rq1_link_ignores_steps_nobody_has():
    dec, imp = _link_data(linked=True)
    dec = np.concatenate([dec, np.full((dec.shape[0], 1, 6), np.nan)], axis=1)
    assert rq1_link_test(dec, imp).best_thought == (5, 4)


def test_rq1_link_ranks_by_rqs_trimmed_mean_not_the_plain_mean():
    """A thought with a few huge effects has the top plain mean but not the top RQ1 importance."""
    dec, imp = _link_data(linked=True)  # thoughts 5, 4 best encode the steps, ranks 1, 2
    rare = np.zeros(imp.shape[0])
    rare[:30] = 100.0  # 10% of problems: plain mean +10, 20% trimmed mean unchanged
    imp[:, 0] += rare
    link = rq1_link_test(dec, imp)
    assert np.argmax(imp.mean(axis=0)) == 0
    assert link.importance_rank == (1, 2)
    assert "20% trimmed mean" in link.result.method


def test_rq1_link_leaves_out_problems_with_a_non_finite_importance():
    dec, imp = _link_data(linked=True)
    imp[:5, 2] = np.nan
    link = rq1_link_test(dec, imp)
    assert link.result.n == dec.shape[0] - 5 and link.importance_rank == (1, 2)


def test_rq1_link_with_importance_that_cannot_tell_thoughts_apart_says_nothing():
    """All-zero importance: every thought at the middle rank, statistic 0, never supported.

    With ties broken by thought index, thoughts 0-2 decoding steps 1-3 (the usual layout)
    ranked 1 / 2 / 3: "supported" with CI [1.5, 1.5] about importance that is all zero.
    """
    rng = np.random.default_rng(4)
    n, t = 30, 6
    dec = (rng.random((n, 3, t)) < 0.4).astype(float)
    for k in range(3):
        dec[:, k, k] = 1.0  # step k+1 best encoded by thought k
    link = rq1_link_test(dec, np.zeros((n, t)), n_boot=199)
    assert link.importance_rank == (3.5, 3.5, 3.5)
    assert link.result.statistic == 0.0 and link.result.verdict != "supported"


def test_equivalence_effect_supports_a_null_and_refutes_a_shift():
    from codi_fixtures.stats.decoding import equivalence_effect, equivalence_verdicts

    rng = np.random.default_rng(0)
    null = equivalence_effect(rng.normal(0.0, 0.05, 200), sesoi=0.1, n_boot=999)
    shift = equivalence_effect(rng.normal(0.5, 0.05, 200), sesoi=0.1, n_boot=999)
    vague = equivalence_effect(rng.normal(0.0, 1.0, 10), sesoi=0.1, n_boot=999)
    assert (null.verdict, shift.verdict, vague.verdict) == ("supported", "refuted", "inconclusive")
    assert -0.1 < null.ci_low < null.ci_high < 0.1
    family = equivalence_verdicts([null, shift], alpha=0.05)
    assert [r.verdict for r in family] == ["supported", "refuted"]
    assert family[0].p_corrected is not None and family[0].p_corrected >= null.p_value


# --- RQ3 probe cells: the verdict's CI, p-values and shown baseline agree ------------------------
_SITES = ("emb", "L0", "L1", "L2")  # m = 4 probed sites: Bonferroni x4 for the best one


def _probe_grid(acc: np.ndarray, perm: np.ndarray, question: np.ndarray) -> ProbeGrid:
    """One step, positions (q_last, bot, t0), 4 sites: t0 at L0 scores ``acc`` / ``perm``.

    Every question-position probe scores ``question``; every other cell scores 0.
    """
    n = acc.size
    correct = np.zeros((1, 3, len(_SITES), n))
    permuted = np.zeros_like(correct)
    correct[0, :2] = question
    correct[0, 2, 1], permuted[0, 2, 1] = acc, perm
    return ProbeGrid(("q_last", "bot", "t0"), _SITES, correct, permuted)


def _judged(grid: ProbeGrid) -> tuple[StatResult, StatResult, StatResult]:
    """The cell as the analysis judges it: Bonferroni x4, Holm (one cell), both baselines."""
    cell = _probe_cell(grid, 1, 0, "L0", len(_SITES), 0.05)
    (perm,) = _holm({0: cell["minus_permuted"]}, 0.05).values()
    (quest,) = _holm({0: cell["minus_question"]}, 0.05).values()
    return perm, quest, _combine(perm, quest, "L0", 0.05)


def _paired(b: int, c: int, both: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """0/1 arrays with b problems 1/0, c problems 0/1, ``both`` 1/1, the rest 0/0."""
    x = np.r_[np.ones(b), np.zeros(c), np.ones(both), np.zeros(n - b - c - both)]
    y = np.r_[np.zeros(b), np.ones(c), np.ones(both), np.zeros(n - b - c - both)]
    return x, y


def test_a_probe_cells_ci_is_at_the_bonferroni_level_of_its_p():
    """Best of 4 sites: p_sesoi x4 = 0.11 is not < 0.05, so the CI must not clear the SESOI.

    At the unadjusted level the 90% CI [0.124, ...] lay above the SESOI beside an inconclusive
    verdict; at alpha / 4 it contains it, and each side agrees with its p for every cell.
    """
    acc, perm = _paired(11, 1, 10, 40)  # acc - perm = 0.25, raw p_sesoi 0.027
    permuted, question, _ = _judged(_probe_grid(acc, perm, np.zeros(40)))
    assert 0.05 <= pvalue_or_one(permuted.p_sesoi) < 0.2
    assert permuted.ci_level == pytest.approx(1 - 2 * 0.05 / 4)
    assert permuted.verdict == "inconclusive" and permuted.ci_low <= 0.1
    for r in (permuted, question):
        assert (pvalue_or_one(r.p_sesoi) < 0.05) == (r.ci_low > 0.1)
    assert question.verdict == "supported"


def test_a_probe_cell_shows_the_baseline_that_decides():
    """Intersection-union over the two baselines: the numbers shown are the deciding one's."""
    # inconclusive: beyond the question baseline (supported), not beyond permuted labels
    acc, perm = _paired(11, 1, 10, 40)
    permuted, question, combined = _judged(_probe_grid(acc, perm, np.zeros(40)))
    assert (permuted.verdict, question.verdict, combined.verdict) == (
        "inconclusive",
        "supported",
        "inconclusive",
    )
    assert (combined.statistic, combined.ci_low, combined.p_sesoi) == (
        permuted.statistic,
        permuted.ci_low,
        permuted.p_sesoi,
    )
    assert "minus the permuted labels probe" in combined.method
    # refuted by the permuted labels (no better than a shuffled probe) though far above the
    # question positions: the refuted comparison is shown, not the supported one
    acc, perm = _paired(5, 5, 120, 200)
    permuted, question, combined = _judged(_probe_grid(acc, perm, np.zeros(200)))
    assert (permuted.verdict, question.verdict, combined.verdict) == (
        "refuted",
        "supported",
        "refuted",
    )
    assert (combined.statistic, combined.ci_high) == (permuted.statistic, permuted.ci_high)
    assert combined.ci_high < 0.1
    # supported: both are, and the binding one (larger p_sesoi) is shown
    acc, perm = _paired(30, 0, 20, 80)
    permuted, question, combined = _judged(_probe_grid(acc, perm, np.r_[np.ones(10), np.zeros(70)]))
    assert combined.verdict == "supported"
    binding = max((question, permuted), key=lambda r: pvalue_or_one(r.p_sesoi_corrected))
    assert binding is permuted and combined.statistic == permuted.statistic
    # the shown numbers decide the shown verdict on their own
    assert replace(combined, verdict=None).with_verdict(0.05).verdict == "supported"


@pytest.mark.parametrize(("b", "c", "both", "n"), [(5, 2, 10, 100), (4, 1, 30, 200), (6, 6, 0, 60)])
def test_a_probe_cells_refutation_agrees_with_its_ci(b: int, c: int, both: int, n: int):
    """The refuted side too: p_equivalence x4 < alpha exactly when the CI lies below the SESOI.

    At 5 / 2 of 100 (difference 0.03) the raw p_equivalence 0.014 beside a CI at alpha / 4
    reaching 0.102 made a cell inconclusive whose shown p said 'equivalent'.
    """
    acc, perm = _paired(b, c, both, n)
    permuted, _, _ = _judged(_probe_grid(acc, perm, np.zeros(n)))
    assert (pvalue_or_one(permuted.p_equivalence) < 0.05) == (permuted.ci_high < 0.1)
    assert (permuted.verdict == "refuted") == (permuted.ci_high < 0.1)


def test_a_probe_cell_is_refuted_by_either_baseline_only_at_half_alpha():
    """Two routes to "refuted" (either baseline): each needs its p_equivalence x 2 < alpha.

    Here the permuted-labels comparison alone is refuted (Holm p_equivalence 0.046): with
    either route at alpha a true claim at the SESOI would be refuted up to 2 alpha of the time.
    """
    acc, perm = _paired(1, 1, 0, 60)
    permuted, question, combined = _judged(_probe_grid(acc, perm, np.zeros(60)))
    assert permuted.verdict == "refuted" and question.verdict != "refuted"
    assert 0.025 < pvalue_or_one(permuted.p_equivalence_corrected) < 0.05
    assert combined.verdict == "inconclusive"
    assert "minus permuted labels: inconclusive" in str(combined.verdict_reason)
