"""RQ6, routing: which question tokens does each thought read?

Attention from the query that produces thought t (``<bot>`` for t0, thought t-1 after) to every
question token, per layer.

Requirements: the :class:`~codi_fixtures.study.conditions.RoutingReadout` of the clean pass.
Statistics: per (thought t, step k, layer L) the claim "thought t reads the operands of step k
more than the other numbers of its question", judged on the log attention ratio within problem and
distance (two-way fixed effects, :mod:`codi_fixtures.stats.routing`), SESOI log 1.25, Holm over the
thought x step x layer grid, which needs >= 30 problems (``MIN_ROUTING_PROBLEMS``), and >= 30
problems with an operand of step k for step k's cells (the test's units; fewer: inconclusive).
Figures: the thought x token-role heatmap per layer (raw attention), and one worked example (a
question's tokens shaded by each thought's attention).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
from matplotlib.figure import Figure

from codi_fixtures.analyses.base import Evidence, FigureSpec
from codi_fixtures.analyses.view import StudyView, guarded
from codi_fixtures.config import Settings
from codi_fixtures.stats import StatResult, apply_holm_verdicts, inconclusive_verdict
from codi_fixtures.stats.routing import (
    MIN_ROUTING_PROBLEMS,
    SESOI_ROUTING,
    routing_carriers,
    routing_effect,
    routing_fit,
)
from codi_fixtures.study.conditions import Dimensions, Requirements, RoutingReadout
from codi_fixtures.study.roles import NAME, NUMBER, OPERATION, OTHER

__all__ = [
    "Routing",
    "RoutingData",
    "role_columns",
    "role_heatmap",
    "role_means",
    "routing_claim",
    "routing_data",
    "routing_grid",
    "worked_example",
]


def role_columns(steps: Sequence[int]) -> tuple[str, ...]:
    """The token roles of the heatmap: operands of each step, then the other roles."""
    return (
        *(f"operands s{k}" for k in steps),
        f"numbers no step {_span(steps)} reads",
        "operation words",
        "names",
        "other words",
    )


def _span(steps: Sequence[int]) -> str:
    """The steps as a span: 1-3 for steps 1, 2, 3; a single step alone."""
    return f"{steps[0]}-{steps[-1]}" if len(steps) > 1 else f"{steps[0]}" if steps else ""


class Routing:
    """The routing analysis (registered by ``experiments/conftest.py``; claims in test_rq6_*)."""

    name = "routing"

    def requirements(self, settings: Settings, dims: Dimensions) -> Requirements:
        """The routing read-out of the clean pass (no extra rows)."""
        return Requirements(readouts=(RoutingReadout(),))

    def compute(self, view: StudyView) -> dict[tuple[int, int, int], StatResult]:
        """The claim grid (thought, step, layer) -> result."""
        return routing_grid(view)

    def figures(self, view: StudyView) -> list[FigureSpec]:
        """Role heatmap per layer; the worked example."""
        data = routing_data(view)
        if data is None:
            return []
        layer = example_layer(view)
        return [
            FigureSpec(
                "RQ6 routing: attention per token role, thought and layer",
                "rq6_routing_roles",
                partial(role_heatmap, view),
                "one cell per (thought, token role) in each layer's panel: raw attention from "
                "the query that produces the thought to one token of that role (head mean), "
                "averaged over the role's tokens in a question, then over questions "
                f"(n = {data.n} questions). Not the claims' contrast: the numbers column holds "
                "only numbers that no shown step reads, and nothing is adjusted for position, "
                "whereas a claim compares step k's operands with all other numbers of the "
                "question (other steps' operands included) at the same distance from its end",
            ),
            FigureSpec(
                "RQ6 routing: a worked example",
                "rq6_routing_example",
                partial(worked_example, view),
                f"one question (id {data.ids[_example_row(data, view.steps)]}); one cell per "
                f"(thought, question token): attention at layer L{layer} (the layer of the largest "
                "operand contrast in the claim grid), head mean, colour scale capped at the "
                "95th percentile; operands of steps 1-3 marked s1-s3",
            ),
        ]

    def unjudgeable(self, view: StudyView) -> str | None:
        """Why no routing claim can be judged (no problem has step information), or None."""
        return _no_steps_reason(routing_data(view))

    def summary(self, view: StudyView) -> dict[str, object]:
        """Numbers for ``summary_statistics.json`` (under ``analyses.routing``)."""
        if routing_data(view) is None:
            return {}
        grid = routing_grid(view)
        claims = {
            f"t{t}-s{k}-L{layer}": {
                "statistic": r.statistic,
                "ratio": math.exp(r.statistic) if math.isfinite(r.statistic) else None,
                "ci": [r.ci_low, r.ci_high],
                "p": r.p_value,
                "p_holm": r.p_corrected,
                "n": r.n,
                "verdict": r.verdict,
            }
            for (t, k, layer), r in grid.items()
        }
        return {
            "contrast": (
                "log attention ratio, step-k operands / other numbers of the question, within "
                "problem and distance from the question's end (two-way fixed effects)"
            ),
            "sesoi": SESOI_ROUTING,
            "claims": claims,
            "role_columns": list(role_columns(view.steps)),
            "mean_attention_layer_x_thought_x_role": role_means(view).tolist(),
        }


@dataclass(frozen=True)
class RoutingData:
    """The read-out of the usable problems. N problems, L layers, T thoughts, W token slots."""

    attention: np.ndarray  # (N, L, T, W) float64, NaN past q_len
    roles: np.ndarray  # (N, W) int8 role codes, -1 past q_len
    operands: np.ndarray  # (N, W) int32 step bit masks
    tokens: np.ndarray  # (N, W) str
    q_len: np.ndarray  # (N,)
    steps: np.ndarray  # (N,) equations parsed (0 = no step information)
    ids: list[str]

    @property
    def n(self) -> int:
        """Number of problems."""
        return len(self.ids)

    def operand_mask(self, step: int) -> np.ndarray:
        """(N, W) tokens of numbers that step ``step`` (1-based) reads."""
        return ((self.operands >> (step - 1)) & 1).astype(bool)


def routing_data(a: StudyView) -> RoutingData | None:
    """The routing read-out, finite problems only; None when the study did not record it."""
    r = a.results.readouts
    if "routing" not in r:
        return None
    keep = a.finite_rows()
    q_len = np.asarray(a.results.meta["q_len"], dtype=np.int64)
    return RoutingData(
        attention=r["routing"][keep].astype(np.float64),
        roles=r["routing-roles"][keep],
        operands=r["routing-operands"][keep],
        tokens=r["routing-tokens"][keep],
        q_len=q_len[keep],
        steps=r["routing-steps"][keep],
        ids=[pid for pid, ok in zip(a.results.problem_ids, keep, strict=True) if ok],
    )


def _no_steps_reason(data: RoutingData | None) -> str | None:
    if data is None:
        return "inconclusive: the study has no routing read-out (routing not selected)"
    if not (data.steps > 0).any():
        return (
            "inconclusive: no problem has step information (a <<a op b=c>> chain), so no "
            "question number can be tagged as an operand of step k"
        )
    return None


def routing_grid(a: StudyView) -> dict[tuple[int, int, int], StatResult]:
    """(thought, step, layer) -> mean position-adjusted contrast; Holm over the whole grid."""

    def compute() -> dict[tuple[int, int, int], StatResult]:
        data = routing_data(a)
        n_layers = int(str(a.results.meta["n_layers"]))
        keys = [(t, k, L) for t in range(a.n_thoughts) for k in a.steps for L in range(n_layers)]
        reason = _no_steps_reason(data)
        if reason is not None:
            return dict.fromkeys(keys, inconclusive_verdict(reason))
        assert data is not None
        if data.n < MIN_ROUTING_PROBLEMS:
            why = (
                f"inconclusive: {data.n} problems; the {len(keys)} routing tests under Holm "
                f"need >= {MIN_ROUTING_PROBLEMS} (on fewer, the jackknife t's far tail gave "
                "false verdicts in 0.10-0.12 of null datasets at n = 10)"
            )
            return dict.fromkeys(keys, inconclusive_verdict(why, data.n))
        numbers = data.roles == NUMBER
        flat = []
        for t, k, layer in keys:
            args = (data.attention[:, layer, t], data.q_len, data.operand_mask(k), numbers)
            carriers = routing_carriers(*args)
            if carriers < MIN_ROUTING_PROBLEMS:
                why = (
                    f"inconclusive: {carriers} of {data.n} problems have an operand of step "
                    f"{k} and another number among their question's numbers; a step's "
                    f"routing test needs >= "
                    f"{MIN_ROUTING_PROBLEMS} (its units are those problems, t(carriers - 1))"
                )
                flat.append(inconclusive_verdict(why, carriers))
                continue
            flat.append(guarded(partial(_effect, a, *args), carriers, "greater"))
        return dict(zip(keys, apply_holm_verdicts(flat, alpha=a.alpha), strict=True))

    return a.memoised(("routing", "grid"), compute)


def _effect(
    a: StudyView, att: np.ndarray, q_len: np.ndarray, target: np.ndarray, numbers: np.ndarray
) -> StatResult:
    return routing_effect(routing_fit(att, q_len, target, numbers), alpha=a.alpha)


def _role_masks(data: RoutingData, steps: Sequence[int]) -> list[np.ndarray]:
    numbers = data.roles == NUMBER
    operands = [data.operand_mask(k) for k in steps]
    read = np.logical_or.reduce(operands)
    return [
        *operands,
        numbers & ~read,
        data.roles == OPERATION,
        data.roles == NAME,
        data.roles == OTHER,
    ]


def role_means(a: StudyView) -> np.ndarray:
    """(L, T, R) attention to one token of each role: per-question mean, then over questions."""
    data = routing_data(a)
    assert data is not None
    att = data.attention  # (N, L, T, W)
    out = np.full((att.shape[1], att.shape[2], len(role_columns(a.steps))), np.nan)
    for r, mask in enumerate(_role_masks(data, a.steps)):
        count = mask.sum(axis=1)  # (N,)
        rows = count > 0
        if not rows.any():
            continue
        total = np.where(mask[:, None, None, :], att, 0.0).sum(axis=-1)  # (N, L, T)
        out[:, :, r] = (total[rows] / count[rows, None, None]).mean(axis=0)
    return out


def example_layer(a: StudyView) -> int:
    """The layer of the grid's largest contrast (any thought and step): the worked example's."""
    grid = routing_grid(a)
    finite = [(r.statistic, layer) for (_, _, layer), r in grid.items() if np.isfinite(r.statistic)]
    return max(finite)[1] if finite else 0


def _example_row(data: RoutingData, steps: Sequence[int]) -> int:
    """The first problem with the most steps among those with step information (at most 3)."""
    target = min(int(data.steps.max()), len(steps))
    return int(np.nonzero(data.steps >= target)[0][0])


# --- figures -------------------------------------------------------------------------------
def role_heatmap(a: StudyView) -> Figure:
    """One panel per layer: thought x token role, mean attention to one token of the role."""
    values = role_means(a)  # (L, T, R)
    n_layers, n_thoughts, n_roles = values.shape
    ncols = min(3, n_layers)
    nrows = math.ceil(n_layers / ncols)
    fig = Figure(figsize=(4.2 * ncols + 0.8, 2.9 * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    vmax = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
    image = None
    for layer, ax in enumerate(axes):
        if layer >= n_layers:
            ax.remove()
            continue
        image = ax.imshow(values[layer], aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax)
        ax.set_title(f"L{layer}", fontsize=10)
        ax.set_xticks(range(n_roles), role_columns(a.steps), rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(n_thoughts), [f"t{t}" for t in range(n_thoughts)], fontsize=8)
    assert image is not None
    fig.colorbar(image, ax=list(axes[:n_layers]), shrink=0.8).set_label(
        "raw attention to one token (head mean)"
    )
    fig.supylabel("thought produced by the query", fontsize=10)
    fig.suptitle(
        "Routing: raw attention per question-token role, per layer, not adjusted for position\n"
        "(not the claims' contrast: they compare step k's operands with all other numbers, other "
        "steps' operands included, at the same distance)",
        fontsize=10,
    )
    return fig


def worked_example(a: StudyView) -> Figure:
    """One question's tokens (columns) x thoughts (rows), shaded by attention at one layer."""
    data = routing_data(a)
    assert data is not None
    row = _example_row(data, a.steps)
    layer = example_layer(a)
    q = int(data.q_len[row])
    values = data.attention[row, layer, :, :q]  # (T, q)
    labels = [str(x).strip() or "·" for x in data.tokens[row, :q]]
    fig = Figure(figsize=(max(8.0, 0.36 * q + 1.8), 3.4), layout="constrained")
    ax = fig.subplots()
    cap = float(np.nanpercentile(values, 95))  # one sink token must not wash out the rest
    image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0.0, vmax=cap)
    ax.set_xticks(range(q), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(values.shape[0]), [f"t{t}" for t in range(values.shape[0])])
    for j in range(q):
        steps = [k for k in a.steps if data.operand_mask(k)[row, j]]
        if steps:
            ax.text(j, -0.75, "s" + ",".join(map(str, steps)), ha="center", fontsize=7)
    ax.set_ylim(values.shape[0] - 0.5, -1.1)
    fig.colorbar(image, ax=ax, extend="max").set_label(f"attention at L{layer} (head mean)")
    ax.set_title(f"Routing example: {data.ids[row]}, layer L{layer}", fontsize=10)
    return fig


# --- claims (experiments/test_rq6_routing.py) ---------------------------------------------
def routing_claim(a: StudyView, thought: int, step: int, layer: int) -> Evidence:
    """Thought ``thought`` reads step ``step``'s operands more than other numbers at ``layer``."""
    return Evidence(
        f"at layer L{layer}, the query producing thought {thought} attends to step {step}'s "
        "operands more than to the question's other numbers at the same distance (> x1.25)",
        routing_grid(a)[(thought, step, layer)],
        {
            "thought": thought,
            "step": step,
            "layer": layer,
            "statistic": "log attention ratio, operands / other numbers (fixed effects)",
            "family": "Holm over thoughts x steps x layers",
        },
        ("rq6-routing-roles", lambda: role_heatmap(a)),
    )
