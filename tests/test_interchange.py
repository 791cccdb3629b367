"""RQ4 interchange interventions: counterfactual answers, donors, patched runs, planted model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from codi_fixtures.config import ModelConfig
from codi_fixtures.organism.task import MAX_VALUE
from codi_fixtures.stats.decoding import IiaSummary, iia_summary_of, paired_effect
from codi_fixtures.study.data import load_problem_jsonl, stratified_sample
from codi_fixtures.study.interchange import (
    Donors,
    InterchangeRun,
    ValueDomain,
    choose_donors,
    counterfactual_answer,
    counterfactual_chain,
    parse_chain,
    run_interchange,
)
from codi_fixtures.study.problems import Problem

PLANTED = Path(__file__).resolve().parents[1] / "codi_fixtures" / "planted"
DIAGONAL = [(t, t + 1) for t in range(5)]  # the planted map: thought t <-> step t+1


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _problem(cot: str, intermediates: tuple[float, ...], answer: float) -> Problem:
    steps = len(intermediates)
    return Problem("p", "q", answer, steps, f"{min(steps, 5)}-step", intermediates, cot)


def test_counterfactual_replays_a_linear_chain():
    p = _problem("<<9-2=7>> <<7*2=14>> <<14-3=11>>", (7.0, 14.0, 11.0), 11.0)
    assert parse_chain(p.cot) == [("9-2", 7.0), ("7*2", 14.0), ("14-3", 11.0)]
    assert counterfactual_answer(p, 1, 5.0) == 7.0  # (5 * 2) - 3
    assert counterfactual_answer(p, 2, 4.0) == 1.0
    assert counterfactual_answer(p, 3, 8.0) == 8.0  # the last step is the answer
    assert counterfactual_answer(p, 4, 8.0) is None
    assert counterfactual_answer(replace(p, cot=""), 1, 5.0) is None


def test_counterfactual_substitutes_results_in_a_gsm8k_chain():
    # 48 clips in April, half as many in May: <<48/2=24>> <<48+24=72>>
    p = _problem("<<48/2=24>> <<48+24=72>>", (24.0, 72.0), 72.0)
    assert counterfactual_answer(p, 1, 30.0) == 78.0
    q = _problem("<<10/2=5>> <<6/(5-5)=0>>", (5.0, 0.0), 0.0)
    assert counterfactual_answer(q, 1, 5.0) is None  # division by zero


def test_a_linear_chain_replays_a_reused_result_only_where_it_is_unambiguous():
    # GSM8K style: 3 boxes of 4, 5 more, then the 12 taken away again.
    q = "Ann packs 3 boxes of 4 pens, buys 5 more, then gives back the boxed ones."
    p = replace(_problem("<<3*4=12>> <<12+5=17>> <<17-12=5>>", (12.0, 17.0, 5.0), 5.0), question=q)
    # 12 is not written in the question, but a linear chain's later operand may be a
    # given written as a word as well as a reused result: ambiguous, no target.
    assert counterfactual_chain(p, 1, 10.0) is None
    assert counterfactual_chain(p, 2, 20.0) == [20.0, 8.0]  # 12 is not a changed result
    # The organism's "loses 4" after a result of 4: the question writes it, a given.
    org = replace(
        _problem("<<1+3=4>> <<4-4=0>>", (4.0, 0.0), 0.0),
        question="Max has 1 shells. Then Max gets 3 more. Then Max gives away 4. How many?",
    )
    assert counterfactual_chain(org, 1, 7.0) == [7.0, 3.0]
    # "doubles" writes no 2: ambiguous in general, a given for the generator's own chains.
    doubles = replace(
        _problem("<<6-4=2>> <<2*2=4>>", (2.0, 4.0), 4.0),
        question="Zoe has 6 marbles. Then Zoe gives away 4. Then Zoe doubles the marbles.",
    )
    assert counterfactual_chain(doubles, 1, 5.0) is None
    assert counterfactual_chain(doubles, 1, 5.0, literal_operands=True) == [5.0, 10.0]


def test_a_free_chain_does_not_guess_whether_a_written_number_is_a_result():
    # <<4/2=2>> <<3*2=6>> <<6+2=8>>: each later 2 could be step 1's result or the given 2.
    p = replace(
        _problem("<<4/2=2>> <<3*2=6>> <<6+2=8>>", (2.0, 6.0, 8.0), 8.0),
        question="Half of 4 cakes, 3 times 2 plates, and 2 more.",
    )
    assert counterfactual_chain(p, 1, 5.0) is None
    assert counterfactual_chain(p, 2, 7.0) == [7.0, 9.0]  # 6 is not written: a result
    # Step 3's result 4 equals step 1's, which the change leaves: is the later 4 either?
    q = replace(
        _problem(
            "<<20*20/100=4>> <<5*5=25>> <<16*25/100=4>> <<16-4=12>>", (4.0, 25.0, 4.0, 12.0), 12.0
        ),
        question="20% of 20, 5 by 5, 25% of 16, then 16 less that.",
    )
    assert counterfactual_chain(q, 3, 6.0) is None


def test_a_counterfactual_chain_that_leaves_the_tasks_values_finds_no_donor():
    """A chain that passes through a value the task never takes does not qualify a donor.

    Replayed from the donor's value the chain reaches 34 (values 0..25 here): not an input
    of the task, even though its final answer is back in range.
    """
    recipient = _problem("<<9+2=11>> <<11*2=22>> <<22-10=12>>", (11.0, 22.0, 12.0), 12.0)
    assert counterfactual_chain(recipient, 1, 17.0) == [17.0, 34.0, 24.0]
    assert counterfactual_chain(recipient, 2, 14.0) == [14.0, 4.0]
    domain = ValueDomain(0, 25, integers=True)
    assert domain.contains([14.0, 4.0]) and not domain.contains([17.0, 34.0, 24.0])
    assert not domain.contains([2.5]) and ValueDomain(0, 25, integers=False).contains([2.5])
    donor_out = _problem("<<15+2=17>> <<17*2=34>> <<34-10=24>>", (17.0, 34.0, 24.0), 24.0)
    donors = choose_donors([recipient, donor_out], domain=domain, seed=0)
    assert donors.different[0, 0] == -1  # 17 -> 34 leaves 0..25
    unchecked = choose_donors([recipient, donor_out], seed=0)
    assert unchecked.different[0, 0] == 1 and unchecked.counterfactual[0, 0] == 24.0


def test_the_value_domain_allows_float_error_in_replayed_chains():
    """60 * 1.1 replays as 66.00000000000001: still an integer inside 0..66."""
    recipient = _problem("<<40+20=60>> <<60*1.1=66>>", (60.0, 66.0), 66.0)
    donor = _problem("<<30+20=50>> <<50*1.1=55>>", (50.0, 55.0), 55.0)
    chain = counterfactual_chain(recipient, 1, 50.0)
    assert chain is not None and chain[1] != 55.0 and chain[1] == pytest.approx(55.0)
    domain = ValueDomain.of([recipient, donor])
    assert domain == ValueDomain(50.0, 66.0, integers=True)
    assert domain.contains(chain)
    assert choose_donors([recipient, donor], domain=domain, seed=0).different[0, 0] == 1


def test_the_value_domain_is_the_problem_sets_own():
    problems = [
        _problem("<<3+4=7>> <<7*2=14>>", (7.0, 14.0), 14.0),
        _problem("<<9-2=7>>", (7.0,), 7.0),
    ]
    assert ValueDomain.of(problems) == ValueDomain(7.0, 14.0, integers=True)
    assert ValueDomain.of([]) is None


@pytest.fixture(scope="module")
def organism_problems() -> list[Problem]:
    return stratified_sample(load_problem_jsonl(PLANTED / "eval.jsonl"), 200, seed=2)


def test_donors_match_their_definitions(organism_problems):
    problems = organism_problems
    donors = choose_donors(problems, domain=ValueDomain(0, MAX_VALUE, integers=True), seed=3)
    again = choose_donors(problems, domain=ValueDomain(0, MAX_VALUE, integers=True), seed=3)
    assert np.array_equal(donors.different, again.different)  # seeded
    found = 0
    for r, p in enumerate(problems):
        for k in range(1, p.steps + 1):
            s, d, x = (int(a[r, k - 1]) for a in (donors.same, donors.different, donors.random))
            assert r not in (s, d, x)
            if s >= 0:
                assert problems[s].intermediates[k - 1] == p.intermediates[k - 1]
            if d >= 0:
                found += 1
                value = problems[d].intermediates[k - 1]
                assert value != p.intermediates[k - 1]
                cf = counterfactual_answer(p, k, value)
                assert cf == donors.counterfactual[r, k - 1] != p.answer
                chain = counterfactual_chain(p, k, value)
                assert chain is not None and all(0 <= v <= MAX_VALUE for v in chain)
        assert (donors.same[r, p.steps :] == -1).all()
    assert found > 0.9 * sum(p.steps for p in problems)


@pytest.fixture(scope="module")
def planted_model():
    from codi_fixtures.model import load_codi

    if not (PLANTED / "model.safetensors").exists():
        pytest.skip("planted model not built")
    return load_codi(ModelConfig(ckpt=PLANTED, device="cpu", dtype="float32"))


def test_a_patch_with_the_recipients_own_thought_changes_nothing(planted_model, organism_problems):
    problems = organism_problems[:30]
    own = np.tile(np.arange(30)[:, None], (1, 5))
    donors = Donors(own, own, own, np.full((30, 5), 99.0))
    run = run_interchange(planted_model, problems, donors, [(2, 1), (5, 2)])
    assert len(run.kind) == 30 * 2 * 3
    np.testing.assert_allclose(run.delta_logp, 0.0, atol=1e-4)
    assert np.array_equal(run.answer, run.clean_answer[run.recipient], equal_nan=True)


@pytest.fixture(scope="module")
def planted_iia(planted_model, organism_problems) -> tuple[InterchangeRun, list[IiaSummary]]:
    donors = choose_donors(
        organism_problems, domain=ValueDomain(0, MAX_VALUE, integers=True), seed=0
    )
    run = run_interchange(planted_model, organism_problems, donors, DIAGONAL)
    cells = iia_summary_of(run)
    return run, cells


def test_same_value_donors_leave_the_answer_more_often_than_different_ones(planted_iia):
    """At the planted thoughts the step value matters: a same-value patch moves log p less.

    The difference (20% trimmed mean over recipients) is above 0 at both cells and beyond
    the SESOI at thought 4 (measured: 8.8 and 8.0 nats); and at every diagonal cell a
    same-value patch leaves the answer unchanged more often than a different-value one (by
    > 20 points) -- though not always (measured at thoughts 0-4: for 78 / 71 / 63 / 56 / 52%
    of recipients, against 2-4% for a different value: a patch carries more than the value).
    """
    run, cells = planted_iia
    kinds = np.array(run.kind)
    for t, k in ((3, 4), (4, 5)):
        cell = (run.thought == t) & (run.step == k)
        same = run.delta_logp[cell & (kinds == "same")]
        diff = run.delta_logp[cell & (kinds == "different")]
        rec_same = run.recipient[cell & (kinds == "same")]
        rec_diff = run.recipient[cell & (kinds == "different")]
        common, i, j = np.intersect1d(rec_same, rec_diff, return_indices=True)
        assert common.size >= 20
        effect = paired_effect(diff[j], same[i], sesoi=0.1)
        assert effect.p_value < 0.05 and effect.ci_low > 0, effect.verdict_reason
        if t == 4:
            assert effect.verdict == "supported", effect.verdict_reason
    unchanged = run.answer == run.clean_answer[run.recipient]
    for c in cells:
        cell = (run.thought == c.thought) & (run.step == c.step)
        different_unchanged = unchanged[cell & (kinds == "different")].mean()
        assert c.same_unchanged > different_unchanged + 0.2, (c, different_unchanged)
        assert c.unpatched_baseline <= 0.05  # counterfactuals differ from the answer


def test_iia_is_well_above_baseline_at_the_planted_thoughts(planted_iia):
    """At every planted thought the patched answer is the counterfactual one >= 50% of the time.

    Measured on the shipped organism (interchange weight 4; 200 problems): 70 / 66 / 57 / 62 /
    62% at thoughts 0-4 against 9 / 5 / 7 / 6 / 8% for random donors. With weight 1 (the
    organism shipped before 2026-12-07) it was 23-38%: a patch carried problem-specific
    information besides the value.
    """
    _, cells = planted_iia
    for c in cells:
        assert c.iia_minus_random.verdict == "supported", (c.thought, c.step, c.iia)
        assert c.iia >= 0.5
