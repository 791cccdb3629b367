"""RQ4: does the model *use* what the thoughts encode? Interchange interventions.

For each problem, thought t and step k (1-based), thought t's input (the study's site) is
replaced by a donor problem's clean one (:class:`~codi_fixtures.study.conditions.Interchange`):

- ``different``: a donor whose step-k value differs; the *counterfactual answer* is the
  problem's chain replayed from step k with the donor's value. Interchange intervention
  accuracy (IIA) = the share of problems whose patched answer is the counterfactual one.
- ``random``: any other problem; how often its patch gives that same counterfactual answer
  is the baseline. Claim per (thought, step): IIA exceeds the random-donor rate by the
  SESOI (paired difference of proportions, Tango's score test; Holm over the grid).
- ``same``: a donor with the same step-k value. Claim per (thought, step): the patch
  preserves the answer: the typical (20% trimmed mean) Δ log p(gold) is within
  ``--min-effect-logp`` (TOST; Holm over the grid) -- inconclusive unless the same estimand of the
  cell's different-value patches is shown beyond it (nothing shown to preserve). Per cell,
  not pooled over the steps: each cell asks whether step k's value is all that thought t's
  patch must match for the answer to stay. Where thought t carries another step, a donor
  that shares only step k's value differs there, and the claim is refuted, as it should
  be; pooling averaged those cells with the one that tests the thought's own step into a
  number about neither.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure

from codi_fixtures.analyses.base import Evidence, FigureSpec
from codi_fixtures.analyses.plotting import (
    _diverging_cmap,
    _symmetric_limit,
    cell_text,
    label_cells,
)
from codi_fixtures.analyses.rq3 import SESOI_RATE, no_step_values_reason
from codi_fixtures.analyses.view import StudyView
from codi_fixtures.config import Settings
from codi_fixtures.stats import (
    TRIM_FRACTION,
    StatResult,
    apply_holm_verdicts,
    inconclusive_verdict,
    mean_effect,
)
from codi_fixtures.stats.decoding import equivalence_effect, equivalence_verdicts, paired_effect
from codi_fixtures.stats.order_bounds import fewest_to_bound
from codi_fixtures.study.conditions import DONOR_KINDS, Dimensions, Interchange, Requirements

__all__ = [
    "MIN_SAME_VALUE_DONORS",
    "Rq4",
    "Rq4Stats",
    "iia_beats_random",
    "rq4_stats",
    "same_value_preserves",
]

MIN_SAME_VALUE_DONORS = 5
"""A same-value cell needs this many problems with a same-value donor (and more with a
different-value donor: :func:`~codi_fixtures.stats.order_bounds.fewest_to_bound`)."""


class Rq4:
    """The RQ4 analysis: interchange rows for every (thought, step, donor kind)."""

    name = "rq4"

    def requirements(self, settings: Settings, dims: Dimensions) -> Requirements:
        """One :class:`Interchange` condition per thought, step and donor kind."""
        return Requirements(
            conditions=tuple(
                Interchange(t, k, d)  # type: ignore[arg-type]
                for t in range(dims.n_thoughts)
                for k in range(1, settings.max_step + 1)
                for d in DONOR_KINDS
            )
        )

    def compute(self, view: StudyView) -> Rq4Stats:
        """Every RQ4 statistic (memoised by the view)."""
        return rq4_stats(view)

    def figures(self, view: StudyView) -> list[FigureSpec]:
        """Step x thought heatmaps: IIA, IIA minus the random-donor rate, same-value Δ log p."""
        if no_step_values_reason(view) is not None:
            return []
        return [
            FigureSpec(
                "RQ4: interchange interventions (different- and same-value donors)",
                "rq4_iia_heatmap",
                partial(iia_heatmap, view),
                "One cell (step k, thought t): left, the share of problems whose answer becomes "
                "the counterfactual one when thought t takes a donor's input with a different "
                "step-k value; middle, that share minus a random donor's; right, the trimmed "
                "mean of Δ log p(gold) when the donor has the same step-k value (near 0: the "
                "patch preserves the answer; blank: no verdict statistic, e.g. too few "
                "donors or nothing to preserve).",
            )
        ]

    def unjudgeable(self, view: StudyView) -> str | None:
        """Why no RQ4 claim can be judged (the problem set has no step values), or None."""
        return no_step_values_reason(view)

    def summary(self, view: StudyView) -> dict[str, object]:
        """Numbers for ``summary_statistics.json`` (``analyses.rq4``)."""
        reason = no_step_values_reason(view)
        if reason is not None:
            return {"skipped": reason}
        s = rq4_stats(view)
        return {
            "steps": list(view.steps),
            "iia": _listed(s.iia),
            "random_baseline": _listed(s.random_rate),
            "n": s.n.tolist(),
            "iia_minus_random": {
                f"t{t}-s{k}": r.as_dict() | {"verdict": r.verdict}
                for (t, k), r in s.iia_tests.items()
            },
            "same_value_delta_logp": {
                f"t{t}-s{k}": r.as_dict() | {"verdict": r.verdict}
                for (t, k), r in s.same_tests.items()
            },
        }


def _listed(a: np.ndarray) -> list[object]:
    return [[None if math.isnan(v) else v for v in row] for row in a.tolist()]


@dataclass
class Rq4Stats:
    """IIA per (step, thought) and the same-value equivalence per (thought, step)."""

    iia: np.ndarray  # (K, T)
    random_rate: np.ndarray  # (K, T)
    n: np.ndarray  # (K, T) recipients with a different-value donor
    iia_tests: dict[tuple[int, int], StatResult]  # (thought, step)
    same_tests: dict[tuple[int, int], StatResult]  # (thought, step)


def rq4_stats(view: StudyView) -> Rq4Stats:
    """IIA and baselines, same-value Δ log p (memoised)."""
    return view.memoised(("rq4_stats",), lambda: _rq4_stats(view))


def _rq4_stats(view: StudyView) -> Rq4Stats:
    res = view.results
    donors = res.readouts["interchange-donors"]  # (N, Kd, 3): same, different, random
    cf = res.readouts["interchange-counterfactual"]  # (N, Kd)
    n_t, k_n = view.n_thoughts, len(view.steps)
    iia = np.full((k_n, n_t), np.nan)
    rand_rate = np.full((k_n, n_t), np.nan)
    n = np.zeros((k_n, n_t), dtype=np.int64)
    tests: dict[tuple[int, int], StatResult] = {}
    same_delta = np.full((len(res.problem_ids), k_n, n_t), np.nan)
    diff_delta = np.full((len(res.problem_ids), k_n, n_t), np.nan)
    clean_ok = ~res.clean_nonfinite
    for i, k in enumerate(view.steps):
        for t in range(n_t):
            if k > donors.shape[1]:
                tests[(t, k)] = inconclusive_verdict(f"inconclusive: no problem has a step {k}")
                continue
            cols = {d: res.column(f"ic-t{t}-s{k}-{d}") for d in DONOR_KINDS}
            ok = clean_ok & ~res.nonfinite[:, list(cols.values())].any(axis=1)
            has_diff = ok & (donors[:, k - 1, 1] >= 0) & (donors[:, k - 1, 2] >= 0)
            target = cf[:, k - 1]
            hit = np.where(has_diff, _same(res.answer[:, cols["different"]], target), np.nan)
            rand = np.where(has_diff, _same(res.answer[:, cols["random"]], target), np.nan)
            n[i, t] = int(has_diff.sum())
            if n[i, t]:
                iia[i, t] = float(np.nanmean(hit))
                rand_rate[i, t] = float(np.nanmean(rand))
            if n[i, t] < 5:
                tests[(t, k)] = inconclusive_verdict(
                    f"inconclusive: only {n[i, t]} problems have a different-value donor for "
                    f"step {k} (need >= 5)",
                    int(n[i, t]),
                )
            else:
                tests[(t, k)] = paired_effect(hit, rand, sesoi=SESOI_RATE, alpha=view.alpha)
            has_same = ok & (donors[:, k - 1, 0] >= 0)
            same_delta[has_same, i, t] = res.clean_logp[has_same] - res.logp[has_same, cols["same"]]
            diff_delta[has_diff, i, t] = (
                res.clean_logp[has_diff] - res.logp[has_diff, cols["different"]]
            )
    keys = [key for key, r in tests.items() if not r.inconclusive and r.sesoi is not None]
    judged_iia = apply_holm_verdicts([tests[k] for k in keys], alpha=view.alpha)
    tests.update(zip(keys, judged_iia, strict=True))
    for key, r in tests.items():
        if r.verdict is None:
            tests[key] = inconclusive_verdict(f"inconclusive: {r.method}", r.n)
    same_tests: dict[tuple[int, int], StatResult] = {}
    for i, k in enumerate(view.steps):
        for t in range(n_t):
            same_tests[(t, k)] = _same_value_test(
                view, same_delta[:, i, t], diff_delta[:, i, t], t, k
            )
    judged = [key for key, r in same_tests.items() if not r.inconclusive]
    judged_same = equivalence_verdicts([same_tests[key] for key in judged], alpha=view.alpha)
    same_tests.update(zip(judged, judged_same, strict=True))
    return Rq4Stats(iia, rand_rate, n, tests, same_tests)


def _same_value_test(
    view: StudyView, same: np.ndarray, different: np.ndarray, thought: int, step: int
) -> StatResult:
    """The equivalence test of one cell's same-value Δ log p (not yet Holm-corrected).

    ``same`` / ``different``: (N,) Δ log p(gold) of the cell's same- / different-value
    patch, NaN where the problem has no such donor.
    """
    values = same[np.isfinite(same)]
    if values.size < MIN_SAME_VALUE_DONORS:
        return inconclusive_verdict(
            f"inconclusive: only {values.size} problems have a same-value donor for step {step}"
            f" (need >= {MIN_SAME_VALUE_DONORS})",
            int(values.size),
        )
    vacuous = _nothing_to_preserve(view, different, thought, step)
    if vacuous is not None:
        return vacuous
    return equivalence_effect(
        values, sesoi=view.sesoi_logp, alpha=view.alpha, n_boot=1999, seed=view.seed
    )


def _nothing_to_preserve(
    view: StudyView, diff_delta: np.ndarray, thought: int, step: int
) -> StatResult | None:
    """An inconclusive verdict unless thought t's step-k content is shown to matter.

    "A same-value patch preserves the answer" means something only where a patch with a
    *different* step-k value does not: the claim's statistic is the 20% trimmed mean of the
    same-value patches' Δ log p(gold), so the cell is judged only where the same estimand of
    the different-value patches is shown beyond the SESOI (either direction, each one-sided
    at alpha / 2, the more cautious of the bootstrap-t and the order-statistic bound).
    Otherwise every patch of the thought might preserve the answer whatever it carries (a
    model that ignores its thoughts), and "supported" would be a verdict about nothing.
    """
    values = diff_delta[np.isfinite(diff_delta)]
    sesoi = view.sesoi_logp
    # the order-statistic bound in every trimmed-mean decision: 17 problems at alpha / 2 = 0.025
    needed = max(MIN_SAME_VALUE_DONORS, fewest_to_bound(view.alpha / 2, TRIM_FRACTION))
    if values.size < needed:
        return inconclusive_verdict(
            f"inconclusive: nothing shown to preserve: only {values.size} problems have a "
            f"donor with a different step-{step} value for thought {thought}; showing that "
            f"the answer depends on what the thought holds needs >= {needed} (no trimmed mean "
            f"of fewer is shown beyond a bound at {view.alpha / 2:g})",
            int(values.size),
        )
    moved = [
        mean_effect(
            sign * values,
            sesoi=sesoi,
            alpha=view.alpha / 2,
            n_boot=1999,
            seed=view.seed,
            constant="exact",
        )
        for sign in (1.0, -1.0)
    ]
    if any(r.p_sesoi is not None and r.p_sesoi < view.alpha / 2 for r in moved):
        return None
    estimate = moved[0].statistic
    return inconclusive_verdict(
        f"inconclusive: nothing shown to preserve: a patch of thought {thought} with a "
        f"different step-{step} value is not shown to move log p(gold) by more than "
        f"{sesoi:g} nats (20% trimmed mean {estimate:.3g} over {values.size} problems; "
        f"p_sesoi {min(r.p_sesoi if r.p_sesoi is not None else 1.0 for r in moved):.3g} "
        f">= alpha/2 = {view.alpha / 2:g}), so the answer is not shown to depend on what "
        "the thought holds",
        int(values.size),
    )


def _same(answer: np.ndarray, target: np.ndarray) -> np.ndarray:
    """1.0 where the answer equals the target (1e-6), else 0.0 (an unparsed answer is 0)."""
    with np.errstate(invalid="ignore"):
        return (np.abs(answer - target) <= 1e-6).astype(np.float64)


# --- claims --------------------------------------------------------------------------------------
def _skip_or(view: StudyView, pick: object) -> StatResult:
    reason = no_step_values_reason(view)
    if reason is not None:  # n = every problem: the claim names this reason, not "too few"
        return inconclusive_verdict(reason, len(view.results.problem_ids))
    assert callable(pick)
    result = pick(rq4_stats(view))
    assert isinstance(result, StatResult)
    return result


def iia_beats_random(view: StudyView, thought: int, step: int) -> Evidence:
    """Patching thought t with a donor's different step-k value gives the counterfactual answer."""
    return Evidence(
        f"patching thought {thought} with another step-{step} value gives the counterfactual "
        "answer",
        _skip_or(view, lambda s: s.iia_tests[(thought, step)]),
        {
            "thought": thought,
            "step": step,
            "measure": "IIA minus the random-donor rate (paired, proportion)",
        },
        ("rq4-iia", lambda: iia_heatmap(view)),
    )


def same_value_preserves(view: StudyView, thought: int, step: int) -> Evidence:
    """Patching thought t from a donor with the same step-k value leaves log p(gold) unchanged."""
    return Evidence(
        f"a patch of thought {thought} with the same step-{step} value preserves the answer "
        "(typical Δ log p(gold) within the SESOI)",
        _skip_or(view, lambda s: s.same_tests[(thought, step)]),
        {
            "thought": thought,
            "step": step,
            "measure": "20% trimmed mean delta log p(gold), same-value donor [nats]",
        },
        ("rq4-iia", lambda: iia_heatmap(view)),
    )


# --- figures -------------------------------------------------------------------------------------
def iia_heatmap(view: StudyView) -> Figure:
    """Step x thought: IIA, IIA minus the random-donor rate, and the same-value Δ log p(gold)."""
    s = rq4_stats(view)
    same = np.full(s.iia.shape, np.nan)
    for i, k in enumerate(view.steps):
        for t in range(s.iia.shape[1]):
            same[i, t] = s.same_tests[(t, k)].statistic
    fig = Figure(figsize=(14.0, 2.8), layout="constrained")
    axes = fig.subplots(1, 3)
    top = max(1.0, _symmetric_limit(same))  # at least +/-1 nat: small effects stay pale
    panels = (
        (s.iia, "IIA", Normalize(0.0, 1.0), "viridis"),
        (s.iia - s.random_rate, "IIA - random donor", TwoSlopeNorm(0.0, -1.0, 1.0), None),
        (
            same,
            "same-value patch: 20% trimmed mean Δ log p(gold) [nats]",
            TwoSlopeNorm(0.0, -top, top),
            None,
        ),
    )
    for ax, (values, title, norm, cmap) in zip(axes, panels, strict=True):
        im = ax.imshow(values, cmap=cmap or _diverging_cmap(), norm=norm, aspect="auto")
        ax.set_xticks(range(values.shape[1]))
        ax.set_yticks(range(values.shape[0]), [f"step {k}" for k in view.steps])
        ax.set_xlabel("thought t (0-based)")
        ax.set_title(title)
        label_cells(ax, im, cell_text(values), fontsize=9)
        fig.colorbar(im, ax=ax)
    return fig
