"""RQ3: can the intermediate results of the chain be decoded from the continuous thoughts?

Logit lens and linear probes on the clean run's hidden states at each thought, against a
value-distribution baseline, permuted labels and the question's own positions; step k is
1-based (codi_fixtures/analyses/rq3.py: requirements, statistics, figures).
"""

import pytest

from codi_fixtures.analyses import rq3

pytestmark = pytest.mark.codi_analyses("rq3")  # the study computes only what runs


def test_step_value_is_decodable_by_the_lens(analysis, claim, step):
    """Step k's value is decodable from some thought by the logit lens, beyond the baseline."""
    claim.judge(rq3.lens_decodes_step(analysis, step))


def test_thought_embedding_holds_step_value(analysis, claim, step, thought):
    """The logit lens reads step k's value at thought t's input embedding, beyond the baseline."""
    claim.judge(rq3.decodable_at(analysis, step, thought))


def test_probe_reads_step_value(analysis, claim, step, thought):
    """A linear probe reads step k's value at thought t beyond permuted labels and the question."""
    claim.judge(rq3.probe_decodes_step(analysis, step, thought))


def test_best_encoding_thoughts_are_the_important_ones(analysis, claim, tier):
    """The thought that best encodes each step is among the most important ones (RQ1 link)."""
    claim.judge(rq3.link_to_importance(analysis))
