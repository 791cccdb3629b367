"""RQ4's same-value claims on a real study of the bundled model, and on patches that do nothing.

The second is the same study with every interchange patch leaving log p(gold) as it was: a
model that ignores its thoughts.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from codi_fixtures.analyses import StudyAnalysis, requirements_of
from codi_fixtures.analyses.rq4 import Rq4, rq4_stats
from codi_fixtures.config import BUNDLED_CHECKPOINT, ModelConfig, Settings
from codi_fixtures.study.results import StudyResults

pytestmark = pytest.mark.skipif(
    not (BUNDLED_CHECKPOINT / "model.safetensors").exists(), reason="bundled model not built"
)


@pytest.fixture(scope="module")
def bundled_rq4(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudyResults, Settings]:
    from codi_fixtures.models import load_model
    from codi_fixtures.study.data import load_problems, stratified_sample
    from codi_fixtures.study.runs import compute_study, dimensions_of

    settings = Settings(model=ModelConfig(device="cpu"))
    model = load_model(settings.model)
    problems = stratified_sample(load_problems(BUNDLED_CHECKPOINT / "eval.jsonl"), 40, seed=0)
    needs = requirements_of((Rq4(),), settings, dimensions_of(model))
    cache = Path(tmp_path_factory.mktemp("rq4"))
    return compute_study(model, problems, settings.run, cache, needs), settings


def _same_tests(results: StudyResults, settings: Settings) -> list:
    return list(rq4_stats(StudyAnalysis.for_run(results, settings, (Rq4(),))).same_tests.values())


def test_same_value_patches_are_judged_where_different_ones_move_the_answer(bundled_rq4):
    """The bundled model's thoughts matter: its same-value claims are judged, not vacuous.

    At 40 problems a cell with few same-value donors or a wide CI stays inconclusive; most
    cells reach a verdict (measured: 12 of 18, all refuted).
    """
    results, settings = bundled_rq4
    tests = _same_tests(results, settings)
    for r in tests:
        assert "nothing to preserve" not in (r.verdict_reason or "")
    judged = [r for r in tests if r.verdict in ("supported", "refuted")]
    assert len(judged) >= len(tests) // 2, [r.verdict_reason for r in tests]


def _inert(results: StudyResults) -> tuple[StudyResults, np.ndarray]:
    """The study with every interchange patch leaving log p(gold) exactly as it was."""
    columns = [i for i, c in enumerate(results.conditions) if c.startswith("ic-")]
    logp = results.logp.copy()
    logp[:, columns] = results.clean_logp[:, None]
    return replace(results, logp=logp), logp


def _different_moved(results: StudyResults, logp: np.ndarray, every: int) -> StudyResults:
    """``logp`` with every ``every``-th problem's different-value patches lowering it by 1 nat."""
    moved = logp.copy()
    diff_cols = [i for i, c in enumerate(results.conditions) if c.endswith("-different")]
    rows = np.arange(results.logp.shape[0]) % every == 0
    moved[np.ix_(rows, diff_cols)] -= 1.0
    return replace(results, logp=moved)


def test_a_model_whose_patches_change_nothing_preserves_nothing(bundled_rq4):
    """No patch changes anything: "preserves the answer" would be a verdict about nothing.

    So it is inconclusive, with the reason; different-value patches that move log p(gold) for
    the typical problem (the claim's own estimand, the trimmed mean) give it back its verdict.
    """
    results, settings = bundled_rq4
    inert, logp = _inert(results)
    tests = _same_tests(inert, settings)
    assert len(tests) == 6 * 3  # (thought, step)
    for r in tests:
        assert r.verdict == "inconclusive"
        assert "nothing shown to preserve" in r.verdict_reason
    for r in _same_tests(_different_moved(results, logp, every=1), settings):
        assert "nothing shown to preserve" not in (r.verdict_reason or "")
        assert r.verdict == "supported", r.verdict_reason  # same-value Δ log p is exactly 0


@pytest.mark.parametrize("every", [5, 10])
def test_a_few_moved_patches_are_not_content_to_preserve(bundled_rq4, every: int):
    """Different-value patches that move 10-20% of problems leave their trimmed mean at 0.

    The claim tests the same-value patches' 20% trimmed mean; by that estimand a
    different-value patch moving a fifth of the problems "preserves the answer" too, so a
    "supported" same-value cell would distinguish nothing (the guard once counted only the
    share of moved problems, and said "supported" here).
    """
    results, settings = bundled_rq4
    _, logp = _inert(results)
    for r in _same_tests(_different_moved(results, logp, every=every), settings):
        assert r.verdict == "inconclusive"
        assert "nothing shown to preserve" in r.verdict_reason


def test_too_few_different_value_donors_decide_nothing(bundled_rq4):
    """With < 5 problems holding a different-value donor the thought's relevance is unknown."""
    results, settings = bundled_rq4
    _, logp = _inert(results)
    moved = _different_moved(results, logp, every=1)
    diff_cols = [i for i, c in enumerate(results.conditions) if c.endswith("-different")]
    sparse = moved.logp.copy()
    sparse[4:, diff_cols] = np.nan  # only four problems keep a different-value patch
    for r in _same_tests(replace(moved, logp=sparse), settings):
        assert r.verdict == "inconclusive"
        assert "have a donor with a different" in r.verdict_reason
