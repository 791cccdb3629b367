"""RQ5 mechanisms and statistics: subset ablations and fewer-thoughts runs as study rows."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from codi_fixtures.answers import format_number
from codi_fixtures.config import RunConfig
from codi_fixtures.engine import answer_targets, build_prompt, run_latent
from codi_fixtures.model.codi import CodiModel
from codi_fixtures.stats import StatResult, holm, mean_effect
from codi_fixtures.stats.composition import (
    effect_grid,
    interaction,
    interaction_tests,
    per_problem_smallest_size,
    reaching_subset_test,
    saturation,
    smallest_reaching_subset,
    trend_test,
)
from codi_fixtures.study.conditions import (
    Ablation,
    FewerThoughts,
    Requirements,
    all_subsets,
    subset_ablations,
    subset_label,
)
from codi_fixtures.study.interventions import AblationRef, build_patch
from codi_fixtures.study.runs import compute_study, default_requirements, dimensions_of


@pytest.fixture(scope="module")
def small_study(tiny_llama: CodiModel, tmp_path_factory: pytest.TempPathFactory):
    """Every subset (mean) and k = 0..T thoughts on a tiny model, through the runner."""
    from codi_fixtures.organism.task import make_splits

    problems = make_splits(10, 2, seed=5)[1]
    cfg = RunConfig(kinds=("mean",))
    n = tiny_llama.spec.n_thoughts
    base = default_requirements(cfg, dimensions_of(tiny_llama))
    extra = Requirements((*subset_ablations(n, "mean"), *(FewerThoughts(k) for k in range(n + 1))))
    cache = tmp_path_factory.mktemp("rq5")
    return problems, compute_study(tiny_llama, problems, cfg, cache, base | extra), cfg, cache


def test_all_subsets_are_every_nonempty_subset_by_size() -> None:
    """63 subsets of six thoughts, singles first, the full set last."""
    subsets = all_subsets(6)
    assert len(subsets) == 63 == len(set(subsets))
    assert subsets[:6] == [(t,) for t in range(6)] and subsets[-1] == tuple(range(6))
    assert [len(s) for s in subsets] == sorted(len(s) for s in subsets)
    assert len(all_subsets(6, max_size=2)) == 21
    names = [a.name for a in subset_ablations(6, "mean")]
    assert names[:6] == [f"t{t}-mean" for t in range(6)] and names[-1] == "all-mean"
    assert names[6] == "t0+t1-mean"


def test_subset_rows_equal_direct_engine_runs_and_batching_changes_nothing(
    tiny_llama: CodiModel, small_study, tmp_path
) -> None:
    """A subset row of the study = that ablation run alone; smaller chunks give the same."""
    problems, res, cfg, _ = small_study
    n = tiny_llama.spec.n_thoughts
    assert len(res.conditions) == len(set(res.conditions)) == 2**n - 1 + n + 1
    col = res.column("t1+t3-mean")
    values = torch.from_numpy(
        np.stack(
            [
                run_latent(tiny_llama, build_prompt(tiny_llama, [p.question]), generate=False)
                .thoughts[0]
                .float()
                .numpy()
                for p in problems
            ]
        )
    )
    ref = AblationRef.from_values(values, seed=cfg.seed)
    prompt = build_prompt(tiny_llama, [problems[2].question])
    patch = build_patch([Ablation((1, 3), "mean")], [2], ref)
    targets = answer_targets(tiny_llama, [format_number(problems[2].answer)])
    run = run_latent(tiny_llama, prompt, patch=patch, targets=targets)
    assert run.target_logp is not None
    assert abs(float(run.target_logp[0]) - res.logp[2, col]) < 2e-5
    small_cfg = RunConfig(kinds=("mean",), batch_rows=40)  # one problem per chunk
    needs = default_requirements(small_cfg, dimensions_of(tiny_llama)) | Requirements(
        (*subset_ablations(n, "mean"), *(FewerThoughts(k) for k in range(n + 1)))
    )
    small = compute_study(tiny_llama, problems, small_cfg, tmp_path, needs)
    np.testing.assert_allclose(small.logp, res.logp, atol=2e-5, rtol=0)


def test_fewer_thoughts_rows_are_the_shorter_loop(tiny_llama: CodiModel, small_study) -> None:
    """Row k = run_latent(n_thoughts=k); k = T is the clean run; the model is untouched."""
    problems, res, _, _ = small_study
    n = tiny_llama.spec.n_thoughts
    prompt = build_prompt(tiny_llama, [p.question for p in problems])
    targets = answer_targets(tiny_llama, [format_number(p.answer) for p in problems])
    full = run_latent(tiny_llama, prompt, generate=False)
    for k in (0, 2):
        run = run_latent(tiny_llama, prompt, targets=targets, n_thoughts=k)
        assert run.thoughts.shape[1] == k
        if k:
            assert torch.equal(run.thoughts, full.thoughts[:, :k])
        assert run.target_logp is not None
        np.testing.assert_allclose(
            res.logp[:, res.column(f"k{k}-thoughts")], run.target_logp.double().numpy(), atol=2e-5
        )
    np.testing.assert_allclose(res.logp[:, res.column(f"k{n}-thoughts")], res.clean_logp, atol=2e-5)
    assert tiny_llama.spec.n_thoughts == n
    with pytest.raises(ValueError, match="n_thoughts"):
        run_latent(tiny_llama, prompt, n_thoughts=-1)
    with pytest.raises(ValueError, match=">= 0"):
        FewerThoughts(-1)


def test_fewer_thoughts_beyond_the_model_is_a_config_error(tiny_llama, small_study, tmp_path):
    from codi_fixtures.errors import ConfigError

    problems, _, cfg, _ = small_study
    with pytest.raises(ConfigError, match="exceeds"):
        compute_study(tiny_llama, problems, cfg, tmp_path, Requirements((FewerThoughts(99),)))


# --- statistics -----------------------------------------------------------------------------
def _planted(n: int, pair_term: float, seed: int = 0) -> dict[tuple[int, ...], np.ndarray]:
    """Effects of every subset of 4 thoughts: additive singles plus a planted (0, 1) interaction."""
    rng = np.random.default_rng(seed)
    single = rng.normal(1.0, 0.3, (n, 4))
    effects = {}
    for s in all_subsets(4):
        e = single[:, list(s)].sum(axis=1) + rng.normal(0, 0.05, n)
        if {0, 1} <= set(s):
            e = e + pair_term
        effects[s] = e
    return effects


def test_interaction_is_the_moebius_inversion() -> None:
    """Pairs: E_ij - E_i - E_j; triples: the alternating sum over all sub-subsets."""
    e = {(0,): np.array([1.0]), (1,): np.array([2.0]), (2,): np.array([4.0])}
    e |= {(0, 1): np.array([10.0]), (0, 2): np.array([5.0]), (1, 2): np.array([6.0])}
    e |= {(0, 1, 2): np.array([20.0])}
    assert interaction(e, (1, 0))[0] == 10 - 1 - 2
    assert interaction(e, (0, 1, 2))[0] == 20 - 10 - 5 - 6 + 1 + 2 + 4
    with pytest.raises(ValueError):
        interaction(e, (0,))


def test_interaction_tests_find_planted_synergy_and_redundancy() -> None:
    """A planted +1 / -1 nat pair term is synergy / redundancy; the other pairs are additive."""
    for term, label in ((1.0, "synergy"), (-1.0, "redundancy")):
        tests = interaction_tests(_planted(60, term), n_thoughts=4, n_boot=999)
        by_pair = {t.subset: t for t in tests}
        assert by_pair[(0, 1)].label == label
        assert abs(by_pair[(0, 1)].trimmed_mean - term) < 0.1
        assert by_pair[(0, 1)].ci_low < term < by_pair[(0, 1)].ci_high
        assert all(t.label == "additive" for s, t in by_pair.items() if s != (0, 1))
        assert by_pair[(0, 1)].synergy.p_corrected is not None  # Holm over 6 pairs x 2 ways


def test_synergy_and_redundancy_are_one_holm_family_over_both_directions() -> None:
    """Six thoughts: 15 pairs x 2 directions = one Holm family of 30 tests.

    A planted, clear synergy of (0, 1) with B = 499 resamples has its p at the bootstrap
    floor 1 / 500 = 0.002: Holm over the 15 synergy tests alone would give 0.03 < alpha
    ("supported"), Holm over all 30 directional tests gives 0.06 (not supported), so the
    chance of any false synergy-or-redundancy label stays at alpha, not 2 alpha.
    """
    rng = np.random.default_rng(0)
    n = 40
    single = rng.normal(1.0, 0.3, (n, 6))
    effects = {}
    for s in all_subsets(6):
        e = single[:, list(s)].sum(axis=1) + rng.normal(0, 0.05, n)
        effects[s] = e + (3.0 if {0, 1} <= set(s) else 0.0)
    tests = interaction_tests(effects, n_thoughts=6, n_boot=499)
    assert len(tests) == 15
    syn = {t.subset: t.synergy for t in tests}[(0, 1)]
    floor = 1 / 500
    assert syn.p_value == pytest.approx(floor) and syn.p_sesoi == pytest.approx(floor)
    assert syn.p_corrected == pytest.approx(30 * floor)  # not 15 x: one family of 30
    assert syn.p_sesoi_corrected == pytest.approx(30 * floor)
    assert syn.verdict != "supported", syn.verdict_reason
    assert syn.ci_level == pytest.approx(0.9) and syn.ci_low > 0.1  # the CI alone would say so
    every = [r for t in tests for r in (t.synergy, t.redundancy)]
    assert [r.p_corrected for r in every] == pytest.approx(
        holm([r.p_value for r in every])  # Holm over all 30 directional p-values
    )
    with_more = interaction_tests(effects, n_thoughts=6, n_boot=1999)
    assert {t.subset: t for t in with_more}[(0, 1)].label == "synergy"  # floor 1/2000


@pytest.mark.parametrize("usable", [0, 1])
def test_a_pair_with_fewer_than_two_usable_problems_is_inconclusive_with_the_count(
    usable: int,
) -> None:
    """A pair whose interaction is finite on 0 or 1 problems: verdict inconclusive, a reason.

    It used to carry no verdict at all (``claim.judge`` raised, 30 errors in a run with one
    problem); the other pairs are still judged, in the same Holm family of 2 x 3 tests.
    """
    rng = np.random.default_rng(3)
    n = 30
    effects = {s: rng.normal(1.0, 0.3, n) * len(s) for s in all_subsets(3)}
    effects[(0, 1)] = effects[(0, 1)].copy()
    effects[(0, 1)][usable:] = np.nan  # (0, 1) is finite on the first ``usable`` problems only
    by_pair = {t.subset: t for t in interaction_tests(effects, n_thoughts=3, n_boot=499)}
    few = by_pair[(0, 1)]
    assert few.n == usable and few.label == "inconclusive"
    for result in (few.synergy, few.redundancy):
        assert result.verdict == "inconclusive"
        assert result.verdict_reason and f"{usable} usable problem" in result.verdict_reason
        assert "{t0, t1}" in result.verdict_reason
        assert result.p_corrected == 1.0  # still a member of the family (p = 1)
    for pair in ((0, 2), (1, 2)):
        assert by_pair[pair].n == n
        for result in (by_pair[pair].synergy, by_pair[pair].redundancy):
            assert result.verdict in ("supported", "refuted", "inconclusive")
            assert result.p_corrected is not None


def test_an_effect_grid_column_with_fewer_than_two_usable_problems_is_inconclusive() -> None:
    """The same rule in :func:`effect_grid`: a verdict with the count as its reason."""
    delta = np.full((8, 2), np.nan)
    delta[0, 0] = 0.5
    delta[:, 1] = np.linspace(0.5, 1.5, 8)
    logp, acc = effect_grid(delta, np.ones(8, dtype=bool), np.zeros((8, 2), dtype=bool))
    assert logp[0].verdict == "inconclusive" and logp[0].n == 1
    assert logp[0].verdict_reason and "1 usable problem" in logp[0].verdict_reason
    assert logp[1].verdict in ("supported", "refuted", "inconclusive") and logp[1].n == 8
    assert all(r.verdict is not None for r in acc)


def test_smallest_subset_and_per_problem_sizes() -> None:
    """Additive equal singles: 80% of four needs four thoughts... unless one dominates."""
    effects = _planted(40, 0.0)
    res = smallest_reaching_subset(effects, 4)
    assert res.subset is None and res.single_fraction < 0.5  # nothing smaller than all reaches 80%
    dominant = {s: (3.0 * (0 in s) + 0.1 * len(s)) * np.ones(10) for s in all_subsets(4)}
    res = smallest_reaching_subset(dominant, 4)
    assert res.subset == (0,) and res.single_best == (0,) and res.single_fraction > 0.8
    sizes = per_problem_smallest_size(dominant, 4)
    assert np.all(sizes == 1)


def test_reach_is_supported_by_a_carrying_subset_with_that_subsets_own_numbers() -> None:
    """Thought 0 carries 90% of the effect: supported, shown with its Holm p and its CI.

    Every subset holding t0 reaches 80% (p at its floor); the tie goes to the smallest, {t0}.
    The CI is at Holm's first-step level 1 - 2 alpha / m, m = 14 proper subsets of four.
    """
    rng = np.random.default_rng(3)
    full = rng.normal(3.0, 0.3, 40)
    effects = {
        s: (0.9 if 0 in s else 0.05 * len(s)) * full + rng.normal(0, 0.1, 40)
        for s in all_subsets(4)
    }
    effects[(0, 1, 2, 3)] = full
    reach = reaching_subset_test(effects, 4, n_boot=1999)
    r = reach.result
    assert r.verdict == "supported", r.verdict_reason
    assert reach.subset == (0,) and len(reach.per_subset) == 14
    assert r.statistic == pytest.approx(float(np.mean(effects[(0,)] - 0.8 * full)))
    assert r.ci_level == pytest.approx(1 - 2 * 0.05 / 14) and r.ci_low > 0
    assert r.p_corrected == pytest.approx(min(1.0, 14 * r.p_value))
    assert reach.shown_to_reach == sorted(
        (s for s in all_subsets(4)[:-1] if 0 in s), key=lambda s: (len(s), s)
    )
    assert "{t0}" in r.verdict_reason and "Holm x14" in r.method


def test_reach_is_refuted_only_when_every_proper_subset_falls_short() -> None:
    """Four equal additive thoughts: three carry 75% < 80%, so every proper subset falls short.

    Shown is the subset closest to reaching (a three-thought one), at the plain 1 - 2 alpha
    level: an intersection of refutations needs no correction.
    """
    reach = reaching_subset_test(_planted(40, 0.0), 4, n_boot=999)
    r = reach.result
    assert r.verdict == "refuted", r.verdict_reason
    assert reach.subset is not None and len(reach.subset) == 3
    assert r.ci_level == pytest.approx(0.9) and r.ci_high < 0
    assert all(x.verdict == "refuted" for x in reach.per_subset.values())
    assert r.p_equivalence == max(x.p_equivalence for x in reach.per_subset.values())


def test_reach_is_not_supported_by_picking_the_best_of_many_null_subsets() -> None:
    """Every proper subset exactly at 80% (the review's boundary null), 40 datasets.

    Picking the subset with the largest mean and testing it on the same data, uncorrected (the
    old rule), says "supported" in 15 of them; the union test with Holm over the 62 subsets in
    3 (about alpha; tests/test_stats_calibration.py measures the rate).
    """
    rng = np.random.default_rng(0)
    old = new = 0
    for _ in range(40):
        full = rng.normal(1.0, 0.5, 30)
        effects = {s: 0.8 * full + rng.normal(0, 0.5, 30) for s in all_subsets(6)[:-1]}
        effects[tuple(range(6))] = full
        pick = smallest_reaching_subset(effects, 6).subset
        if pick is not None:
            diff = effects[pick] - 0.8 * full
            old += mean_effect(diff, sesoi=0.0, trim=0.0, n_boot=999).verdict == "supported"
        reach = reaching_subset_test(effects, 6, n_boot=1999)
        new += reach.result.verdict == "supported"
        assert reach.result.p_corrected == pytest.approx(min(1.0, 62 * reach.result.p_value))
    assert old >= 8 and new <= 5, (old, new)


def test_reach_with_too_few_problems_is_inconclusive() -> None:
    effects = {s: np.array([1.0]) for s in all_subsets(3)}
    reach = reaching_subset_test(effects, 3)
    assert reach.result.verdict == "inconclusive" and reach.subset is None


def test_trend_and_saturation_on_planted_curves() -> None:
    """Accuracy rising then flat: the trend is found and saturation is at the knee."""
    rng = np.random.default_rng(1)
    ks = list(range(7))
    p = np.array([0.3, 0.6, 0.9, 0.95, 0.95, 0.95, 0.95])
    correct = rng.random((400, 7)) < p
    trend = trend_test(correct, ks, n_perm=999)
    assert trend.slope.verdict == "supported" and trend.p_permutation < 0.01
    k, results = saturation(correct, ks)
    assert k == 3 and len(results) == 6
    null = rng.random((60, 7)) < 0.5
    assert trend_test(null, ks, n_perm=499).p_permutation > 0.01


def test_trend_is_the_slope_of_the_mean_curve_even_when_most_slopes_are_zero():
    """0/1 correctness: half the problems always right, a fifth improving with k.

    Most per-problem slopes are exactly 0; the claim is about the mean curve (plain mean of
    the slopes), which rises 20 points over k = 0..6, so it must be supported.
    """
    ks = list(range(7))
    rng = np.random.default_rng(0)
    correct = np.zeros((100, 7))
    correct[:50] = 1.0
    for i in range(50, 70):
        correct[i, int(rng.integers(1, 7)) :] = 1.0
    trend = trend_test(correct, ks, n_perm=499)
    assert trend.slope.statistic == pytest.approx(float(np.polyfit(ks, correct.mean(axis=0), 1)[0]))
    assert trend.slope.verdict == "supported", trend.slope.verdict_reason


def test_composition_stats_never_imports_torch() -> None:
    """The statistics layer stays numpy/scipy only."""
    code = "import sys, codi_fixtures.stats.composition; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the RQ5 analysis on synthetic studies ----------------------------------------------------
def _rq5_results(
    correct_k: np.ndarray, difficulty: list[str], kinds: tuple[str, ...] = ("mean",), seed: int = 0
):
    """A study with every subset ablated per kind and k = 0..T-1 thoughts run.

    ``correct_k``: (N, T + 1) correctness with k thoughts (the last column is the clean run).
    Subset effects: each thought's own gamma effect, summed over the subset.
    """
    from codi_fixtures.study.results import StudyResults

    rng = np.random.default_rng(seed)
    n, t = correct_k.shape[0], correct_k.shape[1] - 1
    subsets = all_subsets(t)
    conditions = [subset_label(s, k, t) for k in kinds for s in subsets]
    conditions += [f"k{k}-thoughts" for k in range(t)]
    single = rng.gamma(2.0, 0.5, (n, t))
    clean_logp = -0.2 - rng.random(n)
    drop = [single[:, list(s)].sum(axis=1) for _ in kinds for s in subsets]
    drop += [np.full(n, 0.5 * (t - k)) for k in range(t)]
    logp = clean_logp[:, None] - np.column_stack(drop)
    correct = np.column_stack(
        [rng.random((n, len(kinds) * len(subsets))) < 0.5, correct_k[:, :t].astype(bool)]
    )
    c = len(conditions)
    return StudyResults(
        problem_ids=[f"p{i}" for i in range(n)],
        difficulty=difficulty,
        gold=np.arange(n, dtype=np.float64),
        conditions=conditions,
        clean_answer=np.arange(n, dtype=np.float64),
        clean_correct=correct_k[:, t].astype(bool),
        clean_logp=clean_logp,
        clean_text=[str(i) for i in range(n)],
        clean_nonfinite=np.zeros(n, dtype=bool),
        answer=np.zeros((n, c)),
        correct=correct,
        logp=logp,
        clean_logp_first=clean_logp / 2,
        logp_first=logp / 2,
        kl=np.zeros((n, c)),
        nonfinite=np.zeros((n, c), dtype=bool),
        attention=np.zeros((n, 0, 0, t)),
        meta={"n_layers": 4},
    )


def _view(results, **settings):
    from codi_fixtures.analyses import BUILTIN_ANALYSES, StudyAnalysis
    from codi_fixtures.config import Settings

    return StudyAnalysis.for_run(results, Settings(**settings), BUILTIN_ANALYSES)


def _steps(n: int, t: int, rng: np.random.Generator, share_up: float) -> np.ndarray:
    """(n, t + 1) 0/1 curves: a share of problems turn right from a random k on."""
    y = np.zeros((n, t + 1))
    for i in range(n):
        if rng.random() < share_up:
            y[i, int(rng.integers(1, t + 1)) :] = 1.0
    return y


def test_rq5_difficulty_bins_count_problems_not_row_indices() -> None:
    """RQ5's difficulty bins count problems, not the sum of their row indices.

    A one-problem bin at row 4 is inconclusive (it crashed the fewer-thoughts analysis) and a
    two-problem bin at rows 0 and 1 is tested (it was dropped as "no problems").
    """
    from codi_fixtures.analyses import rq5

    bins = ["5+step", "5+step", "2-step", "2-step", "4-step", "3-step", "3-step", "2-step"]
    rng = np.random.default_rng(1)
    a = _view(_rq5_results(_steps(len(bins), 3, rng, 0.6), bins))
    fewer = rq5.rq5_fewer(a)
    assert fewer.by_difficulty["5+step"].slope.n == 2
    single = fewer.by_difficulty["4-step"].slope
    assert single.verdict == "inconclusive" and "only 1 problem in 4-step" in single.method
    assert rq5.accuracy_rises(a, "4-step").result is single
    by_bin = rq5.rq5_kind(a, "mean").smallest_by_difficulty
    assert "5+step" in by_bin and "4-step" not in by_bin


def test_rq5_trend_by_difficulty_is_holm_corrected_across_the_bins() -> None:
    """The per-bin trend verdicts come from Holm over the difficulty bins.

    p_holm is Holm of the raw p's, and a bin supported alone (raw p_sesoi < alpha) but not
    after Holm is not supported.
    """
    from codi_fixtures.analyses import rq5
    from codi_fixtures.analyses.plotting import _difficulty_groups

    rng = np.random.default_rng(0)  # a 3-step bin with raw p_sesoi 0.032, Holm 0.096
    names = ["2-step", "3-step", "4-step", "5+step"]
    shares = [0.9, 0.35, 0.0, 0.0]
    curves = np.vstack([_steps(20, 3, rng, share) for share in shares])
    bins = [name for name in names for _ in range(20)]
    a = _view(_rq5_results(curves, bins))
    by = rq5.rq5_fewer(a).by_difficulty
    sesoi = a.sesoi_accuracy / a.n_thoughts
    raw = {
        name: trend_test(curves[rows], list(range(4)), sesoi=sesoi, seed=a.seed).slope
        for name, rows in _difficulty_groups(bins)
    }
    assert list(by) == names
    expected = holm([raw[name].p_value for name in names])
    assert [by[name].slope.p_corrected for name in names] == pytest.approx(expected)
    assert by["2-step"].slope.verdict == "supported"
    assert raw["3-step"].verdict == "supported" and by["3-step"].slope.verdict != "supported"
    assert by["3-step"].slope.p_sesoi_corrected >= 0.05 > raw["3-step"].p_sesoi
    evidence = rq5.accuracy_rises(a, "3-step")
    assert evidence.result.p_corrected == by["3-step"].slope.p_corrected
    assert evidence.context["family"] == "Holm over the 4 difficulty bins"


@pytest.mark.parametrize(
    ("kinds", "subset_kinds", "judged"),
    [
        (("mean",), ("mean",), "mean"),
        (("zero",), ("zero",), "zero"),
        (("zero", "mean"), ("zero", "mean"), "mean"),
        ((), (), None),
    ],
)
def test_rq5_subset_claims_judge_the_runs_subset_kind(kinds, subset_kinds, judged) -> None:
    """The subset claims read the kind whose subsets were run (``mean`` first).

    With ``--subset-kinds none`` each is unjudgeable with one shared reason, not a KeyError.
    """
    from codi_fixtures.analyses import rq5

    rng = np.random.default_rng(3)
    curves = _steps(12, 3, rng, 0.5)
    a = _view(_rq5_results(curves, ["2-step"] * 12, kinds), subset_kinds=subset_kinds)
    assert rq5.judged_kind(a) == judged
    claims = [
        rq5.pair_claim(a, (0, 1), "redundancy"),
        rq5.pair_claim(a, (1, 2), "synergy"),
        rq5.smallest_subset_claim(a),
        rq5.necessary_alone(a),
        rq5.redundant_as_set(a),
    ]
    for evidence in claims:
        if judged is None:
            assert evidence.unjudgeable == rq5.NO_SUBSETS
            assert evidence.result.verdict == "inconclusive"
        else:
            assert evidence.unjudgeable is None and f"({judged}" in evidence.label
            assert evidence.result.verdict in ("supported", "refuted", "inconclusive")
    assert rq5.accuracy_rises(a).unjudgeable is None  # the fewer-thoughts rows stay


def test_the_reach_result_shows_its_own_subsets_p_equivalence():
    """Statistic, CI and every p of the shown subset; the union's largest p only in the text."""
    rng = np.random.default_rng(3)
    full = rng.normal(2.0, 0.5, 40)
    effects = {
        s: full if len(s) == 6 else (0.95 if 0 in s else 0.5) * full + rng.normal(0, 0.3, 40)
        for s in all_subsets(6)
    }
    reach = reaching_subset_test(effects, 6, n_boot=1999)
    assert reach.result.verdict == "supported" and reach.subset is not None
    own = reach.per_subset[reach.subset]
    assert reach.result.p_equivalence == own.p_equivalence
    assert "largest p_equivalence over the subsets" in reach.result.method


def test_a_difficulty_bins_trend_is_inconclusive_only_when_too_small_and_a_bad_call_raises():
    """One problem in a bin: inconclusive, with the reason; a shape mismatch is a bug."""
    from types import SimpleNamespace

    from codi_fixtures.analyses.rq5 import _bin_trend

    view = SimpleNamespace(alpha=0.05, seed=0)
    one = _bin_trend(view, np.ones((1, 7)), list(range(7)), 0.01, "4-step")  # type: ignore[arg-type]
    assert one.slope.verdict == "inconclusive" and "only 1 problem in 4-step" in str(
        one.slope.verdict_reason
    )
    with pytest.raises(ValueError, match="scores must be"):
        _bin_trend(view, np.ones((3, 7)), list(range(6)), 0.01, "2-step")  # type: ignore[arg-type]


def test_no_subset_carries_80_percent_of_an_effect_that_is_not_there():
    """80% of nothing: "a subset carries it" is inconclusive, however clear the contrast.

    Thoughts that do nothing, all-six effect ~0.004 nats like the SmolLM2 organism's.
    """
    from codi_fixtures.analyses.rq5 import _needs_an_effect_to_carry
    from codi_fixtures.stats import mean_effect

    rng = np.random.default_rng(5)
    full = rng.normal(0.004, 0.001, 60)
    effects = {
        s: full if len(s) == 6 else (0.95 if 0 in s else 0.5) * full + rng.normal(0, 1e-4, 60)
        for s in all_subsets(6)
    }
    reach = reaching_subset_test(effects, 6, n_boot=1999)
    assert reach.result.verdict == "supported"  # the contrast alone says yes
    negligible = mean_effect(full, sesoi=0.1, n_boot=999)
    gated = _needs_an_effect_to_carry(reach, negligible, 0.1)
    assert gated.result.verdict == "inconclusive" and gated.result.n == reach.result.n
    assert gated.subset is None and gated.shown_to_reach == []  # nothing "shown to reach"
    assert "no effect for a subset to carry" in str(gated.result.verdict_reason)
    real = mean_effect(full * 1000, sesoi=0.1, n_boot=999)  # 4 nats: supported
    assert _needs_an_effect_to_carry(reach, real, 0.1) is reach


def _judged_result(statistic: float, p_sesoi: float, p_equivalence: float) -> StatResult:
    """A one-sided result at SESOI 0.1 with the given (Holm-corrected) p-values, judged at 0.05."""
    return StatResult(
        statistic=statistic,
        p_value=min(p_sesoi, 0.001),
        ci_low=statistic - 0.05,
        ci_high=statistic + 0.05,
        n=30,
        method="synthetic",
        alternative="greater",
        ci_level=0.9,
        sesoi=0.1,
        p_sesoi=p_sesoi,
        p_equivalence=p_equivalence,
    ).with_verdict(0.05)


def test_redundant_as_set_is_refuted_by_either_route_only_at_half_alpha() -> None:
    """Two routes to "refuted" (a thought matters alone; all together do not): p x 2 each.

    A single thought "supported" at Holm p_sesoi 0.03, or all six "refuted" at p_equivalence
    0.03, no longer refutes the set (either route at alpha erred up to 2 alpha); at 0.01 it does.
    """
    from codi_fixtures.analyses.rq5 import _redundant_set

    null = _judged_result(0.0, 1.0, 0.001)  # a single thought shown not to matter
    strong = _judged_result(1.5, 0.001, 1.0)  # all six shown to matter
    weak_single = _judged_result(0.3, 0.03, 1.0)
    assert weak_single.verdict == "supported"
    assert _redundant_set([weak_single, *[null] * 5], strong, 0.05).verdict == "inconclusive"
    sure_single = _judged_result(0.3, 0.01, 1.0)
    refuted = _redundant_set([sure_single, *[null] * 5], strong, 0.05)
    assert refuted.verdict == "refuted" and refuted.p_sesoi_corrected == pytest.approx(0.02)
    weak_all = _judged_result(0.0, 1.0, 0.03)
    assert weak_all.verdict == "refuted"
    assert _redundant_set([null] * 6, weak_all, 0.05).verdict == "inconclusive"
    assert _redundant_set([null] * 6, _judged_result(0.0, 1.0, 0.01), 0.05).verdict == "refuted"
    assert _redundant_set([null] * 6, strong, 0.05).verdict == "supported"
