"""RQ5: how do the thoughts compose?

Every non-empty subset of the six thoughts is ablated (``--subset-kinds``, default mean) and
the latent loop is cut to k = 0..5 thoughts. Effects are Δ log p(gold) per problem; pair
interactions are E_ij - E_i - E_j with one Holm family over both directions (synergy,
redundancy) of the 15 pairs
(codi_fixtures/analyses/rq5.py: requirements, statistics, figures). The subset claims judge
the run's subset kind (mean when it was run) and skip, with one reason, under
``--subset-kinds none``.
"""

import pytest

from codi_fixtures.analyses import rq5

pytestmark = pytest.mark.codi_analyses("rq5")  # the study computes only what runs


def test_thought_pair_is_redundant(analysis, claim, pair):
    """Ablating both thoughts costs less than the sum of ablating each (interaction < -SESOI)."""
    claim.judge(rq5.pair_claim(analysis, pair, "redundancy"))


def test_thought_pair_is_synergistic(analysis, claim, pair):
    """Ablating both thoughts costs more than the sum of ablating each (interaction > SESOI)."""
    claim.judge(rq5.pair_claim(analysis, pair, "synergy"))


def test_a_proper_subset_carries_most_of_the_effect(analysis, claim, tier):
    """Some proper subset's ablation reaches 80% of the all-thoughts effect (Holm over them)."""
    claim.judge(rq5.smallest_subset_claim(analysis))


def test_some_thought_is_necessary_alone(analysis, claim, tier):
    """Some single thought's ablation lowers log p(gold) by more than the SESOI."""
    claim.judge(rq5.necessary_alone(analysis))


def test_thoughts_are_redundant_as_a_set(analysis, claim, tier):
    """No thought matters alone, but ablating them all at once does."""
    claim.judge(rq5.redundant_as_set(analysis))


def test_accuracy_rises_with_the_number_of_thoughts(analysis, claim, tier):
    """Accuracy rises with the number of thoughts run, k = 0..6 (per-problem slope > SESOI)."""
    claim.judge(rq5.accuracy_rises(analysis))


def test_accuracy_rises_with_thoughts_by_difficulty(analysis, claim, difficulty):
    """Within one difficulty bin, accuracy rises with the number of thoughts run."""
    claim.judge(rq5.accuracy_rises(analysis, difficulty))
