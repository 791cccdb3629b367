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
from codi_fixtures.stats.composition import (
    interaction,
    interaction_tests,
    per_problem_smallest_size,
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
        assert abs(by_pair[(0, 1)].mean - term) < 0.1
        assert by_pair[(0, 1)].ci_low < term < by_pair[(0, 1)].ci_high
        assert all(t.label == "additive" for s, t in by_pair.items() if s != (0, 1))
        assert by_pair[(0, 1)].synergy.p_corrected is not None  # Holm across the 6 pairs


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
