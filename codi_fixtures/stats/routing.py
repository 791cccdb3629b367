"""Routing (RQ6): does a thought's producing query read the operands of step k? numpy/scipy only.

At one (thought, layer), problem i's attention a_ij to each number token j of its question.
Operands of step k sit at other positions than the other numbers (step 1's come first), and
attention depends on position, so a raw "operands minus other numbers" contrast is
confounded. The estimand is the coefficient beta of the two-way fixed-effects model

    log a_ij = s_i + g(d_ij) + beta * operand_ij + e_ij

over the number tokens: s_i each problem's level, g a free profile over d_ij, the token's
distance from the end of the question (what a RoPE model's attention sees). exp(beta) is how
many times more an operand is read than another number of the same question at the same
distance. It is estimated by partialling out both effects (Frisch-Waugh-Lovell, by
alternating projections); problems are the independent units, so its standard error is the
delete-one-problem jackknife of beta on the partialled data (a CR3-type cluster-robust
variance), times the degrees-of-freedom factor (N - 1) / (N - K) of the K distance levels and
beta fitted on N tokens, with t(G - 1) quantiles, G the *carriers*: the problems whose
number tokens include a step-k operand and another number. A problem without an operand, or
with only operands, carries none of the within-problem contrast (it only helps to fit the
distance profile), so it adds no degree of freedom:
with df = problems - 1 a dataset in which 1 of 30 problems carries an operand was "significant"
at 0.05 in 0.20 of position-only null datasets (``tests/test_routing_stats.py``). Estimate, CI
and the three one-sided p-values all come from that one t distribution, so they are dual.

Why not RQ2's problem-shuffle null: pairing problem i's attention with problem j's role tags
needs a common token coordinate, and questions differ in length and layout.
``tests/test_routing_stats.py`` measures the false-positive rate on a synthetic position-only
null and on the bundled model's attention with operand labels permuted among the numbers at
the same distance (n = 10, 30, 100), and the power for a planted effect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import special

from codi_fixtures.stats.inference import MIN_PROBLEMS, DegenerateData, StatResult

__all__ = [
    "MIN_ROUTING_PROBLEMS",
    "SESOI_ROUTING",
    "RoutingFit",
    "routing_carriers",
    "routing_effect",
    "routing_fit",
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

SESOI_ROUTING = math.log(1.25)
"""In log attention: operands read at least 25% more than other numbers at the same distance."""
MIN_ROUTING_PROBLEMS = 30
"""Fewer problems make RQ6's routing grid inconclusive. Holm over its thought x step x layer
cells (108 on the bundled model) tests each at alpha / 108, deeper than the jackknife t is good
for on few problems: with every cell exactly at the SESOI (the bundled model's attention,
operand labels relabelled by position, ``tests/test_routing_stats.py``), some cell was falsely
"supported" / "refuted" in 0.116 / 0.103 of 1000 datasets at n = 10, 0.059 / 0.070 at 15,
0.061 / 0.067 at 20 (0.083 / 0.083 in another 300), 0.046 / 0.058 at 30 and 0.043 / 0.047
at 100 (measured with df = problems - 1; with df = carriers - 1, 0.030 / 0.023 in 300 at 30).
One cell alone holds alpha at n = 10. The analysis applies it per step as well: a
step whose operands occur in fewer problems (its *carriers*, :func:`routing_carriers`; the
test's units) has inconclusive cells."""
FLOOR = 1e-6
"""Attention below this is taken as this before the log (float16 read-outs underflow)."""
_TOL = 1e-10
_MAX_SWEEPS = 500


@dataclass(frozen=True)
class RoutingFit:
    """The fixed-effects estimate of the log attention ratio and its jackknife inference."""

    beta: float
    se: float
    df: int
    """``carriers - 1``: the t distribution's degrees of freedom."""
    problems: int
    """Problems with usable number tokens (all of them fit the problem and distance effects)."""
    tokens: int
    carriers: int
    """Problems whose usable number tokens include a step-k operand and another number."""

    def p_greater(self, null: float) -> float:
        """The p-value of H0: beta <= ``null``."""
        return float(special.stdtr(self.df, -(self.beta - null) / self.se))

    def p_less(self, null: float) -> float:
        """The p-value of H0: beta >= ``null``."""
        return float(special.stdtr(self.df, (self.beta - null) / self.se))

    def ci(self, level: float) -> tuple[float, float]:
        """The two-sided ``level`` interval for beta."""
        q = float(special.stdtrit(self.df, (1.0 + level) / 2.0))
        return self.beta - q * self.se, self.beta + q * self.se


def _partial_out(
    values: FloatArray, groups: tuple[NDArray[np.int64], ...], sizes: tuple[FloatArray, ...]
) -> FloatArray:
    """``values`` minus their projection on the groups' indicator columns (alternating means)."""
    out = values.copy()
    for _ in range(_MAX_SWEEPS):
        largest = 0.0
        for index, size in zip(groups, sizes, strict=True):
            means = np.bincount(index, out, minlength=size.size) / np.maximum(size, 1.0)
            out -= means[index]
            largest = max(largest, float(np.abs(means).max(initial=0.0)))
        if largest < _TOL:
            break
    return out


def _usable(
    att: FloatArray, q_len: NDArray[np.int64], numbers: BoolArray
) -> tuple[FloatArray, NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Attention as float64, distance from the question's end, and the usable number tokens."""
    values = np.asarray(att, dtype=np.float64)
    width = values.shape[1]
    dist = np.asarray(q_len)[:, None] - 1 - np.arange(width)[None, :]
    ok = np.asarray(numbers, dtype=bool) & np.isfinite(values) & (dist >= 0)
    rows, cols = np.nonzero(ok)
    return values, dist, rows, cols


def routing_carriers(
    att: FloatArray, q_len: NDArray[np.int64], target: BoolArray, numbers: BoolArray
) -> int:
    """Problems whose usable number tokens include a step-k operand and another number.

    The units of :func:`routing_fit`'s test (its t has carriers - 1 degrees of freedom).
    Arguments as there.
    """
    _, _, rows, cols = _usable(att, q_len, numbers)
    return _count_carriers(rows, np.asarray(target, dtype=bool)[rows, cols])


def _count_carriers(rows: NDArray[np.int64], is_operand: BoolArray) -> int:
    """Problems (``rows``) with both an operand and a non-operand token.

    Only they hold a within-problem contrast: with the problem effect fitted, a problem whose
    numbers are all operands carries as little of it as one with none (the contrast of
    ``1 - x`` is the contrast of ``x`` with its sign flipped).
    """
    with_operand = np.unique(rows[is_operand])
    with_other = np.unique(rows[~is_operand])
    return int(np.intersect1d(with_operand, with_other, assume_unique=True).size)


def routing_fit(
    att: FloatArray,
    q_len: NDArray[np.int64],
    target: BoolArray,
    numbers: BoolArray,
    *,
    adjust: bool = True,
    min_carriers: int = MIN_PROBLEMS,
) -> RoutingFit:
    """The beta of ``log a = problem + distance + beta * target`` over the number tokens.

    ``att`` (N, W) attention to each question column (NaN / padding ignored), ``q_len`` (N,)
    question lengths, ``target`` (N, W) the step's operand tokens (a subset of ``numbers``).
    ``adjust=False`` drops the distance effect (the position-confounded contrast; for
    comparison only). Raises :class:`DegenerateData` (with the reason) when beta is not
    identified, or when fewer than ``min_carriers`` problems carry a step-k operand.

    Degrees of freedom: carriers - 1. The jackknife still leaves out every problem in turn,
    carriers or not: a problem without an operand moves beta through the distance profile it
    helps to fit, so its term is real variance, and a leave-one-carrier-out variant understated
    it (position-only t(3) null, 10000 datasets: rejected at 0.05 in 0.069 with 5 carriers of
    30, 0.061 with 22 of 100). As chosen: 0.017 / 0.030 / 0.040 / 0.046 with 3 / 5 / 10 / 22
    carriers, none below alpha / 108 (conservative with few carriers, near nominal from ~20).
    """
    values, dist, rows, cols = _usable(att, q_len, numbers)
    n, width = values.shape
    problems = int(np.unique(rows).size)
    if problems < MIN_PROBLEMS:
        raise DegenerateData(f"fewer than {MIN_PROBLEMS} problems with number tokens ({problems})")
    y = np.log(np.maximum(values[rows, cols], FLOOR))
    x = np.asarray(target, dtype=bool)[rows, cols].astype(np.float64)
    carriers = _count_carriers(rows, x > 0)
    if carriers < max(min_carriers, 2):
        raise DegenerateData(
            f"only {carriers} of {problems} problems have a step-k operand and another number "
            "among their number tokens; the test's units are those problems (t(carriers - 1)), "
            f"and it needs >= {max(min_carriers, 2)}"
        )
    d = dist[rows, cols]
    groups: tuple[NDArray[np.int64], ...] = (rows,)
    sizes: tuple[FloatArray, ...] = (np.bincount(rows, minlength=n).astype(np.float64),)
    if adjust:
        groups += (d,)
        sizes += (np.bincount(d, minlength=width).astype(np.float64),)
    xt, yt = _partial_out(x, groups, sizes), _partial_out(y, groups, sizes)
    sxx = float(xt @ xt)
    if sxx < 1e-9 * max(1.0, float(x @ x)):
        raise DegenerateData(
            "no step-k operand differs in role from another number of its question at the same "
            "distance: role and position coincide"
        )
    sxy = float(xt @ yt)
    beta = sxy / sxx
    used = np.unique(rows)
    sxx_i = np.bincount(rows, xt * xt, minlength=n)[used]
    sxy_i = np.bincount(rows, xt * yt, minlength=n)[used]
    rest = sxx - sxx_i
    if np.any(rest <= 1e-9 * sxx):
        raise DegenerateData("one problem carries all of the operand contrast: no jackknife")
    loo = (sxy - sxy_i) / rest
    fitted = 1 + (int(np.unique(d).size) if adjust else 0)  # distance levels and beta
    if rows.size <= fitted:
        raise DegenerateData(f"{rows.size} number tokens cannot fit {fitted} distance levels")
    variance = (problems - 1) / problems * float(np.sum((loo - loo.mean()) ** 2))
    variance *= (rows.size - 1) / (rows.size - fitted)
    if not variance > 0:
        raise DegenerateData("the contrast does not vary across problems: no standard error")
    return RoutingFit(beta, math.sqrt(variance), carriers - 1, problems, int(rows.size), carriers)


def routing_effect(
    fit: RoutingFit, *, sesoi: float = SESOI_ROUTING, alpha: float = 0.05
) -> StatResult:
    """Is beta above ``sesoi``? The (1 - 2 alpha) CI and the one-sided p-values of ``fit``."""
    level = 1.0 - 2.0 * alpha
    low, high = fit.ci(level)
    result = StatResult(
        statistic=fit.beta,
        p_value=fit.p_greater(0.0),
        ci_low=low,
        ci_high=high,
        n=fit.carriers,
        method=(
            "log attention ratio, operands / other numbers, two-way fixed effects (problem, "
            f"distance from the question's end; {fit.tokens} number tokens of {fit.problems} "
            f"problems); delete-one-problem jackknife SE with a degrees-of-freedom factor, "
            f"t({fit.df}): n = {fit.carriers} problems with a step-k operand"
        ),
        alternative="greater",
        ci_level=level,
        sesoi=sesoi,
        p_sesoi=fit.p_greater(sesoi),
        p_equivalence=fit.p_less(sesoi),
    )
    return result.with_verdict(alpha)
