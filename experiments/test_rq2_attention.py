"""RQ2: does the attention paid to a thought predict its importance, and at which layers?

Attention: from the <eot> query to thought t's position, head-averaged, at the early /
middle / late layer. Importance: delta log p(gold) under the ``--importance-kind`` ablation
(default mean). RQ2 is asked at two levels, each with its own test (codi_fixtures.stats.rq2_tests),
Holm across the three layers within each question (by difficulty: across all bins x layers).
The pooled r of earlier work is in the report and the JSON; its p treats the six pairs of a
problem as independent, so it decides no verdict (codi_fixtures/analyses/rq2.py:
requirements, statistics, figures).
"""

import pytest

from codi_fixtures.analyses import rq2

pytestmark = pytest.mark.codi_analyses("rq2")  # the study computes only what runs


def test_attention_tracks_importance_across_positions(analysis, claim, role):
    """Across the thoughts, the more attended positions are the more important ones on average."""
    claim.judge(rq2.attention_claim(analysis, role, "position"))


def test_attention_predicts_importance_beyond_position(analysis, claim, role):
    """Beyond each problem's and each position's baseline, attention predicts importance."""
    claim.judge(rq2.attention_claim(analysis, role, "beyond_position"))


def test_attention_predicts_importance_by_difficulty(analysis, claim, role, difficulty):
    """Within problems of one difficulty bin, attention predicts importance beyond position."""
    claim.judge(rq2.attention_claim(analysis, role, "beyond_position", difficulty))
