"""RQ5: how do the thoughts compose? Subset ablations and fewer-thoughts runs.

Requirements: every non-empty subset of the thoughts ablated with each ``--subset-kinds`` kind
(63 for six thoughts; the single thoughts and all thoughts are RQ1's own rows), and the latent
loop cut to k = 0..T-1 thoughts (k = T is the clean run). Effects are Δ log p(gold) per
problem. Statistics (:mod:`codi_fixtures.stats.composition`): pair interactions
``I_ij = E_ij - E_i - E_j`` (redundant: trimmed mean I < -SESOI; synergistic: > SESOI; one Holm
family over both directions of every pair), "some proper subset reaches 80% of the all-thoughts
effect" (mean contrasts, Holm over the proper subsets; the smallest such subset on the means is
descriptive), "some thought is
necessary alone" against "the thoughts are redundant as a set", and accuracy against k (trend
of the per-problem slopes, saturation point, per difficulty bin with Holm over the bins),
beside the bundled model's trained 0-thought control. The subset claims judge one subset kind
(:func:`judged_kind`: ``mean`` when it was run); with ``--subset-kinds none`` they skip.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from codi_fixtures.analyses import rq1
from codi_fixtures.analyses.base import Evidence, FigureSpec
from codi_fixtures.analyses.plotting import (
    LOGP_LABEL,
    OKABE_ITO,
    _difficulty_groups,
    _diverging_cmap,
    _symmetric_limit,
    _yerr,
    _zero_line,
    label_cells,
)
from codi_fixtures.analyses.view import StudyView, guarded
from codi_fixtures.config import BUNDLED_CHECKPOINT, Settings
from codi_fixtures.stats import (
    DegenerateData,
    StatResult,
    apply_holm_verdicts,
    inconclusive,
    inconclusive_verdict,
    mean_effect,
    pvalue_or_one,
    union_route,
)
from codi_fixtures.stats.composition import (
    InteractionTest,
    ReachTest,
    SmallestSubset,
    TrendResult,
    interaction_tests,
    per_problem_smallest_size,
    reaching_subset_test,
    saturation,
    smallest_reaching_subset,
    trend_test,
)
from codi_fixtures.study.conditions import (
    Dimensions,
    FewerThoughts,
    Requirements,
    all_subsets,
    parse_site,
    subset_ablations,
    subset_label,
)

__all__ = [
    "FRACTION",
    "Rq5",
    "Rq5Fewer",
    "Rq5Kind",
    "accuracy_rises",
    "accuracy_vs_k",
    "judged_kind",
    "necessary_alone",
    "pair_claim",
    "pair_matrix",
    "redundant_as_set",
    "rq5_fewer",
    "rq5_kind",
    "smallest_subset_claim",
    "subset_bars",
    "trained_control",
]

FRACTION = 0.8
"""The share of the all-thoughts effect a subset must reach."""


def trained_control(settings: Settings) -> dict[str, float] | None:
    """The checkpoint's trained 0-thought control accuracy per bin (fractions), if recorded."""
    folder = Path(settings.model.ckpt) if settings.model.ckpt else BUNDLED_CHECKPOINT
    try:
        extra = json.loads((folder / "codi.json").read_text()).get("extra", {})
        values = extra["control_0_thoughts"]["codi"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {str(k): float(v) / 100.0 for k, v in values.items()}


def _control(a: StudyView) -> dict[str, float] | None:
    return None if a.settings is None else trained_control(a.settings)


class Rq5:
    """The RQ5 analysis: all subset ablations (``--subset-kinds``) and k = 0..T-1 thoughts."""

    name = "rq5"

    def requirements(self, settings: Settings, dims: Dimensions) -> Requirements:
        """Every non-empty subset for each subset kind run; FewerThoughts k = 0..T-1."""
        site = parse_site(settings.run.site, dims.n_layers)
        kinds = [k for k in settings.subset_kinds if k in settings.run.kinds]
        conditions: list[object] = []
        for kind in kinds:
            conditions += subset_ablations(dims.n_thoughts, kind, site)  # type: ignore[arg-type]
        conditions += [FewerThoughts(k) for k in range(dims.n_thoughts)]
        return Requirements(conditions=tuple(conditions))  # type: ignore[arg-type]

    def compute(self, view: StudyView) -> StudyView:
        """The statistics are functions of the view (memoised there): :func:`rq5_kind`, ..."""
        return view

    def figures(self, view: StudyView) -> list[FigureSpec]:
        """Subset effects and the pair matrix per subset kind; accuracy against k."""
        specs = []
        for kind in subset_kinds(view):
            specs += [
                FigureSpec(
                    f"RQ5: effect of ablating each subset of thoughts ({kind})",
                    f"rq5_subsets_{kind}",
                    partial(subset_bars, view, kind),
                    "one bar per ablated subset: mean Δ log p(gold) over problems (the plain mean, "
                    "the estimator of the 80% test), "
                    f"{view.ci_percent} bootstrap-t CI; dashed line: 80% of the "
                    "all-thoughts effect's mean",
                ),
                FigureSpec(
                    f"RQ5: pair interactions ({kind})",
                    f"rq5_pairs_{kind}",
                    partial(pair_matrix, view, kind),
                    "one cell per pair of thoughts: trimmed mean interaction E_ij − E_i − E_j over "
                    "problems (nats); R / S: redundancy / synergy supported after Holm",
                ),
            ]
        if has_fewer(view):
            specs.append(
                FigureSpec(
                    "RQ5: accuracy vs number of thoughts",
                    "rq5_accuracy_vs_k",
                    partial(accuracy_vs_k, view),
                    "accuracy of greedy answers with k thoughts run (k = T: the clean run), all "
                    "problems and per difficulty bin; dash-dot: the trained 0-thought model",
                )
            )
        return specs

    def left_out(self, settings: Settings) -> list[str]:
        """What these settings switch off (the report lists it)."""
        return [] if settings.subset_kinds else ["RQ5 subset ablations (--subset-kinds none)"]

    def summary(self, view: StudyView) -> dict[str, object]:
        """Numbers for ``summary_statistics.json`` (under ``analyses.rq5``)."""
        out: dict[str, object] = {}
        for kind in subset_kinds(view):
            res = rq5_kind(view, kind)
            out[kind] = {
                "subset_effect": {
                    "+".join(map(str, s)): _num(r)
                    for s, r in zip(res.subsets, res.effects, strict=True)
                },
                "pairs": {
                    f"t{p[0]}-t{p[1]}": {
                        "trimmed_mean_interaction": t.trimmed_mean,
                        "ci": [t.ci_low, t.ci_high],
                        "label": t.label,
                        "redundancy": _num(t.redundancy),
                        "synergy": _num(t.synergy),
                    }
                    for p, t in res.pairs.items()
                },
                "smallest_subset_reaching_80pct": {
                    "subset": None if res.smallest.subset is None else list(res.smallest.subset),
                    "fraction_reached": res.smallest.fraction_reached,
                    "full_effect": res.smallest.full_effect,
                    "best_single": list(res.smallest.single_best),
                    "best_single_fraction": res.smallest.single_fraction,
                    "tested_subset": None if res.reach.subset is None else list(res.reach.subset),
                    "subsets_shown_to_reach": [list(x) for x in res.reach.shown_to_reach],
                    "test": _num(res.reach.result),
                },
                "per_problem_smallest_size": {
                    str(size): int(np.sum(res.sizes == size))
                    for size in range(1, view.n_thoughts + 1)
                },
                "necessary_alone": _num(res.necessary),
                "redundant_as_set": _num(res.redundant),
                "by_difficulty": {
                    name: {
                        "smallest_subset": None if s.subset is None else list(s.subset),
                        "full_effect": s.full_effect,
                        "best_single_fraction": s.single_fraction,
                    }
                    for name, s in res.smallest_by_difficulty.items()
                },
            }
        if has_fewer(view):
            fewer = rq5_fewer(view)
            out["fewer_thoughts"] = {
                "k": fewer.ks,
                "accuracy": fewer.accuracy.tolist(),
                "mean_logp_gold": fewer.logp.tolist(),
                "trend": _num(fewer.trend.slope) | {"p_permutation": fewer.trend.p_permutation},
                "trend_by_difficulty": {
                    name: _num(t.slope) | {"accuracy": t.per_k_mean.tolist()}
                    for name, t in fewer.by_difficulty.items()
                },
                "saturation_k": fewer.saturation_k,
                "saturation_tests": {
                    f"k{k}": _num(r) for k, r in zip(fewer.ks[:-1], fewer.saturation, strict=True)
                },
                "k0_accuracy": float(fewer.accuracy[0]),
                "trained_0_thought_control_accuracy": _control(view),
                "k0_vs_trained_control": (
                    "the 6-thought model run with 0 thoughts, against a model trained with 0 "
                    "thoughts (codi.json extra.control_0_thoughts): the gap is what the trained "
                    "thoughts carry that a direct-answer model learns without them"
                ),
            }
        return out


def _num(r: StatResult) -> dict[str, object]:
    return {
        "statistic": r.statistic,
        "ci": [r.ci_low, r.ci_high],
        "p": r.p_value,
        "p_holm": r.p_corrected,
        "n": r.n,
        "sesoi": r.sesoi,
        "verdict": r.verdict,
        "method": r.method,
    }


# --- what the study holds ------------------------------------------------------------------
def subset_kinds(a: StudyView) -> list[str]:
    """The kinds whose subset ablations were run (a pair column exists)."""
    n = a.n_thoughts
    if n < 3:
        return []
    names = set(a.results.conditions)
    return [k for k in a.kinds if all(subset_label(s, k, n) in names for s in all_subsets(n))]


def judged_kind(a: StudyView) -> str | None:
    """The subset kind the RQ5 subset claims judge: ``mean`` if run, else the first; or None.

    Only kinds asked for with ``--subset-kinds`` whose every subset was run count.
    """
    wanted = None if a.settings is None else a.settings.subset_kinds
    kinds = [k for k in subset_kinds(a) if wanted is None or k in wanted]
    if not kinds:
        return None
    return "mean" if "mean" in kinds else kinds[0]


NO_SUBSETS = (
    "inconclusive: no subset ablations were run (--subset-kinds none, or none of its kinds is "
    "among --kinds), so no RQ5 subset claim can be judged"
)
"""Why every RQ5 subset claim skips on such a run (one reason, one line in pytest's summary)."""


def has_fewer(a: StudyView) -> bool:
    """True when the fewer-thoughts rows were run."""
    return "k0-thoughts" in a.results.conditions


# --- statistics --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rq5Kind:
    """RQ5 statistics for one ablation kind."""

    kind: str
    subsets: list[tuple[int, ...]]
    effects: list[StatResult]  # per subset: mean Δ log p, Holm across the subsets
    pairs: dict[tuple[int, ...], InteractionTest]
    smallest: SmallestSubset  # descriptive: the smallest subset reaching FRACTION on the means
    reach: ReachTest  # claim: some proper subset reaches FRACTION of all's effect (Holm)
    sizes: np.ndarray  # (N,) per problem: the smallest subset size reaching FRACTION
    necessary: StatResult  # claim: some thought is necessary alone
    redundant: StatResult  # claim: the thoughts are redundant as a set
    smallest_by_difficulty: dict[str, SmallestSubset]


def _effects(a: StudyView, kind: str) -> tuple[dict[tuple[int, ...], np.ndarray], np.ndarray]:
    """Per subset: Δ log p over the usable problems; and the usable-row mask."""
    n = a.n_thoughts
    subsets = all_subsets(n)
    cols = [a.results.column(subset_label(s, kind, n)) for s in subsets]
    keep = a.finite_rows(cols)
    delta = a.results.delta_logp.astype(np.float64)
    return {s: delta[keep, c] for s, c in zip(subsets, cols, strict=True)}, keep


def rq5_kind(a: StudyView, kind: str) -> Rq5Kind:
    """All RQ5 subset statistics for ``kind`` (memoised)."""

    def compute() -> Rq5Kind:
        n = a.n_thoughts
        effects, keep = _effects(a, kind)
        subsets = list(effects)
        n_use = int(keep.sum())
        per_subset = apply_holm_verdicts(
            [guarded(partial(_plain_mean, a, effects[s]), n_use, "greater") for s in subsets],
            alpha=a.alpha,
        )
        pairs = {
            t.subset: t
            for t in interaction_tests(
                effects,
                order=2,
                n_thoughts=n,
                sesoi=a.sesoi_logp,
                alpha=a.alpha,
                n_boot=a.n_boot,
                seed=a.seed,
            )
        }
        smallest = smallest_reaching_subset(effects, n, fraction=FRACTION)
        reach = reaching_subset_test(
            effects, n, fraction=FRACTION, alpha=a.alpha, n_boot=a.n_boot, seed=a.seed
        )
        sizes = per_problem_smallest_size(effects, n, fraction=FRACTION, min_full=a.sesoi_logp)
        full = tuple(range(n))
        all_result = guarded(
            lambda: mean_effect(effects[full], sesoi=a.sesoi_logp, alpha=a.alpha, seed=a.seed),
            n_use,
            "greater",
        )
        reach = _needs_an_effect_to_carry(reach, all_result, a.sesoi_logp)
        singles = rq1.rq1_logp(a, kind)
        by_bin = {}
        difficulty = np.array(a.results.difficulty)[keep]
        for name, rows in _difficulty_groups(list(difficulty)):
            if rows.size >= 2:
                by_bin[name] = smallest_reaching_subset(
                    {s: v[rows] for s, v in effects.items()}, n, fraction=FRACTION
                )
        return Rq5Kind(
            kind=kind,
            subsets=subsets,
            effects=per_subset,
            pairs=pairs,
            smallest=smallest,
            reach=reach,
            sizes=sizes,
            necessary=_some_thought(singles),
            redundant=_redundant_set(singles, all_result, a.alpha),
            smallest_by_difficulty=by_bin,
        )

    return a.memoised(("rq5", kind), compute)


def _needs_an_effect_to_carry(reach: ReachTest, all_six: StatResult, sesoi: float) -> ReachTest:
    """The 80% claim presupposes an all-thoughts effect: without one it is inconclusive.

    When ablating every thought is not shown to lower log p(gold) beyond the SESOI, "a subset
    reaches 80% of it" would be a verdict about noise-level effects (a model whose thoughts
    are unused: 80% of 0.004 nats).
    """
    if all_six.verdict == "supported":
        return reach
    why = (
        f"inconclusive: ablating all thoughts is not shown to lower log p(gold) by more than "
        f"the SESOI ({sesoi:g} nats; 20% trimmed mean {all_six.statistic:.3g}, "
        f"{all_six.verdict}), so there is no effect for a subset to carry"
    )
    # no subset is "tested" or "shown to reach" anything: the evidence must not say so
    return ReachTest(inconclusive_verdict(why, reach.result.n), None, {})


def _plain_mean(a: StudyView, x: np.ndarray) -> StatResult:
    """Mean Δ log p of one subset: the plain mean, like the 80% line and the reach test."""
    return mean_effect(x, sesoi=a.sesoi_logp, alpha=a.alpha, seed=a.seed, n_boot=a.n_boot, trim=0.0)


def _some_thought(singles: list[StatResult]) -> StatResult:
    """Union of the single-thought claims (Holm across thoughts): supported when one is."""
    supported = [(t, r) for t, r in enumerate(singles) if r.verdict == "supported"]
    if supported:
        t, r = min(supported, key=lambda tr: pvalue_or_one(tr[1].p_corrected))
        return replace(r, verdict_reason=f"thought {t} alone: {r.verdict_reason}")
    if singles and all(r.verdict == "refuted" for r in singles):
        t, r = max(enumerate(singles), key=lambda tr: tr[1].ci_high)
        return replace(
            r, verdict_reason=f"every thought refuted alone; closest t{t}: {r.verdict_reason}"
        )
    open_ = [(t, r) for t, r in enumerate(singles) if r.verdict != "refuted"]
    t, r = open_[0] if open_ else (0, inconclusive("no thoughts", 0, "greater"))
    return replace(
        r, verdict="inconclusive", verdict_reason=f"no thought shown necessary; t{t} open"
    )


def _redundant_set(singles: list[StatResult], all_result: StatResult, alpha: float) -> StatResult:
    """Supported when no single thought matters alone (each refuted) yet all together do.

    Supported needs every part (intersection-union: each at ``alpha``). Refuted has two routes,
    "some thought matters alone" (RQ1's Holm family) or "all together do not": each is judged
    at ``alpha / 2`` (:func:`~codi_fixtures.stats.union_route`), so a false "refuted" has
    probability at most ``alpha``.
    """
    alone = [(t, union_route(r, 2, alpha=alpha)) for t, r in enumerate(singles)]
    alone = [(t, r) for t, r in alone if r.verdict == "supported"]
    if alone:
        t, r = alone[0]
        return replace(
            r,
            verdict="refuted",
            verdict_reason=f"refuted: thought {t} matters alone ({r.verdict_reason}; "
            "its p x 2 for the two routes to 'refuted')",
        )
    together = union_route(all_result, 2, alpha=alpha)
    if together.verdict == "refuted":
        return replace(
            together,
            verdict_reason=f"refuted: all thoughts together: {together.verdict_reason} (p x 2 "
            "for the two routes to 'refuted')",
        )
    if all(r.verdict == "refuted" for r in singles) and all_result.verdict == "supported":
        return replace(
            all_result,
            verdict_reason=f"supported: no thought matters alone, all together do "
            f"({all_result.verdict_reason})",
        )
    return replace(
        all_result,
        verdict="inconclusive",
        verdict_reason="inconclusive: some single-thought effect is neither shown nor excluded, "
        "or the all-thoughts effect is not shown either way (each route to 'refuted' at alpha / 2)",
    )


@dataclass(frozen=True)
class Rq5Fewer:
    """Accuracy and log p against the number of thoughts k (k = T is the clean run)."""

    ks: list[int]
    accuracy: np.ndarray  # (K,)
    logp: np.ndarray  # (K,) mean log p(gold)
    trend: TrendResult
    by_difficulty: dict[str, TrendResult]  # slopes Holm across the bins
    saturation_k: int | None
    saturation: list[StatResult]  # per k < T: the accuracy drop against k = T, Holm


def _fewer_arrays(a: StudyView) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    n = a.n_thoughts
    ks = list(range(n + 1))
    cols = [a.results.column(f"k{k}-thoughts") for k in range(n)]
    keep = a.finite_rows(cols)
    correct = np.column_stack([a.results.correct[:, cols], a.results.clean_correct])
    logp = np.column_stack([a.results.logp[:, cols], a.results.clean_logp])
    return ks, correct[keep], logp[keep], keep


def rq5_fewer(a: StudyView) -> Rq5Fewer:
    """Accuracy against k: trend, saturation, per difficulty bin (memoised)."""

    def compute() -> Rq5Fewer:
        ks, correct, logp, keep = _fewer_arrays(a)
        sesoi = a.sesoi_accuracy / a.n_thoughts  # SESOI points over the whole loop
        trend = trend_test(correct.astype(float), ks, sesoi=sesoi, alpha=a.alpha, seed=a.seed)
        difficulty = np.array(a.results.difficulty)[keep]
        by = {
            name: _bin_trend(a, correct[rows].astype(float), ks, sesoi, name)
            for name, rows in _difficulty_groups(list(difficulty))
        }
        slopes = apply_holm_verdicts([t.slope for t in by.values()], alpha=a.alpha)
        by = {name: replace(t, slope=s) for (name, t), s in zip(by.items(), slopes, strict=True)}
        try:
            k_sat, sat = saturation(correct, ks, sesoi=a.sesoi_accuracy, alpha=a.alpha)
        except DegenerateData as err:  # no usable problem: no saturation point
            k_sat = None
            sat = [inconclusive_verdict(f"inconclusive: {err}") for _ in ks[:-1]]
        return Rq5Fewer(ks, correct.mean(axis=0), logp.mean(axis=0), trend, by, k_sat, sat)

    return a.memoised(("rq5", "fewer"), compute)


def _bin_trend(
    a: StudyView, correct: np.ndarray, ks: list[int], sesoi: float, name: str
) -> TrendResult:
    """One difficulty bin's trend; fewer than 2 problems are inconclusive (a bad call raises)."""
    if len(correct) < 2:
        return TrendResult(
            slope=inconclusive_verdict(
                f"inconclusive: only {len(correct)} problem in {name} (a trend needs >= 2)",
                len(correct),
            ),
            p_permutation=math.nan,
            per_k_mean=correct.mean(axis=0),  # a bin has >= 1 problem (empty ones are dropped)
        )
    return trend_test(correct, ks, sesoi=sesoi, alpha=a.alpha, seed=a.seed)


# --- figures ------------------------------------------------------------------------------------
def subset_bars(a: StudyView, kind: str) -> Figure:
    """Every subset's mean Δ log p (plain mean, as the 80% line) with its CI, sorted."""
    res = rq5_kind(a, kind)
    order = np.argsort(
        [-(r.statistic if math.isfinite(r.statistic) else -np.inf) for r in res.effects]
    )
    stat = np.array([res.effects[i].statistic for i in order])
    low = np.array([res.effects[i].ci_low for i in order])
    high = np.array([res.effects[i].ci_high for i in order])
    sizes = [len(res.subsets[i]) for i in order]
    colours = [OKABE_ITO[(s - 1) % len(OKABE_ITO)] for s in sizes]
    fig = Figure(figsize=(max(8.0, 0.2 * len(order) + 2.0), 4.4), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(order), dtype=np.float64)
    ax.bar(x, stat, color=colours, alpha=0.85)
    ok = np.isfinite(low) & np.isfinite(high)
    ax.errorbar(
        x[ok],
        stat[ok],
        yerr=_yerr(stat, low, high)[:, ok],
        fmt="none",
        ecolor="0.2",
        capsize=1.5,
        linewidth=0.8,
    )
    full = res.smallest.full_effect
    if math.isfinite(full):
        ax.axhline(
            FRACTION * full,
            color="0.3",
            linestyle="--",
            linewidth=1,
            label=f"{FRACTION:.0%} of the all-thoughts effect",
        )
    labels = ["".join(map(str, res.subsets[i])) for i in order]
    ax.set_xticks(x, labels, rotation=90, fontsize=6)
    ax.set_xlabel("ablated subset (thought indices)")
    ax.set_ylabel(f"mean {LOGP_LABEL} (clean − ablated)")
    _zero_line(ax)
    handles = [
        Patch(color=OKABE_ITO[(s - 1) % len(OKABE_ITO)], label=f"{s} thought{'s' * (s > 1)}")
        for s in sorted(set(sizes))
    ]
    ax.legend(handles=[*handles, *ax.get_legend_handles_labels()[0][-1:]], fontsize=7, ncols=4)
    ax.set_title(
        f"RQ5: ablating each subset of thoughts ({kind}; {a.ci_percent} CIs, sorted)", fontsize=11
    )
    return fig


def pair_matrix(a: StudyView, kind: str) -> Figure:
    """T x T matrix of the trimmed mean pair interaction; R / S mark redundancy / synergy."""
    res = rq5_kind(a, kind)
    n = a.n_thoughts
    grid = np.full((n, n), np.nan)
    fig = Figure(figsize=(5.2, 4.4), layout="constrained")
    ax = fig.subplots()
    for (i, j), t in res.pairs.items():
        grid[i, j] = grid[j, i] = t.trimmed_mean
    limit = _symmetric_limit(grid)
    image = ax.imshow(
        np.ma.masked_invalid(grid),
        cmap=_diverging_cmap(),
        norm=TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit),
    )
    labels = np.full((n, n), "", dtype=object)
    for (i, j), t in res.pairs.items():
        mark = {"redundancy": "R", "synergy": "S", "additive": "="}.get(t.label, "?")
        labels[i, j] = labels[j, i] = f"{t.trimmed_mean:.2f}\n{mark}"
    label_cells(ax, image, labels)
    ax.set_xticks(range(n), [f"t{t}" for t in range(n)])
    ax.set_yticks(range(n), [f"t{t}" for t in range(n)])
    bar = fig.colorbar(image, ax=ax, shrink=0.85)
    bar.set_label("trimmed mean of E_ij − E_i − E_j [nats]")
    ax.set_title(
        f"RQ5: pair interactions ({kind})\n"
        "R redundant, S synergistic, = neither beyond the SESOI, ? open\n"
        "(one Holm family: both directions of every pair)",
        fontsize=9,
    )
    return fig


def accuracy_vs_k(a: StudyView, control: dict[str, float] | None = None) -> Figure:
    """Accuracy against the number of thoughts, overall and per difficulty bin."""
    fewer = rq5_fewer(a)
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.plot(fewer.ks, 100 * fewer.accuracy, "o-", color="0.1", linewidth=2, label="all problems")
    for colour, (name, trend) in zip(OKABE_ITO, fewer.by_difficulty.items(), strict=False):
        ax.plot(fewer.ks, 100 * trend.per_k_mean, ".--", color=colour, label=name)
    if fewer.saturation_k is not None:
        ax.axvline(
            fewer.saturation_k,
            color="0.5",
            linestyle=":",
            label=f"saturation k={fewer.saturation_k}",
        )
    control = control or _control(a)
    if control and "all" in control:
        ax.axhline(
            100 * control["all"],
            color=OKABE_ITO[2],
            linestyle="-.",
            label=f"trained 0-thought model: {100 * control['all']:.0f}%",
        )
    slope = fewer.trend.slope
    ax.set_xlabel("thoughts run (k; k = T is the clean run)")
    ax.set_ylabel("accuracy [%]")
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=8)
    ax.set_title(
        f"RQ5: accuracy vs k; slope {100 * slope.statistic:.1f} pp/thought ({slope.verdict})",
        fontsize=10,
    )
    return fig


# --- claims (experiments/test_rq5_composition.py) ---------------------------------------------
def _no_subsets(label: str) -> Evidence:
    """A subset claim on a run without subset ablations: skipped with :data:`NO_SUBSETS`."""
    return Evidence(label, inconclusive_verdict(NO_SUBSETS), unjudgeable=NO_SUBSETS)


def pair_claim(
    a: StudyView, pair: tuple[int, int], which: str, kind: str | None = None
) -> Evidence:
    """Thoughts ``pair`` are redundant (``which="redundancy"``) or synergistic (``"synergy"``).

    Both directions of every pair are one Holm family (30 tests for six thoughts), so the
    chance of any false synergy-or-redundancy label is at most alpha.
    ``kind``: the subset ablation kind (default :func:`judged_kind`); likewise below.
    """
    i, j = sorted(pair)
    kind = kind or judged_kind(a)
    what = {"redundancy": "redundant", "synergy": "synergistic"}[which]
    if kind is None:
        return _no_subsets(f"thoughts {i} and {j} are {what}")
    test = rq5_kind(a, kind).pairs[(i, j)]
    word = {
        "redundancy": f"redundant ({kind}: E_{i} + E_{j} - E_{i}{j} > SESOI)",
        "synergy": f"synergistic ({kind}: E_{i}{j} - E_{i} - E_{j} > SESOI)",
    }[which]
    return Evidence(
        f"thoughts {i} and {j} are {word}",
        getattr(test, which),
        {
            "pair": f"t{i}-t{j}",
            "ablation kind": kind,
            "20% trimmed mean interaction [nats]": test.trimmed_mean,
            "family": "Holm over both directions (synergy, redundancy) of every pair",
        },
        (f"rq5-pairs-{kind}", lambda: pair_matrix(a, kind)),
    )


def _subsets(subsets: list[tuple[int, ...]]) -> str:
    return "; ".join(",".join(f"t{t}" for t in s) for s in subsets) or "none"


def smallest_subset_claim(a: StudyView, kind: str | None = None) -> Evidence:
    """Some proper subset of the thoughts carries 80% of the all-thoughts effect.

    A union over every proper subset (Holm); the statistic, CI and p are those of the subset
    that decides the verdict. The smallest subset reaching 80% on the means is descriptive.
    """
    kind = kind or judged_kind(a)
    label = f"a proper subset carries {FRACTION:.0%} of the all-thoughts effect"
    if kind is None:
        return _no_subsets(label)
    res = rq5_kind(a, kind)
    s, reach = res.smallest, res.reach
    return Evidence(
        f"{label} ({kind})",
        reach.result,
        {
            "tested subset (decides the verdict)": _subsets(
                [] if reach.subset is None else [reach.subset]
            ),
            "statistic": f"mean(E_S - {FRACTION:g} E_all) [nats]",
            "family": f"Holm over the {len(reach.per_subset)} proper subsets",
            "subsets shown to reach (Holm)": _subsets(reach.shown_to_reach),
            "smallest subset on the means (descriptive, not tested)": _subsets(
                [] if s.subset is None else [s.subset]
            ),
            "its fraction reached (mean / mean)": s.fraction_reached,
            "all-thoughts effect (mean) [nats]": s.full_effect,
        },
        (f"rq5-subsets-{kind}", lambda: subset_bars(a, kind)),
    )


def necessary_alone(a: StudyView, kind: str | None = None) -> Evidence:
    """Some thought is necessary alone: ablating it lowers log p(gold) beyond the SESOI."""
    kind = kind or judged_kind(a)
    if kind is None:
        return _no_subsets("some thought is necessary alone")
    return Evidence(
        f"some thought is necessary alone ({kind})",
        rq5_kind(a, kind).necessary,
        {"ablation kind": kind, "family": "Holm over the thoughts (RQ1)"},
        # RQ1's own figure: the same 20% trimmed means the verdict reads (the subset bars
        # show plain means, the estimator of the 80% claim)
        (f"rq1-logp-{kind}", lambda: rq1.rq1_kind_bars(a, kind, "logp")),
    )


def redundant_as_set(a: StudyView, kind: str | None = None) -> Evidence:
    """No thought matters alone, yet all together do: the thoughts are redundant as a set."""
    kind = kind or judged_kind(a)
    if kind is None:
        return _no_subsets("the thoughts are redundant as a set")
    return Evidence(
        f"the thoughts are redundant as a set ({kind})",
        rq5_kind(a, kind).redundant,
        {"ablation kind": kind, "estimator": "20% trimmed means (RQ1), singles and all six"},
        (f"rq1-logp-{kind}", lambda: rq1.rq1_kind_bars(a, kind, "logp")),
    )


def accuracy_rises(a: StudyView, difficulty: str | None = None) -> Evidence:
    """Accuracy rises with the number of thoughts run (mean per-problem slope > SESOI / T)."""
    fewer = rq5_fewer(a)
    trend = fewer.trend if difficulty is None else fewer.by_difficulty.get(difficulty)
    result = (
        trend.slope if trend is not None else inconclusive_verdict(f"no problems in {difficulty}")
    )
    where = "" if difficulty is None else f", {difficulty}"
    return Evidence(
        f"accuracy rises with the number of thoughts{where}",
        result,
        {
            "accuracy by k": ", ".join(
                f"{x:.2f}" for x in (fewer.accuracy if trend is None else trend.per_k_mean)
            ),
            "p (within-problem permutation)": math.nan if trend is None else trend.p_permutation,
            "saturation k": str(fewer.saturation_k),
            "difficulty": difficulty or "all",
            **(
                {}
                if difficulty is None
                else {"family": f"Holm over the {len(fewer.by_difficulty)} difficulty bins"}
            ),
        },
        ("rq5-accuracy-vs-k", lambda: accuracy_vs_k(a)),
    )
