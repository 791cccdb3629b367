"""RQ6: which attention edges carry the thoughts to the answer?

Attention knockout: the edge from the <eot> and answer queries to thought t's key is blocked
at one layer (or every layer at once); nothing else changes. Effects are Δ log p(gold), Holm
over the layers x thoughts grid; the <eot>-only knockout is reported beside it. The causal RQ2
asks whether attention on a thought predicts its knockout effect, with RQ2's decomposed tests
(codi_fixtures/analyses/rq6.py: requirements, statistics, figures).
"""

import pytest

from codi_fixtures.analyses import rq6

pytestmark = pytest.mark.codi_analyses("rq6")  # the study computes only what runs


def test_knockout_lowers_gold_logp(analysis, claim, thought, edge_layer):
    """Blocking the answer's attention to thought t at this layer lowers log p(gold) > SESOI."""
    claim.judge(rq6.knockout_claim(analysis, thought, edge_layer))


def test_attention_predicts_knockout_across_positions(analysis, claim, layer):
    """At this layer, the more attended thoughts are those whose knockout costs more, on average."""
    claim.judge(rq6.causal_attention_claim(analysis, layer, "position"))


def test_attention_predicts_knockout_beyond_position(analysis, claim, layer):
    """At this layer, attention predicts a thought's knockout effect beyond position."""
    claim.judge(rq6.causal_attention_claim(analysis, layer, "beyond_position"))
