"""The experiments' own analyses: RQ3 (decoding), RQ4 (interchange), RQ6 routing.

Registered through the public extension point, so a run over ``experiments/`` computes their
read-outs and interchange rows in the same study; other test trees keep the RQ1 + RQ2 study.
"""

from codi_fixtures.analyses import routing, rq3, rq4


def pytest_codi_analyses(config):
    """RQ3 (probes at the role layers, or every layer with --rq3-all-layers), RQ4, routing."""
    return [
        rq3.Rq3(),
        rq4.Rq4(),
        routing.Routing(),
    ]
