"""RQ2: does the attention paid to a thought predict its importance, and at which layers?

Attention: from the <eot> query to thought t's position, head-averaged, at the early /
middle / late layer. Importance: delta log p(gold) under the ``--importance-kind`` ablation
(default mean). RQ2 is asked at two levels, each with its own test (codi_fixtures.stats.rq2_tests),
Holm across the three layers within each question. The pooled r of earlier work is in the
report and the JSON; its p treats the six pairs of a problem as independent, so it decides
no verdict.
"""

from codi_fixtures.analyses.rq2 import rq2_layer_scatter


def _judge(analysis, claim, role, test, label, difficulty=None):
    layer = analysis.layers.as_dict()[role]
    claim.judge(
        label.format(role=role, layer=layer),
        analysis.rq2(test, difficulty)[layer],
        context={"layer": layer, "role": role, "test": test, "difficulty": difficulty or "all"},
        figure=(f"rq2-{test}-L{layer}", lambda: rq2_layer_scatter(analysis, layer, test)),
    )


def test_attention_tracks_importance_across_positions(analysis, claim, role):
    """Across the thoughts, the more attended positions are the more important ones on average."""
    _judge(analysis, claim, role, "position", "{role} layer L{layer}: position-level r > SESOI")


def test_attention_predicts_importance_beyond_position(analysis, claim, role):
    """Beyond each problem's and each position's baseline, attention predicts importance."""
    _judge(
        analysis, claim, role, "beyond_position", "{role} layer L{layer}: beyond-position r > SESOI"
    )


def test_attention_predicts_importance_by_difficulty(analysis, claim, role, difficulty):
    """Within problems of one difficulty bin, attention predicts importance beyond position."""
    _judge(
        analysis,
        claim,
        role,
        "beyond_position",
        f"{{role}} layer L{{layer}}, {difficulty}: beyond-position r > SESOI",
        difficulty,
    )
