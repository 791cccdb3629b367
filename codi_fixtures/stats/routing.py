"""Routing (RQ6): does a thought's producing query read the operands of step k? numpy only.

Per problem i, at one (thought, layer): the attention a_ij to each number token j of the
question. Operands of step k tend to sit at other positions than the other numbers (step 1's
come first), and attention depends on position, so a raw contrast "operands minus other
numbers" is confounded. Each number token's attention is therefore compared with what its
*position* predicts: the mean attention of number tokens at the same distance from the end of
the question (+-``bandwidth`` tokens) in the *other* problems (leave-one-problem-out, so a
problem never predicts itself). The contrast

    d_i = mean residual over step-k operand tokens - mean residual over the other numbers

is 0 in expectation when attention to a number depends on its position and not on its role
(the null), whatever the position profile is. The claim's test is the bootstrap-t of mean d_i
(:func:`~codi_fixtures.stats.inference.mean_effect`), with the SESOI in attention units.

Why not RQ2's problem-shuffle null: pairing problem i's attention with problem j's role tags
needs a common token coordinate, and questions differ in length and layout; the position
profile above is the well-defined version of "what another problem's tokens at this position
get" (tests/test_routing_stats.py checks the false-positive rate, on synthetic nulls and on the
bundled model's attention with another problem's tags placed at the same distances).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from codi_fixtures.stats.inference import StatResult, mean_effect

__all__ = [
    "SESOI_ROUTING",
    "position_residuals",
    "routing_contrast",
    "routing_effect",
    "shared_positions",
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

SESOI_ROUTING = math.log(1.25)
"""In log attention: operands read at least 25% more than other numbers at the same position."""
FLOOR = 1e-6
"""Attention below this is taken as this before the log (float16 read-outs underflow)."""


def _distance(q_len: NDArray[np.int64], width: int) -> NDArray[np.int64]:
    """(N, W) tokens from the end of the question (0 = the last question token; <0 = padding)."""
    return q_len[:, None] - 1 - np.arange(width)[None, :]


def _loo_table(
    rows: NDArray[np.int64], d: NDArray[np.int64], values: FloatArray, shape: tuple[int, int]
) -> tuple[FloatArray, FloatArray]:
    """Per (problem, distance): the sum and count of ``values`` over the *other* problems."""
    own_sum = np.zeros(shape)
    own_count = np.zeros(shape)
    np.add.at(own_sum, (rows, d), values)
    np.add.at(own_count, (rows, d), 1.0)
    return own_sum.sum(axis=0)[None, :] - own_sum, own_count.sum(axis=0)[None, :] - own_count


def position_residuals(
    att: FloatArray,
    eligible: BoolArray,
    q_len: NDArray[np.int64],
    *,
    floor: float = FLOOR,
    n_iter: int = 20,
) -> FloatArray:
    """(N, W) log attention minus its problem level and its distance's profile (eligible only).

    Model: ``log a_ij = s_i + g(d_ij) + e_ij`` (problem level s, distance profile g), fitted by
    backfitting; each problem's residual uses ``g`` from the *other* problems only. NaN where a
    token is not eligible or no other problem has an eligible token at its distance.
    """
    values = np.asarray(att, dtype=np.float64)
    n, width = values.shape
    dist = _distance(np.asarray(q_len), width)
    ok = np.asarray(eligible, dtype=bool) & np.isfinite(values) & (dist >= 0)
    rows, cols = np.nonzero(ok)
    out = np.full((n, width), np.nan)
    if rows.size == 0:
        return out
    y = np.log(np.maximum(values[rows, cols], floor))
    d = dist[rows, cols]
    count_i = np.bincount(rows, minlength=n).astype(float)
    count_d = np.bincount(d, minlength=width).astype(float)
    level = np.zeros(n)
    profile = np.zeros(width)
    for _ in range(n_iter):
        level = np.bincount(rows, y - profile[d], minlength=n) / np.maximum(count_i, 1)
        profile = np.bincount(d, y - level[rows], minlength=width) / np.maximum(count_d, 1)
    centred = y - level[rows]
    loo_sum, loo_count = _loo_table(rows, d, centred, (n, width))
    with np.errstate(invalid="ignore", divide="ignore"):
        loo = np.where(loo_count > 0, loo_sum / loo_count, np.nan)
    out[rows, cols] = centred - loo[rows, d]
    return out


def shared_positions(target: BoolArray, other: BoolArray, q_len: NDArray[np.int64]) -> BoolArray:
    """(N, W) target tokens at a distance where some *other* problem has a non-target number.

    Only these carry information beyond position: at a distance where every other problem's
    number is a target too, the profile is made of targets and absorbs any routing effect.
    """
    n, width = target.shape
    dist = _distance(np.asarray(q_len), width)
    rows, cols = np.nonzero(other & (dist >= 0))
    _, count = _loo_table(rows, dist[rows, cols], np.ones(rows.size), (n, width))
    safe = np.clip(dist, 0, width - 1)
    return target & (dist >= 0) & (np.take_along_axis(count, safe, axis=1) > 0)


def routing_contrast(
    att: FloatArray,
    q_len: NDArray[np.int64],
    target: BoolArray,
    numbers: BoolArray,
    *,
    adjust: bool = True,
) -> FloatArray:
    """(N,) per-problem contrast: target tokens minus the other number tokens (NaN: undefined).

    ``target`` (N, W): the step's operand tokens (a subset of ``numbers``); ``adjust=False``
    contrasts raw attention (position-confounded; for comparison only).
    """
    target = np.asarray(target, dtype=bool) & np.asarray(numbers, dtype=bool)
    other = np.asarray(numbers, dtype=bool) & ~target
    raw = np.log(np.maximum(np.asarray(att, dtype=np.float64), FLOOR))
    if adjust:
        values = position_residuals(att, numbers, q_len)
        target = shared_positions(target, other, np.asarray(q_len))
    else:
        values = np.where(numbers, raw, np.nan)

    def mean_over(mask: BoolArray) -> FloatArray:
        use = mask & np.isfinite(values)
        count = use.sum(axis=1)
        total = np.where(use, values, 0.0).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    return mean_over(target) - mean_over(other)


def routing_effect(
    contrast: FloatArray,
    *,
    sesoi: float = SESOI_ROUTING,
    alpha: float = 0.05,
    seed: int = 0,
    n_boot: int = 4999,
) -> StatResult:
    """Mean per-problem contrast above ``sesoi``? (bootstrap-t over problems with a contrast)."""
    d = np.asarray(contrast, dtype=np.float64)
    d = d[np.isfinite(d)]
    result = mean_effect(d, sesoi=sesoi, alpha=alpha, seed=seed, n_boot=n_boot)
    method = "position-adjusted contrast (leave-one-problem-out profile by distance); "
    return replace(result, method=method + result.method)
