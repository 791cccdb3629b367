"""RQ1: how important is each continuous thought, causally?

Thought t (0-based) is the input at position Q+1+t. Ablating it replaces that
input once; everything after it is recomputed. Importance is measured as the
drop in log p(gold answer) (teacher-forced) and as the drop in accuracy
(codi_fixtures/analyses/rq1.py: requirements, statistics, figures).
"""

import pytest

from codi_fixtures.analyses import rq1

pytestmark = pytest.mark.codi_analyses("rq1")  # the study computes only what runs


def test_ablating_thought_lowers_gold_logp(analysis, claim, thought, kind):
    """Ablating thought t lowers log p(gold answer) by more than the SESOI (trimmed mean)."""
    claim.judge(rq1.lowers_logp(analysis, thought, kind))


def test_ablating_thought_lowers_accuracy(analysis, claim, thought, kind):
    """Ablating thought t lowers accuracy by more than the SESOI (paired score test)."""
    claim.judge(rq1.lowers_accuracy(analysis, thought, kind))


def test_ablating_all_thoughts_lowers_accuracy(analysis, claim, kind):
    """Control: ablating every thought at once lowers accuracy, so interventions can matter."""
    claim.judge(rq1.all_thoughts_lower_accuracy(analysis, kind))


def test_last_thought_is_most_important(analysis, claim, kind):
    """The last thought matters most: per problem, its delta log p exceeds every other's."""
    claim.judge(rq1.last_is_most_important(analysis, kind))
