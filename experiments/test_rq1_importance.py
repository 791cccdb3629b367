"""RQ1: how important is each continuous thought, causally?

Thought t (0-based) is the input at position Q+1+t. Ablating it replaces that
input once; everything after it is recomputed. Importance is measured as the
drop in log p(gold answer) (teacher-forced) and as the drop in accuracy.
"""

from codi_fixtures.analyses.rq1 import importance_by_thought, rq1_kind_bars


def test_ablating_thought_lowers_gold_logp(analysis, claim, thought, kind):
    """Ablating thought t lowers log p(gold answer) by more than the SESOI (mean over problems)."""
    claim.judge(
        f"ablating thought {thought} ({kind}) lowers log p(gold)",
        analysis.rq1_logp(kind)[thought],
        context={"thought": thought, "ablation kind": kind, "measure": "delta log p [nats]"},
        figure=(f"rq1-logp-{kind}", lambda: rq1_kind_bars(analysis, kind, "logp")),
    )


def test_ablating_thought_lowers_accuracy(analysis, claim, thought, kind):
    """Ablating thought t lowers accuracy by more than the SESOI (paired score test)."""
    claim.judge(
        f"ablating thought {thought} ({kind}) lowers accuracy",
        analysis.rq1_accuracy(kind)[thought],
        context={"thought": thought, "ablation kind": kind, "measure": "accuracy drop"},
        figure=(f"rq1-acc-{kind}", lambda: rq1_kind_bars(analysis, kind, "accuracy")),
    )


def test_ablating_all_thoughts_lowers_accuracy(analysis, claim, kind):
    """Control: ablating every thought at once lowers accuracy, so interventions can matter."""
    claim.judge(
        f"ablating all thoughts ({kind}) lowers accuracy",
        analysis.all_thoughts(kind),
        context={"thoughts": "all", "ablation kind": kind, "measure": "accuracy drop"},
        figure=("rq1-overview", lambda: importance_by_thought(analysis)),
    )


def test_last_thought_is_most_important(analysis, claim, kind):
    """The last thought matters most: its delta log p exceeds every other's by the SESOI."""
    claim.judge(
        f"the last thought is the most important ({kind})",
        analysis.last_most_important(kind),
        context={"ablation kind": kind, "measure": "delta log p, last minus rival [nats]"},
        figure=(f"rq1-logp-{kind}", lambda: rq1_kind_bars(analysis, kind, "logp")),
    )
