"""RQ2: does the attention paid to a thought predict its importance, and at which layers?

Attention: from the <eot> query to thought t's position, head-averaged, at the early / middle /
late layer. Importance: delta log p(gold) under the ``--importance-kind`` ablation (default
mean). RQ2 is asked at two levels, each with its own test (:func:`codi_fixtures.stats.rq2_tests`),
Holm across the role layers within each question (by difficulty: across every (bin, layer)
pair); the pooled r of earlier work is descriptive.
This module is the whole analysis: requirements (:class:`Rq2`), statistics, figures.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial
from typing import Literal

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from scipy import stats as sps

from codi_fixtures.analyses.base import Evidence, FigureSpec
from codi_fixtures.analyses.plotting import (
    ATTENTION_LABEL,
    LOGP_LABEL,
    _attempt,
    _colours,
    _complete_rows,
    _diverging_cmap,
    _fmt_p,
    _fmt_r,
    _layer_label,
    _scatter_by_thought,
    _symmetric_limit,
    _thought_legend,
)
from codi_fixtures.analyses.view import StudyView
from codi_fixtures.config import Settings
from codi_fixtures.stats import (
    Rq2Tests,
    StatResult,
    apply_holm_verdicts,
    holm_rq2,
    is_constant,
    pooled_normal_scores,
    two_way_residuals,
)
from codi_fixtures.study.conditions import (
    Ablation,
    AttentionReadout,
    Dimensions,
    Requirements,
    parse_site,
)
from codi_fixtures.study.problems import DIFFICULTY_BINS

__all__ = [
    "Rq2",
    "Rq2Test",
    "attention_claim",
    "attention_vs_importance",
    "head_correlation_map",
    "head_correlations",
    "per_thought_correlation",
    "per_thought_correlations",
    "rq2",
    "rq2_all",
    "rq2_by_difficulty",
    "rq2_layer_scatter",
]

Rq2Test = Literal["position", "beyond_position", "pooled"]
"""RQ2's questions (:func:`codi_fixtures.stats.rq2_tests`); ``pooled`` decides no verdict."""

_RQ2_TEST_NAMES = {
    "position": "position level (r of the per-thought means)",
    "beyond_position": "beyond position (two-way demeaned normal-score r)",
    "pooled": "pooled Pearson (descriptive)",
}


class Rq2:
    """The RQ2 analysis: importance-kind ablations of each thought, and the attention read-out."""

    name = "rq2"

    def requirements(self, settings: Settings, dims: Dimensions) -> Requirements:
        """Each thought ablated with the importance kind; ``<eot>`` -> thought attention."""
        site = parse_site(settings.run.site, dims.n_layers)
        kind = settings.importance_kind
        return Requirements(
            conditions=tuple(
                Ablation((t,), kind, site)  # type: ignore[arg-type]
                for t in range(dims.n_thoughts)
            ),
            readouts=(AttentionReadout(),),
        )

    def compute(self, view: StudyView) -> StudyView:
        """The statistics are functions of the view (memoised there): :func:`rq2`, ..."""
        return view

    def figures(self, view: StudyView) -> list[FigureSpec]:
        """The report's RQ2 overview figures."""
        middle = view.layers.middle
        return [
            FigureSpec(
                "RQ2: attention vs importance at the early / middle / late layers",
                "attention_vs_importance",
                partial(attention_vs_importance, view),
                "One point: one (problem, thought) pair: the head-mean attention from <eot> to "
                "the thought (x, weight) and its importance (y, Δ log p(gold) in nats); panel "
                "titles give the pooled r (descriptive) and the beyond-position r.",
            ),
            *(
                FigureSpec(
                    f"RQ2: per-thought correlations at the {role} layer (L{layer})",
                    "per_thought_correlations" if layer == middle else f"per_thought_corr_{role}",
                    partial(per_thought_correlations, view, layer),
                    "One panel per thought (as earlier work had it): one point per problem, "
                    "attention weight (x) vs importance in nats (y), with that thought's r across "
                    "problems (uncorrected).",
                )
                for role, layer in view.layers.as_dict().items()
            ),
            FigureSpec(
                "RQ2: attention-importance correlation per layer and head",
                "head_correlation_map",
                partial(head_correlation_map, view),
                "One cell: one (layer, head): r between that head's attention to a thought and "
                "the thought's importance, pooled over problems and thoughts (descriptive).",
            ),
        ]


# --- statistics --------------------------------------------------------------------------------
def rq2_all(a: StudyView, difficulty: str | None = None) -> dict[int, Rq2Tests]:
    """Per role layer, the three RQ2 questions, Holm-corrected within each question.

    Overall (``difficulty=None``) the family is the role layers. Per difficulty bin it is
    every (bin, role layer) pair (:func:`rq2_by_difficulty`): the by-difficulty claims are
    one family per question, so a bin's verdict and its Holm p come from the same family.
    """
    if difficulty is not None:
        by_bin = rq2_by_difficulty(a)
        if difficulty in by_bin:
            return by_bin[difficulty]
        return _rq2_raw(a, difficulty)  # no problem has this label: nothing to correct

    def compute() -> dict[int, Rq2Tests]:
        raw = _rq2_raw(a, None)
        return dict(zip(raw, holm_rq2(list(raw.values()), alpha=a.alpha), strict=True))

    return a.memoised(("rq2", None), compute)


def rq2_by_difficulty(a: StudyView) -> dict[str, dict[int, Rq2Tests]]:
    """Per difficulty bin and role layer, the RQ2 questions; Holm over all (bin, layer) pairs.

    The bins are :data:`DIFFICULTY_BINS` (the claims' bins) and any other label in the study.
    Every pair counts, as in the overall family: one that cannot decide (too few problems, a
    nan statistic) enters with p = 1, which only makes the correction conservative.
    """

    def compute() -> dict[str, dict[int, Rq2Tests]]:
        bins = list(dict.fromkeys([*DIFFICULTY_BINS, *a.results.difficulty]))
        raw = {b: _rq2_raw(a, b) for b in bins}
        pairs = [(b, layer) for b in bins for layer in raw[b]]
        columns: dict[str, dict[tuple[str, int], StatResult]] = {}
        for question in Rq2Tests.QUESTIONS:
            cells = [getattr(raw[b][layer], question) for b, layer in pairs]
            judged = apply_holm_verdicts(cells, alpha=a.alpha)
            columns[question] = dict(zip(pairs, judged, strict=True))
        return {
            b: {
                layer: replace(
                    raw[b][layer],
                    position=columns["position"][(b, layer)],
                    beyond_position=columns["beyond_position"][(b, layer)],
                    pooled=columns["pooled"][(b, layer)],
                )
                for layer in raw[b]
            }
            for b in bins
        }

    return a.memoised(("rq2_by_difficulty",), compute)


def _rq2_raw(a: StudyView, difficulty: str | None) -> dict[int, Rq2Tests]:
    """Per role layer, the RQ2 questions on one bin's problems (all: None), not yet corrected."""
    imp = a.importance()
    rows = ~np.isnan(imp).any(axis=1)
    if difficulty is not None:
        rows &= np.array([d == difficulty for d in a.results.difficulty], dtype=bool)
    layers = list(dict.fromkeys(a.layers.as_dict().values()))
    return {layer: a.rq2_tests(a.attention(layer)[rows], imp[rows]) for layer in layers}


def rq2(a: StudyView, test: Rq2Test, difficulty: str | None = None) -> dict[int, StatResult]:
    """Per role layer, one RQ2 question's result (``position``, ``beyond_position``, ...)."""
    if test not in Rq2Tests.QUESTIONS:
        raise ValueError(f"unknown RQ2 question {test!r}; use one of {Rq2Tests.QUESTIONS}")
    return {layer: getattr(t, test) for layer, t in rq2_all(a, difficulty).items()}


def per_thought_correlation(a: StudyView, layer: int) -> list[tuple[float, float]]:
    """Per thought, across problems: Pearson (r, p) of attention vs importance."""
    imp = a.importance()
    att = a.attention(layer)
    out = []
    for t in range(a.n_thoughts):
        keep = ~np.isnan(imp[:, t])
        x, y = att[keep, t], imp[keep, t]
        if len(x) < 3 or is_constant(x) or is_constant(y):
            out.append((float("nan"), 1.0))
            continue
        r, p = sps.pearsonr(x, y)
        out.append((float(r), float(p)))
    return out


def head_correlations(a: StudyView) -> np.ndarray:
    """(L, H) pooled Pearson r of per-head attention vs importance."""

    def compute() -> np.ndarray:
        imp = a.importance()
        keep = ~np.isnan(imp).any(axis=1)
        y = imp[keep].ravel()
        att = a.results.attention[keep]  # (N, L, H, T)
        n_layers, n_heads = att.shape[1], att.shape[2]
        out = np.full((n_layers, n_heads), np.nan)
        if y.size < 3 or is_constant(y):
            return out
        for layer in range(n_layers):
            for head in range(n_heads):
                x = att[:, layer, head].ravel()
                if not is_constant(x):
                    out[layer, head] = np.corrcoef(x, y)[0, 1]
        return out

    return a.memoised(("heads",), compute)


# --- figures ------------------------------------------------------------------------------------
def _rq2_result(a: StudyView, test: Rq2Test, layer: int) -> StatResult | None:
    """``a.rq2(test)[layer]``, or None when the data cannot support the test."""
    results = _attempt(rq2, a, test)
    return None if results is None else results.get(layer)


def attention_vs_importance(a: StudyView) -> Figure:
    """RQ2 overview: attention vs importance at each role layer, coloured by thought."""
    roles = a.layers.as_dict()
    imp = a.importance()
    keep = _complete_rows(a)
    colours = _colours(a.n_thoughts)
    fig = Figure(figsize=(3.9 * len(roles) + 1.3, 4.1), layout="constrained")
    axes = fig.subplots(1, len(roles), sharey=True, squeeze=False)[0]
    for ax, (role, layer) in zip(axes, roles.items(), strict=True):
        _scatter_by_thought(ax, a.attention(layer)[keep], imp[keep], colours)
        pooled = _rq2_result(a, "pooled", layer)
        beyond = _rq2_result(a, "beyond_position", layer)
        r = math.nan if pooled is None else pooled.statistic
        rb = math.nan if beyond is None else beyond.statistic
        ax.set_title(
            f"{role} · L{layer}: pooled r={_fmt_r(r)}, beyond-position r={_fmt_r(rb)}",
            fontsize=10,
        )
        ax.set_xlabel(ATTENTION_LABEL)
    axes[0].set_ylabel(f"{LOGP_LABEL}, {a.importance_kind} ablation")
    fig.suptitle("RQ2: attention to a thought vs its importance (one point per problem × thought)")
    _thought_legend(fig, a.n_thoughts, colours)
    return fig


def rq2_layer_scatter(a: StudyView, layer: int, test: str) -> Figure:
    """Per-claim RQ2 figure: attention vs importance at one role layer, with one test's p."""
    if test not in _RQ2_TEST_NAMES:
        raise ValueError(f"unknown RQ2 test {test!r}; use one of {sorted(_RQ2_TEST_NAMES)}")
    if layer not in a.layers.as_dict().values():
        raise ValueError(
            f"layer {layer} is not a role layer; RQ2 tests ran at {a.layers.as_dict()}"
        )
    imp = a.importance()
    keep = _complete_rows(a)
    x, y = a.attention(layer)[keep], imp[keep]
    xlabel, ylabel = ATTENTION_LABEL, f"{LOGP_LABEL}, {a.importance_kind} ablation"
    if test == "beyond_position" and y.shape[0]:
        # Show what the test correlates: normal scores minus each problem's and thought's mean.
        x = two_way_residuals(pooled_normal_scores(x))
        y = two_way_residuals(pooled_normal_scores(y))
        xlabel = f"{xlabel}: normal score\nminus problem and thought means"
        ylabel = f"{ylabel}: normal score\nminus problem and thought means"
    elif test == "position" and y.shape[0]:
        # One point per thought: the per-thought means the test correlates.
        x, y = x.mean(axis=0, keepdims=True), y.mean(axis=0, keepdims=True)
        xlabel, ylabel = f"mean {xlabel}", f"mean {ylabel}"
    colours = _colours(a.n_thoughts)
    fig = Figure(figsize=(5.6, 4.0), layout="constrained")
    ax = fig.subplots()
    _scatter_by_thought(ax, x, y, colours)
    res = _rq2_result(a, test, layer)  # type: ignore[arg-type]
    if res is None:
        stats_line = "n/a (too few thoughts or problems)"
    elif res.inconclusive:
        stats_line = res.method
    else:
        stats_line = (
            f"r={_fmt_r(res.statistic)}, p={_fmt_p(res.p_value)}, "
            f"Holm p={_fmt_p(res.p_corrected)} (n={res.n}), {res.verdict or ''}"
        )
    ax.set_title(f"{_layer_label(a, layer)} · {_RQ2_TEST_NAMES[test]}\n{stats_line}", fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _thought_legend(fig, a.n_thoughts, colours)
    return fig


def per_thought_correlations(a: StudyView, layer: int) -> Figure:
    """One panel per thought: attention vs importance across problems at ``layer``."""
    n_t = a.n_thoughts
    ncols = min(3, n_t)
    nrows = math.ceil(n_t / ncols)
    imp = a.importance()
    att = a.attention(layer)
    stats = per_thought_correlation(a, layer)
    colours = _colours(n_t)
    fig = Figure(figsize=(max(5.6, 3.3 * ncols + 0.6), 2.7 * nrows + 1.1), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for t, ax in enumerate(axes):
        if t >= n_t:
            ax.remove()
            continue
        _scatter_by_thought(ax, att[:, [t]], imp[:, [t]], [colours[t]])
        r, p = stats[t]
        p_text = _fmt_p(p) if math.isfinite(r) else "n/a"
        ax.set_title(f"thought {t}: r={_fmt_r(r)}, p={p_text}", fontsize=10)
    fig.supxlabel(ATTENTION_LABEL, fontsize=10)
    fig.supylabel(f"{LOGP_LABEL}, {a.importance_kind} ablation", fontsize=10)
    fig.suptitle(
        f"{_layer_label(a, layer)}: attention vs importance per thought\n"
        "(Pearson r across problems, uncorrected p)",
        fontsize=11,
    )
    return fig


def head_correlation_map(a: StudyView) -> Figure:
    """Layers x heads map of the pooled r between per-head attention and importance."""
    corr = head_correlations(a)
    n_layers, n_heads = corr.shape
    limit = _symmetric_limit(corr)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)
    fig = Figure(
        figsize=(
            min(10.0, max(4.8, 0.22 * n_heads + 3.6)),
            min(9.0, max(4.0, 0.25 * n_layers + 1.6)),
        ),
        layout="constrained",
    )
    ax = fig.subplots()
    image = ax.imshow(
        np.ma.masked_invalid(corr),
        origin="lower",
        aspect="auto",
        interpolation="nearest",
        cmap=_diverging_cmap(),
        norm=norm,
    )
    role_layers = set(a.layers.as_dict().values())
    step = max(1, math.ceil(n_layers / 24))  # keep layer labels legible on deep models
    ticks = sorted({*range(0, n_layers, step), *(lay for lay in role_layers if lay < n_layers)})
    ax.set_yticks(ticks, [_layer_label(a, lay) for lay in ticks])
    for label, lay in zip(ax.get_yticklabels(), ticks, strict=True):
        if lay in role_layers:
            label.set_fontweight("bold")
    head_step = max(1, math.ceil(n_heads / 16))
    ax.set_xticks(np.arange(0, n_heads, head_step))
    ax.set_xlabel("head")
    ax.set_ylabel("layer (block output; layer 0 at the bottom)")
    bar = fig.colorbar(image, ax=ax, shrink=0.9)
    bar.set_label("pooled Pearson r")
    title = f"Per-head attention vs importance, {a.importance_kind} ablation"
    if not np.isfinite(corr).any():
        title += "\n(grey: r undefined, constant data)"
    ax.set_title(title, fontsize=11)
    return fig


# --- claims (experiments/test_rq2_attention.py) ----------------------------------------------
_CLAIMS = {
    "position": "{role} layer L{layer}: position-level r > SESOI",
    "beyond_position": "{role} layer L{layer}: beyond-position r > SESOI",
}


def attention_claim(
    a: StudyView, role: str, test: Rq2Test, difficulty: str | None = None
) -> Evidence:
    """At the ``role`` layer, RQ2 question ``test`` (position / beyond_position) > SESOI."""
    layer = a.layers.as_dict()[role]
    label = _CLAIMS[test].format(role=role, layer=layer)
    if difficulty is not None:
        label = label.replace(":", f", {difficulty}:", 1)
    return Evidence(
        label,
        rq2(a, test, difficulty)[layer],
        {"layer": layer, "role": role, "test": test, "difficulty": difficulty or "all"},
        (f"rq2-{test}-L{layer}", lambda: rq2_layer_scatter(a, layer, test)),
    )
