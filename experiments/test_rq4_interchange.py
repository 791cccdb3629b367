"""RQ4: does the model use the values its thoughts encode? Interchange interventions.

Thought t is patched with a donor problem's whose step-k value differs (the answer should
become the counterfactual one), is the same (the answer should not move), or is random (the
baseline) (codi_fixtures/analyses/rq4.py: requirements, statistics, figures).
"""

import pytest

from codi_fixtures.analyses import rq4

pytestmark = pytest.mark.codi_analyses("rq4")  # the study computes only what runs


def test_patched_value_changes_the_answer(analysis, claim, thought, step):
    """Patching thought t with a different step-k value yields the counterfactual answer (IIA)."""
    claim.judge(rq4.iia_beats_random(analysis, thought, step))


def test_same_value_patch_preserves_the_answer(analysis, claim, thought, step):
    """Patching thought t from a donor with the same step-k value leaves log p(gold) unchanged."""
    claim.judge(rq4.same_value_preserves(analysis, thought, step))
