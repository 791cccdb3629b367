"""RQ6, routing: does each thought read the question's operands of its step?

The query that produces thought t (<bot> for t0, thought t-1 after) attends to the question's
tokens; its attention to the numbers that step k reads is compared, within each problem, with
its attention to the question's other numbers, after removing what their positions predict
(codi_fixtures/analyses/routing.py; statistics in codi_fixtures/stats/routing.py).
"""

import pytest

from codi_fixtures.analyses import routing

pytestmark = pytest.mark.codi_analyses("routing")  # the study computes only what runs


def test_thought_reads_step_operands(analysis, claim, thought, step, layer):
    """At this layer, thought t's query reads step k's operands > 1.25x the other numbers."""
    claim.judge(routing.routing_claim(analysis, thought, step, layer))
