"""Calibration of the routing test (RQ6): false positives under position-only nulls, and power.

The verdict's test is the fixed-effects log attention ratio with its jackknife t inference
(:mod:`codi_fixtures.stats.routing`). Nulls, 1000 datasets each, one (thought, layer, step) cell
per dataset, n = 10, 30 and 100 problems (the quick and full tiers and between), alpha = 0.05,
window [0.03, 0.07]:

(a) synthetic: log attention = problem level + a steep distance profile + noise, on the
    bundled eval set's real token roles (so operands of step 1 sit early, as in the data);
(b) real data: the bundled model's routing attention, with step-k operand labels permuted
    among the number tokens at the same distance from the end of the question, across
    problems (position-matched relabelling: role is random given position, the attention
    values are the model's own).

Measured (these seeds, df = carriers - 1), false-positive rate at n = 10 / 30 / 100: (a) 0.053
/ 0.042 / 0.050, (b) 0.042 / 0.041 / 0.047 (with df = problems - 1: 0.056 / 0.043 / 0.050 and
0.049 / 0.047 / 0.048). Without the distance effect (``adjust=False``) the same nulls are
rejected at 0.32-0.37 (a) and 0.17-0.30 (b): the position confound is real. Power: a planted
1.6x step-2 effect at n = 100 is judged supported in 100 of 100 samples. The earlier estimator
(mean per-problem contrast against leave-one-problem-out position profiles, bootstrap-t) had
false-positive rates of 0.017-0.035 at n = 100: its problems' contrasts were negatively
correlated, which the bootstrap over problems ignored.

(c) few carriers: the synthetic null (heavy-tailed noise) where only m of n problems have an
    operand of the step (steps 4-5 on the bundled model, small n, GSM8K): the test's units are
    those carriers, df = m - 1 (``test_few_carriers_do_not_inflate_false_positives``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from codi_fixtures.stats import apply_holm_verdicts
from codi_fixtures.stats.inference import DegenerateData
from codi_fixtures.stats.routing import (
    MIN_ROUTING_PROBLEMS,
    SESOI_ROUTING,
    routing_carriers,
    routing_effect,
    routing_fit,
)
from codi_fixtures.study.roles import NUMBER, SPECIAL, tag_question, token_roles

BUNDLED = Path(__file__).resolve().parents[1] / "codi_fixtures" / "bundled"
ALPHA = 0.05
FPR_WINDOW = (0.03, 0.07)
N_DATASETS = 1000
SIZES = (10, 30, 100)


@pytest.fixture(scope="module")
def tags() -> dict[str, np.ndarray]:
    """Roles and operand masks of the bundled eval questions under the bundled tokenizer."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(BUNDLED))
    records = [json.loads(line) for line in (BUNDLED / "eval.jsonl").read_text().splitlines()]
    rows = []
    for r in records:
        enc = tok(r["question"], return_offsets_mapping=True)
        offsets = [None if e <= s else (s, e) for s, e in enc["offset_mapping"]]
        rows.append(token_roles(r["question"], tag_question(r["question"], r["cot"]), offsets))
    width = max(len(c) for c, _ in rows)
    roles = np.full((len(rows), width), -1, dtype=np.int8)
    ops = np.zeros((len(rows), width), dtype=np.int32)
    for i, (codes, masks) in enumerate(rows):
        roles[i, : len(codes)], ops[i, : len(masks)] = codes, masks
    return {"roles": roles, "operands": ops, "q_len": (roles >= 0).sum(axis=1)}


def _rate(flags: list[bool]) -> float:
    return float(np.mean(flags))


def _rejects(att: np.ndarray, *args: np.ndarray, adjust: bool = True) -> bool:
    """Does the one-sided test of beta > 0 reject at ALPHA (an undefined fit does not)?"""
    try:
        fit = routing_fit(att, *args, adjust=adjust)
    except ValueError:
        return False
    return routing_effect(fit, alpha=ALPHA).p_value < ALPHA


def _synthetic(tags: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """(N, W) attention: problem level x distance profile x log-normal noise; no role effect."""
    q = tags["q_len"]
    width = tags["roles"].shape[1]
    dist = q[:, None] - 1 - np.arange(width)[None, :]
    profile = -2.5 + 1.2 * np.cos(dist / 3.0) + 0.04 * dist  # jagged, rising with distance
    level = rng.normal(0.0, 0.5, size=(len(q), 1)) - np.log(q)[:, None]
    att = np.exp(level + profile + rng.normal(0.0, 0.6, size=dist.shape))
    return np.where(dist >= 0, att, np.nan)


@pytest.mark.parametrize("n_problems", SIZES)
def test_synthetic_position_null_is_calibrated(
    tags: dict[str, np.ndarray], n_problems: int
) -> None:
    """Attention that depends on position only: the test holds alpha; without adjusting, not."""
    rng = np.random.default_rng(n_problems)
    numbers = tags["roles"] == NUMBER
    adjusted, raw = [], []
    for _ in range(N_DATASETS):
        rows = rng.choice(len(tags["q_len"]), n_problems, replace=False)
        att = _synthetic(tags, rng)[rows]
        step = int(rng.integers(1, 4))
        target = ((tags["operands"][rows] >> (step - 1)) & 1).astype(bool)
        args = (tags["q_len"][rows], target, numbers[rows])
        adjusted.append(_rejects(att, *args))
        raw.append(_rejects(att, *args, adjust=False))
    assert FPR_WINDOW[0] <= _rate(adjusted) <= FPR_WINDOW[1], _rate(adjusted)
    assert _rate(raw) > 0.2  # the position confound is real, and the adjustment removes it


@pytest.fixture(scope="module")
def bundled_routing(tags: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The bundled model's routing read-out on its 400 eval problems (one clean pass)."""
    import torch

    from codi_fixtures.config import ModelConfig, RunConfig
    from codi_fixtures.model import load_codi
    from codi_fixtures.study.conditions import Requirements, RoutingReadout
    from codi_fixtures.study.data import load_problem_jsonl
    from codi_fixtures.study.routing import question_width
    from codi_fixtures.study.runs import _clean_pass

    torch.set_num_threads(1)
    model = load_codi(ModelConfig(ckpt=BUNDLED, device="cpu", dtype="float32"))
    problems = load_problem_jsonl(BUNDLED / "eval.jsonl")
    needs = Requirements(readouts=(RoutingReadout(),))
    out = _clean_pass(
        model, problems, RunConfig(), needs, routing_width=question_width(model, problems)
    )
    return {k.removeprefix("readout__"): v for k, v in out.items()}


def _relabel(
    target: np.ndarray, numbers: np.ndarray, dist: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Permute the target labels among number tokens at the same distance, across problems."""
    out = np.zeros_like(target)
    for d in np.unique(dist[numbers]):
        where = np.nonzero(numbers & (dist == d))
        out[where] = rng.permutation(target[where])
    return out


@pytest.mark.parametrize("n_problems", SIZES)
def test_real_data_position_matched_null_is_calibrated(
    bundled_routing: dict[str, np.ndarray], n_problems: int
) -> None:
    """The bundled model's attention, operand labels random given position: alpha holds."""
    att = bundled_routing["routing"].astype(np.float64)  # (N, L, T, W)
    q = bundled_routing["q_len"]
    numbers = bundled_routing["routing-roles"] == NUMBER
    assert (bundled_routing["routing-roles"][:, 0] == SPECIAL).all()
    dist = q[:, None] - 1 - np.arange(att.shape[-1])[None, :]
    rng = np.random.default_rng(1000 + n_problems)
    adjusted, raw = [], []
    for _ in range(N_DATASETS):
        rows = rng.choice(len(q), n_problems, replace=False)
        layer, thought = int(rng.integers(att.shape[1])), int(rng.integers(att.shape[2]))
        step = int(rng.integers(1, 4))
        target = ((bundled_routing["routing-operands"][rows] >> (step - 1)) & 1).astype(bool)
        target = _relabel(target, numbers[rows], dist[rows], rng)
        args = (q[rows], target, numbers[rows])
        adjusted.append(_rejects(att[rows, layer, thought], *args))
        raw.append(_rejects(att[rows, layer, thought], *args, adjust=False))
    assert FPR_WINDOW[0] <= _rate(adjusted) <= FPR_WINDOW[1], _rate(adjusted)
    assert _rate(raw) > 0.15


def test_the_whole_grid_holds_alpha_at_the_sesoi(bundled_routing: dict[str, np.ndarray]) -> None:
    """Holm over all 108 cells, every cell exactly at the SESOI: few false verdicts anywhere.

    The bundled model's attention with one position-matched relabelling per step and dataset
    (shared by every thought and layer, as in a study), the operands' attention then raised by
    the SESOI ratio. Some cell falsely "supported" / "refuted", 1000 datasets each: 0.116 /
    0.103 at n = 10, 0.059 / 0.070 at 15, 0.061 / 0.067 at 20 (0.083 / 0.083 in 300 here),
    0.046 / 0.058 at 30, 0.043 / 0.047 at 100 (all with df = problems - 1); so fewer than
    MIN_ROUTING_PROBLEMS = 30 are inconclusive. Asserted: 300 datasets at 30 (df = carriers -
    1: 0.030 / 0.023).
    """
    att = bundled_routing["routing"].astype(np.float64)  # (N, L, T, W)
    q = bundled_routing["q_len"]
    numbers = bundled_routing["routing-roles"] == NUMBER
    dist = q[:, None] - 1 - np.arange(att.shape[-1])[None, :]
    rng = np.random.default_rng(2020)
    n = MIN_ROUTING_PROBLEMS
    wrong = {"supported": 0, "refuted": 0}
    for _ in range(300):
        rows = rng.choice(len(q), n, replace=False)
        results = []
        for step in (1, 2, 3):
            target = ((bundled_routing["routing-operands"][rows] >> (step - 1)) & 1).astype(bool)
            target = _relabel(target, numbers[rows], dist[rows], rng)
            boost = np.where(target, np.exp(SESOI_ROUTING), 1.0)
            for layer in range(att.shape[1]):
                for thought in range(att.shape[2]):
                    try:
                        fit = routing_fit(
                            att[rows, layer, thought] * boost, q[rows], target, numbers[rows]
                        )
                    except DegenerateData:
                        continue
                    results.append(routing_effect(fit, alpha=ALPHA))
        judged = apply_holm_verdicts(results, alpha=ALPHA)
        for verdict in wrong:
            wrong[verdict] += any(r.verdict == verdict for r in judged)
    rates = {k: v / 300 for k, v in wrong.items()}
    assert max(rates.values()) <= FPR_WINDOW[1], rates


def test_planted_routing_is_found(bundled_routing: dict[str, np.ndarray]) -> None:
    """Step-2 operands read 1.6x more than the model does: supported in most samples."""
    att = bundled_routing["routing"].astype(np.float64)[:, 3, 2]  # one real (layer, thought)
    q = bundled_routing["q_len"]
    numbers = bundled_routing["routing-roles"] == NUMBER
    target = ((bundled_routing["routing-operands"] >> 1) & 1).astype(bool)
    planted = np.where(target, att * 1.6, att)
    rng = np.random.default_rng(2)
    found = []
    for _ in range(100):
        rows = rng.choice(len(q), 100, replace=False)
        fit = routing_fit(planted[rows], q[rows], target[rows], numbers[rows])
        found.append(routing_effect(fit).verdict == "supported")
    assert _rate(found) > 0.8
    # the planted log ratio (0.47) is exactly what the estimand moves by (a linear model)
    shift = (
        routing_fit(planted, q, target, numbers).beta - routing_fit(att, q, target, numbers).beta
    )
    assert shift == pytest.approx(np.log(1.6), abs=1e-6)
    assert SESOI_ROUTING < np.log(1.6)


def test_estimate_ci_and_p_values_are_one_t_distribution() -> None:
    """The CI bounds are where the one-sided p-values cross alpha; beta recovers a planted ratio."""
    rng = np.random.default_rng(3)
    n, width = 40, 12
    q = rng.integers(8, width + 1, size=n)
    dist = q[:, None] - 1 - np.arange(width)[None, :]
    numbers = (rng.random((n, width)) < 0.6) & (dist >= 0)
    target = numbers & (rng.random((n, width)) < 0.4)
    log_att = (
        rng.normal(0, 0.3, (n, 1)) - 0.1 * dist + 0.5 * target + rng.normal(0, 0.4, dist.shape)
    )
    fit = routing_fit(np.exp(log_att), q, target, numbers)
    assert fit.beta == pytest.approx(0.5, abs=0.15)
    res = routing_effect(fit, alpha=0.05)
    assert res.ci_level == pytest.approx(0.90)
    assert fit.p_greater(res.ci_low) == pytest.approx(0.05)
    assert fit.p_less(res.ci_high) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="only 0 of 40 problems have a step-k operand and"):
        routing_fit(np.exp(log_att), q, numbers, numbers)  # every number an operand


# --- few carriers: only some problems have a step-k operand at all ------------------------
FEW_CARRIERS = ((30, 1), (30, 3), (100, 1), (100, 2), (100, 3), (100, 5))
"""(problems, carriers): step 4 / 5 on the bundled model (48 / 22 of 100), small n, GSM8K."""
N_FEW = 1000


def _few_carrier_datasets(
    tags: dict[str, np.ndarray], n: int, m: int, rng: np.random.Generator
) -> list[tuple[np.ndarray, ...]]:
    """Position-only null, heavy-tailed (t(3)) noise; only ``m`` of ``n`` problems carry operands.

    The operands' attention is raised by exactly the SESOI ratio, so "supported" is always
    false; beta shifts by exactly the SESOI (a linear model), so ``p_sesoi`` here is the
    position-only null's p-value of beta > 0.
    """
    q = tags["q_len"]
    width = tags["roles"].shape[1]
    dist = q[:, None] - 1 - np.arange(width)[None, :]
    numbers = tags["roles"] == NUMBER
    out = []
    for _ in range(N_FEW):
        step = int(rng.integers(1, 6))
        operand = ((tags["operands"] >> (step - 1)) & 1).astype(bool) & numbers
        mixed = operand.any(axis=1) & (numbers & ~operand).any(axis=1)  # operand + other
        carriers = rng.choice(np.nonzero(mixed)[0], m, replace=False)
        others = np.setdiff1d(np.arange(len(q)), carriers)
        rows = np.concatenate([carriers, rng.choice(others, n - m, replace=False)])
        target = operand[rows].copy()
        target[m:] = False  # the other problems carry no operand of this step
        profile = -2.5 + 1.2 * np.cos(dist[rows] / 3.0) + 0.04 * dist[rows]
        level = rng.normal(0.0, 0.5, size=(n, 1)) - np.log(q[rows])[:, None]
        noise = 0.6 * rng.standard_t(3, size=profile.shape)
        log_att = level + profile + noise + SESOI_ROUTING * target
        att = np.where(dist[rows] >= 0, np.exp(log_att), np.nan)
        out.append((att, q[rows], target, numbers[rows]))
    return out


def test_few_carriers_do_not_inflate_false_positives(tags: dict[str, np.ndarray]) -> None:
    """Problems without a step-k operand add no degrees of freedom: alpha holds, deep tail too.

    1000 datasets per (n, m) = (30, 1), (30, 3), (100, 1), (100, 2), (100, 3), (100, 5), the
    rate below 0.05 (= falsely "supported" at the SESOI): with df = problems - 1 (before)
    0.203 / 0.063 / 0.230 / 0.105 / 0.070 / 0.060, and 247 of 6000 below alpha / 108 (the Holm
    grid's first step; nominal 0.00046, so about 3); with df = carriers - 1 and fewer than 3
    carriers degenerate (inconclusive): 0 / 0.015 / 0 / 0 / 0.020 / 0.028, 0 of 6000 (carriers:
    problems with an operand and another number; 0 / 0.011 / 0 / 0 / 0.021 / 0.033 when a
    problem of operands only counted too).
    """
    rng = np.random.default_rng(77)
    deep, total = 0, 0
    for n, m in FEW_CARRIERS:
        p, supported = [], []
        for args in _few_carrier_datasets(tags, n, m, rng):
            try:
                fit = routing_fit(*args)
            except DegenerateData:
                assert m < 3
                p.append(1.0)
                supported.append(False)
                continue
            assert fit.df == m - 1
            res = routing_effect(fit, alpha=ALPHA)
            assert res.p_sesoi is not None
            p.append(res.p_sesoi)
            supported.append(res.verdict == "supported")
        rate = float(np.mean(np.array(p) < ALPHA))
        assert rate <= ALPHA + 0.01, (n, m, rate)
        assert _rate(supported) <= ALPHA + 0.01, (n, m, _rate(supported))
        deep += int(np.sum(np.array(p) < ALPHA / 108))
        total += len(p)
    assert deep / total <= 3 * ALPHA / 108, deep  # 6000 datasets: at most 8


def test_degrees_of_freedom_are_the_carriers() -> None:
    """The t has carriers - 1 degrees of freedom; n = carriers.

    Carriers: problems whose numbers include a step-k operand and another number.
    """
    rng = np.random.default_rng(5)
    n, width, m = 40, 12, 7
    q = rng.integers(8, width + 1, size=n)
    dist = q[:, None] - 1 - np.arange(width)[None, :]
    numbers = (rng.random((n, width)) < 0.6) & (dist >= 0)
    numbers[:, 0] = numbers[:, 1] = True  # every problem has >= 2 number tokens
    target = numbers & (rng.random((n, width)) < 0.4)
    target[:m, 0] = True  # the first m problems carry an operand ...
    target[m:] = False  # ... and only they
    att = np.exp(rng.normal(0, 0.3, (n, 1)) - 0.1 * dist + rng.normal(0, 0.4, dist.shape))
    fit = routing_fit(att, q, target, numbers)
    assert (fit.problems, fit.carriers, fit.df) == (n, m, m - 1)
    res = routing_effect(fit)
    assert res.n == m and f"t({m - 1})" in res.method
    from scipy import stats

    assert res.p_value == pytest.approx(stats.t.sf(fit.beta / fit.se, m - 1))
    with pytest.raises(DegenerateData, match=f"only {m} of {n} problems"):
        routing_fit(att, q, target, numbers, min_carriers=m + 1)
    # A problem whose numbers are all operands holds no within-problem contrast either
    # (with the problem effect fitted, 1 - x is x's contrast with the sign flipped).
    all_operand = target.copy()
    all_operand[m : m + 5] = numbers[m : m + 5]
    fit = routing_fit(att, q, all_operand, numbers)
    assert (fit.carriers, fit.df) == (m, m - 1)
    assert routing_carriers(att, q, all_operand, numbers) == m
    target[2:] = False  # two carriers: t(1) would be all tail
    with pytest.raises(DegenerateData, match="only 2 of"):
        routing_fit(att, q, target, numbers)


class _View:
    """The parts of a StudyView that the routing grid reads."""

    def __init__(self, readouts: dict[str, np.ndarray], q_len: np.ndarray, steps: tuple[int, ...]):
        n, layers, thoughts, _ = readouts["routing"].shape
        self.results = SimpleNamespace(
            readouts=readouts,
            meta={"q_len": q_len, "n_layers": layers},
            problem_ids=[f"p{i}" for i in range(n)],
        )
        self.n_thoughts, self.steps, self.alpha = thoughts, steps, ALPHA
        self._memo: dict[object, object] = {}

    def finite_rows(self) -> np.ndarray:
        return np.ones(len(self.results.problem_ids), dtype=bool)

    def memoised(self, key: object, compute: Callable[[], object]) -> object:
        return self._memo.setdefault(key, compute())


def test_grid_is_inconclusive_for_a_step_with_few_carriers() -> None:
    """A step whose operands occur in < MIN_ROUTING_PROBLEMS problems: its cells inconclusive.

    60 problems, step 1's operands in all of them, step 2's in 12: the whole-grid guard
    (>= 30 problems) passes, step 2's cells say why they are inconclusive.
    """
    from codi_fixtures.analyses.routing import routing_grid

    rng = np.random.default_rng(11)
    n, width, layers, thoughts = 60, 14, 2, 2
    q = rng.integers(10, width + 1, size=n)
    dist = q[:, None] - 1 - np.arange(width)[None, :]
    roles = np.where(dist >= 0, 0, -1).astype(np.int8)
    roles[:, 1:7] = NUMBER
    operands = np.zeros((n, width), dtype=np.int32)
    operands[:, 1] |= 1  # step 1 reads the first number of every question
    operands[:12, 3] |= 2  # step 2 reads a number of 12 questions only
    log_att = rng.normal(0, 0.4, (n, layers, thoughts, width)) - 0.1 * dist[:, None, None]
    readouts = {
        "routing": np.where(dist[:, None, None] >= 0, np.exp(log_att), np.nan),
        "routing-roles": roles,
        "routing-operands": operands,
        "routing-tokens": np.full((n, width), "x"),
        "routing-steps": np.full(n, 2),
    }
    grid = routing_grid(_View(readouts, q, (1, 2)))  # type: ignore[arg-type]
    assert len(grid) == thoughts * 2 * layers
    for (_, step, _), r in grid.items():
        reason = r.verdict_reason or ""
        if step == 2:
            assert r.verdict == "inconclusive" and r.n == 12
            assert f"12 of {n} problems have an operand of step 2" in reason, reason
        else:
            assert "operand of step" not in reason and np.isfinite(r.statistic)
            assert r.n == n
