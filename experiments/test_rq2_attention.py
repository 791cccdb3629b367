"""RQ2: does the attention paid to a thought predict its importance, and at which layers?

Attention: from the <eot> query to thought t's position, head-averaged, at the
early / middle / late layer. Importance: delta log p(gold) under the
``--importance-kind`` ablation (default mean). Each problem contributes six
(attention, importance) pairs, so beside the pooled correlation (comparable
with earlier work) the claims use problem-aware tests.
"""

from codi_fixtures.figures import rq2_layer_scatter


def _judge(analysis, claim, role, test, label, difficulty=None):
    layer = analysis.layers.as_dict()[role]
    claim.judge(
        label.format(role=role, layer=layer),
        analysis.rq2(test, difficulty)[layer],
        context={"layer": layer, "role": role, "test": test, "difficulty": difficulty or "all"},
        figure=(f"rq2-{test}-L{layer}", lambda: rq2_layer_scatter(analysis, layer, test)),
    )


def test_attention_predicts_importance_pooled(analysis, claim, role):
    """Pooled over (problem, thought) pairs, attention at the layer correlates with importance."""
    _judge(analysis, claim, role, "pooled", "{role} layer L{layer}: pooled r > 0")


def test_attention_predicts_importance_within_problem(analysis, claim, role):
    """Within a problem, the thoughts that get more attention are the more important ones."""
    _judge(analysis, claim, role, "within", "{role} layer L{layer}: within-problem r > 0")


def test_attention_predicts_importance_beyond_position(analysis, claim, role):
    """Attention predicts importance beyond the average per-thought (position) profile."""
    _judge(analysis, claim, role, "centred", "{role} layer L{layer}: r beyond position > 0")


def test_attention_predicts_importance_by_difficulty(analysis, claim, role, difficulty):
    """Within problems of one difficulty bin, attention predicts importance."""
    _judge(
        analysis,
        claim,
        role,
        "within",
        f"{{role}} layer L{{layer}}, {difficulty}: within-problem r > 0",
        difficulty,
    )
