"""RQ1: how important is each continuous thought, causally?

Thought t (0-based) is the input at position Q+1+t. Ablating it replaces that input once;
everything after it is recomputed. Importance is the drop in log p(gold answer) (teacher-forced)
and the drop in accuracy. This module is the whole analysis: what it needs computed
(:class:`Rq1`), its statistics (functions of a :class:`StudyView`, memoised there) and its
figures.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from codi_fixtures.analyses.base import Evidence, FigureSpec
from codi_fixtures.analyses.plotting import (
    _DASHES,
    ACC_LABEL,
    LOGP_LABEL,
    OKABE_ITO,
    _attempt,
    _colours,
    _difficulty_groups,
    _diverging_cmap,
    _dodge,
    _draw_estimates,
    _ensure_span,
    _mark_significant,
    _no_data,
    _symmetric_limit,
    _thought_axis,
    _zero_line,
)
from codi_fixtures.analyses.view import StudyView, guarded
from codi_fixtures.config import Settings
from codi_fixtures.stats import (
    StatResult,
    accuracy_drop_effect,
    apply_holm_verdicts,
    holm,
    mean_effect,
    pvalue_or_one,
)
from codi_fixtures.study.conditions import Dimensions, Requirements, conditions_for

__all__ = [
    "Rq1",
    "all_thoughts",
    "all_thoughts_lower_accuracy",
    "importance_by_thought",
    "importance_heatmap",
    "last_is_most_important",
    "last_most_important",
    "lowers_accuracy",
    "lowers_logp",
    "rq1_accuracy",
    "rq1_kind_bars",
    "rq1_logp",
]


class Rq1:
    """The RQ1 analysis: every kind's single-thought and all-thought ablations; no read-out."""

    name = "rq1"

    def requirements(self, settings: Settings, dims: Dimensions) -> Requirements:
        """For every ablation kind: each thought alone, then all thoughts."""
        return Requirements(conditions=tuple(conditions_for(settings.run, dims)))

    def compute(self, view: StudyView) -> StudyView:
        """The statistics are functions of the view (memoised there): :func:`rq1_logp`, ..."""
        return view

    def figures(self, view: StudyView) -> list[FigureSpec]:
        """The report's RQ1 overview figures."""
        ci = f"{view.ci_percent} CI"  # the verdicts' interval
        return [
            FigureSpec(
                f"RQ1: importance by thought (20% trimmed mean with {ci}), per ablation kind",
                "importance_by_thought",
                partial(importance_by_thought, view),
                "One point: the 20% trimmed mean over problems of Δ log p(gold) (nats) when "
                f"that thought is ablated, with its {ci} (the verdict's); one bar: the accuracy "
                "drop (percentage points) with its Tango score CI; colour: ablation kind; lines: "
                "all six thoughts ablated at once.",
            ),
            FigureSpec(
                "RQ1: problems x thoughts importance, grouped by difficulty",
                "importance_heatmap",
                partial(importance_heatmap, view),
                "One cell: one problem's Δ log p(gold) (nats) when that thought is ablated "
                "(importance kind); diverging scale centred on 0; rows grouped by difficulty.",
            ),
        ]


# --- statistics --------------------------------------------------------------------------------
def _mean_effect(a: StudyView, deltas: np.ndarray) -> StatResult:
    return guarded(
        partial(
            mean_effect,
            deltas,
            sesoi=a.sesoi_logp,
            alpha=a.alpha,
            n_boot=a.n_boot,
            seed=a.seed,
        ),
        int(deltas.size),
        "greater",
    )


def _accuracy_drop(a: StudyView, clean: np.ndarray, ablated: np.ndarray) -> StatResult:
    return guarded(
        partial(accuracy_drop_effect, clean, ablated, sesoi=a.sesoi_accuracy, alpha=a.alpha),
        int(clean.size),
        "greater",
    )


def rq1_logp(a: StudyView, kind: str) -> list[StatResult]:
    """Per thought: does ablation lower log p(gold) by more than the SESOI? Holm over T."""

    def compute() -> list[StatResult]:
        imp = a.importance(kind)
        keep = ~np.isnan(imp).any(axis=1)
        tests = [_mean_effect(a, imp[keep, t]) for t in range(a.n_thoughts)]
        return apply_holm_verdicts(tests, alpha=a.alpha)

    return a.memoised(("rq1_logp", kind), compute)


def rq1_accuracy(a: StudyView, kind: str) -> list[StatResult]:
    """Per thought: does ablation lower accuracy by more than the SESOI? Holm over thoughts."""

    def compute() -> list[StatResult]:
        cols = a.thought_columns(kind)
        keep = a.finite_rows(cols)
        clean = a.results.clean_correct[keep]
        tests = [_accuracy_drop(a, clean, a.results.correct[keep, c]) for c in cols]
        return apply_holm_verdicts(tests, alpha=a.alpha)

    return a.memoised(("rq1_acc", kind), compute)


def all_thoughts(a: StudyView, kind: str) -> StatResult:
    """Control: ablating every thought at once lowers accuracy by more than the SESOI."""

    def compute() -> StatResult:
        col = a.results.column(f"all-{kind}")
        keep = a.finite_rows([col])
        return _accuracy_drop(a, a.results.clean_correct[keep], a.results.correct[keep, col])

    return a.memoised(("all", kind), compute)


def last_most_important(a: StudyView, kind: str) -> StatResult:
    """The last thought's delta log p exceeds every other thought's by more than the SESOI.

    One paired comparison per rival (``imp[last] - imp[t]``, :func:`mean_effect`).
    Supported when every comparison is (intersection-union: no correction needed);
    refuted when some comparison is refuted after Holm over the rivals' equivalence
    p-values (any one rival that is as important suffices). The result shown is the
    one comparison that decides: a refuted rival (the smallest Holm p_equivalence)
    when refuted, else the rival with the largest p_sesoi (the binding comparison of
    the intersection-union test; when inconclusive, among the rivals not supported).
    Its statistic, CI, p-values and reason are all that comparison's; ``method`` lists
    every rival's. ``p_corrected`` stays unset: no Holm applies to the shown p.
    """

    def compute() -> StatResult:
        imp = a.importance(kind)
        imp = imp[~np.isnan(imp).any(axis=1)]
        last = a.n_thoughts - 1
        tests = [_mean_effect(a, imp[:, last] - imp[:, t]) for t in range(last)]
        if any(t.inconclusive for t in tests):
            return next(t for t in tests if t.inconclusive)
        p_equiv = holm([pvalue_or_one(t.p_equivalence) for t in tests])
        rivals = [
            replace(t, p_equivalence_corrected=p).with_verdict(a.alpha)
            for t, p in zip(tests, p_equiv, strict=True)
        ]
        return _deciding_rival(rivals, last)

    return a.memoised(("last", kind), compute)


def _deciding_rival(rivals: list[StatResult], last: int) -> StatResult:
    """The intersection-union verdict over ``rivals``, shown as the comparison that decides it.

    ``rivals[t]`` is ``last - t`` with its own verdict (Holm-corrected p_equivalence).
    The chosen comparison's own verdict is the overall one, so its reason can be kept.
    """
    refuted = [i for i, r in enumerate(rivals) if r.verdict == "refuted"]
    if refuted:
        chosen = min(refuted, key=lambda i: pvalue_or_one(rivals[i].p_equivalence_corrected))
    else:
        open_ = [i for i, r in enumerate(rivals) if r.verdict != "supported"]
        chosen = max(open_ or range(len(rivals)), key=lambda i: pvalue_or_one(rivals[i].p_sesoi))
    base = rivals[chosen]
    per_rival = ", ".join(
        f"t{i}: {r.statistic:.3g} (p_sesoi={pvalue_or_one(r.p_sesoi):.3g}, "
        f"Holm p_equivalence={pvalue_or_one(r.p_equivalence_corrected):.3g}, {r.verdict})"
        for i, r in enumerate(rivals)
    )
    head, _, tail = str(base.verdict_reason).partition(": ")  # e.g. "refuted (...)", numbers
    return replace(
        base,
        method=(
            f"intersection-union over {len(rivals)} paired comparisons (thought {last} minus "
            f"each other; shown: thought {chosen}, which decides); per rival: {per_rival}; "
            f"{base.method}"
        ),
        verdict_reason=f"{head}: thought {last} vs thought {chosen}: {tail}",
    )


# --- figures ------------------------------------------------------------------------------------
def importance_by_thought(a: StudyView) -> Figure:
    """RQ1 overview: mean Δ log p (left) and accuracy drop (right) per thought and kind."""
    kinds, n_t = a.kinds, a.n_thoughts
    x = np.arange(n_t, dtype=np.float64)
    width = 0.8 / max(1, len(kinds))
    offsets = _dodge(len(kinds), width)
    colours = _colours(len(kinds))
    fig = Figure(figsize=(max(9.0, 1.1 * n_t + 4.0), 4.6), layout="constrained")
    ax_lp, ax_acc = fig.subplots(1, 2)
    handles: list[Patch | Line2D] = []
    lines: list[Line2D] = []
    for i, (kind, dx, colour) in enumerate(zip(kinds, offsets, colours, strict=True)):
        handles.append(Patch(color=colour, label=f"{kind} ablation"))
        logp = _attempt(rq1_logp, a, kind)
        if logp is not None:
            top = _draw_estimates(
                ax_lp, x + dx, logp, scale=1.0, colour=colour, bars=False, width=width
            )
            _mark_significant(ax_lp, x + dx, top, logp, a.alpha, colour)
        acc = _attempt(rq1_accuracy, a, kind)
        if acc is not None:
            top = _draw_estimates(
                ax_acc, x + dx, acc, scale=100.0, colour=colour, bars=True, width=width
            )
            _mark_significant(ax_acc, x + dx, top, acc, a.alpha, colour)
        control = _all_thoughts(a, kind)
        if control is not None and math.isfinite(control.statistic):
            value = 100.0 * control.statistic
            lines.append(
                ax_acc.axhline(
                    value,
                    # Distinct dash patterns keep coinciding control lines apart.
                    linestyle=_DASHES[i % len(_DASHES)],
                    color=colour,
                    linewidth=1.3,
                    label=f"all thoughts ablated ({kind}): {value:.0f} pp",
                )
            )
    for ax in (ax_lp, ax_acc):
        _thought_axis(ax, n_t)
        _zero_line(ax)
        ax.margins(y=0.12)
        _ensure_span(ax)
    ax_lp.set_ylabel(f"{LOGP_LABEL} (clean − ablated)")
    ax_lp.set_title(
        "log p of the gold answer (20% trimmed mean)\n"
        "CI: bootstrap-t and order-statistic bounds; arrow: no finite end"
    )
    ax_acc.set_ylabel(f"{ACC_LABEL}")
    ax_acc.set_title("accuracy (clean − ablated; Tango score CI)")
    fig.suptitle(
        f"RQ1: ablating one thought ({a.ci_percent} CIs; * Holm p < {a.alpha:g})",
        fontsize=12,
    )
    fig.legend(
        [*handles, *lines],
        [str(h.get_label()) for h in [*handles, *lines]],
        loc="outside lower center",
        ncols=min(len(handles) + len(lines), 4),
        frameon=False,
        fontsize=9,
    )
    return fig


def _all_thoughts(a: StudyView, kind: str) -> StatResult | None:
    """The all-thoughts control for ``kind``, or None when it was not run or is degenerate."""
    if f"all-{kind}" not in a.results.conditions:
        return None
    return _attempt(all_thoughts, a, kind)


def rq1_kind_bars(a: StudyView, kind: str, measure: str) -> Figure:
    """Per-claim RQ1 figure: mean Δ log p or accuracy drop per thought for one ablation kind."""
    if measure not in ("logp", "accuracy"):
        raise ValueError(f"unknown measure {measure!r}; use 'logp' or 'accuracy'")
    if kind not in a.kinds:
        raise ValueError(f"ablation kind {kind!r} was not run; available: {a.kinds}")
    n_t = a.n_thoughts
    fig = Figure(figsize=(max(4.6, 0.55 * n_t + 2.2), 3.6), layout="constrained")
    ax = fig.subplots()
    if measure == "logp":
        results, scale, ylabel = _attempt(rq1_logp, a, kind), 1.0, f"{LOGP_LABEL} (clean − ablated)"
        title = (
            f"Δ log p(gold) per thought, {kind} ablation\n"
            "(20% trimmed mean; CI: bootstrap-t and order-statistic bounds)"
        )
    else:
        results, scale, ylabel = _attempt(rq1_accuracy, a, kind), 100.0, ACC_LABEL
        title = f"Accuracy drop per thought, {kind} ablation\n(Tango score CI)"
    x = np.arange(n_t, dtype=np.float64)
    if results is not None:
        _draw_estimates(ax, x, results, scale=scale, colour=OKABE_ITO[0], bars=True, width=0.6)
    else:
        _no_data(ax)
    _thought_axis(ax, n_t)
    _zero_line(ax)
    _ensure_span(ax)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return fig


def importance_heatmap(a: StudyView) -> Figure:
    """Problems x thoughts Δ log p (default kind), rows grouped by difficulty bin."""
    imp = a.importance()
    n_t = a.n_thoughts
    groups = _difficulty_groups(a.results.difficulty)
    order = np.concatenate([rows for _, rows in groups]) if groups else np.arange(0)
    matrix = np.ma.masked_invalid(imp[order])
    # A robust limit keeps one collapsed problem from washing out every other cell.
    limit = _symmetric_limit(imp, quantile=99.0)
    finite = np.abs(imp[np.isfinite(imp)])
    over = bool(finite.size and finite.max() > limit)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)
    fig = Figure(figsize=(max(5.5, 0.5 * n_t + 3.5), 5.2), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(
        matrix, aspect="auto", interpolation="nearest", cmap=_diverging_cmap(), norm=norm
    )
    start, centres, names = 0, [], []
    for name, rows in groups:
        centres.append(start + (rows.size - 1) / 2.0)
        names.append(f"{name} (n={rows.size})")
        start += rows.size
        if start < len(order):
            ax.axhline(start - 0.5, color="black", linewidth=1.2)
    ax.set_yticks(centres, names)
    ax.tick_params(axis="y", length=0)
    ax.set_xticks(np.arange(n_t))
    ax.set_xlabel("thought t (0-based)")
    ax.set_ylabel("problems, grouped by difficulty")
    bar = fig.colorbar(image, ax=ax, extend="both" if over else "neither", shrink=0.9)
    bar.set_label(f"{LOGP_LABEL} (clean − ablated)")
    title = f"Importance per problem, {a.importance_kind} ablation"
    if np.isnan(imp).all(axis=1).any():
        title += "\n(grey rows: excluded for NaN/inf)"
    ax.set_title(title, fontsize=11)
    return fig


# --- claims (experiments/test_rq1_importance.py) ---------------------------------------------
def lowers_logp(a: StudyView, thought: int, kind: str) -> Evidence:
    """Ablating ``thought`` lowers log p(gold) by more than the SESOI (Holm over thoughts)."""
    return Evidence(
        f"ablating thought {thought} ({kind}) lowers log p(gold)",
        rq1_logp(a, kind)[thought],
        {"thought": thought, "ablation kind": kind, "measure": "delta log p [nats]"},
        (f"rq1-logp-{kind}", lambda: rq1_kind_bars(a, kind, "logp")),
    )


def lowers_accuracy(a: StudyView, thought: int, kind: str) -> Evidence:
    """Ablating ``thought`` lowers accuracy by more than the SESOI (paired score test)."""
    return Evidence(
        f"ablating thought {thought} ({kind}) lowers accuracy",
        rq1_accuracy(a, kind)[thought],
        {"thought": thought, "ablation kind": kind, "measure": "accuracy drop"},
        (f"rq1-acc-{kind}", lambda: rq1_kind_bars(a, kind, "accuracy")),
    )


def all_thoughts_lower_accuracy(a: StudyView, kind: str) -> Evidence:
    """Control: ablating every thought at once lowers accuracy by more than the SESOI."""
    return Evidence(
        f"ablating all thoughts ({kind}) lowers accuracy",
        all_thoughts(a, kind),
        {"thoughts": "all", "ablation kind": kind, "measure": "accuracy drop"},
        ("rq1-overview", lambda: importance_by_thought(a)),
    )


def last_is_most_important(a: StudyView, kind: str) -> Evidence:
    """The last thought's delta log p exceeds every other thought's by the SESOI."""
    return Evidence(
        f"the last thought is the most important ({kind})",
        last_most_important(a, kind),
        {"ablation kind": kind, "measure": "delta log p, last minus rival [nats]"},
        (f"rq1-logp-{kind}", lambda: rq1_kind_bars(a, kind, "logp")),
    )
