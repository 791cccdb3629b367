"""RQ3: can the intermediate results of the reasoning chain be decoded from the thoughts?

Read-outs of the clean run (:class:`~codi_fixtures.study.conditions.LensReadout`,
:class:`~codi_fixtures.study.conditions.PositionReadout`): at the question's last token,
``<bot>`` and each thought, at the input embedding and the decoder blocks. Step k (1-based)
is the k-th value of the problem's chain (``Problem.intermediates``); problems without one
take no part in step k's claims. Statistics (:mod:`codi_fixtures.stats.decoding`):

- *lens*: the logit lens (final norm + LM head) ranks the first token of step k's value
  first; its rate is tested against the value-distribution baseline (the share of the
  commonest first token: what a problem-blind reader scores). Per step, "decodable from some
  thought": the best (thought, site) cell, Bonferroni over the cells, Holm over the steps.
  Per (step, thought) at the input embedding: Holm over the grid.
- *probes*: logistic regression on the hidden state, cross-validated by problem, per
  (step, thought) at the best probed layer (Bonferroni over the layers, the CI at that
  level too), beyond both the permuted-label baseline and the question-position baseline
  (the same probe at ``q_last`` / ``<bot>``); supported only when both differences are,
  Holm over the grid per baseline. The cell shows the difference that decides its verdict.
  Probed layers: the input embedding and the three role layers (``--rq3-all-layers``: all).
- *link to RQ1*: is the thought that best encodes step k (lens, at the site where step k
  decodes best) among the thoughts whose ablation hurts most? Over the steps whose lens claim
  is supported; inconclusive when none is (:func:`~codi_fixtures.stats.decoding.rq1_link_test`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure

from codi_fixtures.analyses.base import Evidence, FigureSpec
from codi_fixtures.analyses.plotting import _diverging_cmap, _no_data, cell_text, label_cells
from codi_fixtures.analyses.view import StudyView
from codi_fixtures.config import Settings
from codi_fixtures.model.architecture import layer_roles
from codi_fixtures.stats import (
    DegenerateData,
    StatResult,
    apply_holm_verdicts,
    inconclusive_verdict,
    pvalue_or_one,
    union_route,
)
from codi_fixtures.stats.decoding import (
    LinkResult,
    ProbeGrid,
    cv_probe,
    lens_rate,
    lens_rate_table,
    probe_effects,
    probe_grid,
    rq1_link_test,
)
from codi_fixtures.study.conditions import (
    Ablation,
    Dimensions,
    LensReadout,
    PositionReadout,
    Requirements,
    parse_site,
    readout_positions,
)

__all__ = [
    "SESOI_RATE",
    "Rq3",
    "Rq3Probes",
    "Rq3Stats",
    "decodable_at",
    "lens_decodes_step",
    "link_to_importance",
    "no_step_values_reason",
    "probe_decodes_step",
    "rq3_probes",
    "rq3_stats",
]

SESOI_RATE = 0.1
"""Decoding-rate SESOI: 10 points above the baseline (lens rate, probe accuracy)."""
PROBE_MAX_ITER, PROBE_TOL = 50, 1e-2
"""Probe solver budget: ~15x faster than sklearn's defaults (max_iter 500, tol 1e-4); on the
bundled and planted full tiers the accuracies move by <= 0.07 and the planted diagonal's
verdicts are the same (an early-stopped probe is still a fixed, more regularised classifier:
its out-of-fold accuracy is honest)."""


class Rq3:
    """The RQ3 analysis: logit lens at every layer, hidden states at the probed layers."""

    name = "rq3"

    def requirements(self, settings: Settings, dims: Dimensions) -> Requirements:
        """The lens and position read-outs; the importance ablations (the link to RQ1)."""
        layers = probed_layers(settings, dims.n_layers)
        site = parse_site(settings.run.site, dims.n_layers)
        importance = tuple(
            Ablation((t,), settings.importance_kind, site)  # type: ignore[arg-type]
            for t in range(dims.n_thoughts)
        )
        return Requirements(
            conditions=importance,
            readouts=(LensReadout(), PositionReadout(None), *(PositionReadout(b) for b in layers)),
        )

    def compute(self, view: StudyView) -> Rq3Stats:
        """Every RQ3 statistic (memoised by the view)."""
        return rq3_stats(view)

    def figures(self, view: StudyView) -> list[FigureSpec]:
        """Step x thought heatmaps (lens rate, probe selectivity) and per-layer lens curves."""
        if no_step_values_reason(view) is not None:
            return []
        return [
            FigureSpec(
                "RQ3: logit-lens rate of step k's value at each thought (input embedding)",
                "rq3_lens_heatmap",
                partial(lens_heatmap, view),
                "One cell: the share of problems (%) whose step-k value's first token is the "
                "logit lens's top-1 at that thought's input embedding (final norm + LM head).",
            ),
            FigureSpec(
                "RQ3: probe accuracy minus the question-position baseline (best probed layer)",
                "rq3_probe_heatmap",
                partial(probe_heatmap, view),
                "One cell: cross-validated (by problem) linear-probe accuracy for step k's value "
                "at that thought, minus the same probe at the question's own positions.",
            ),
            FigureSpec(
                "RQ3: probe accuracy by layer (best thought per step)",
                "rq3_probe_by_layer",
                partial(probe_by_layer, view),
                "One line per step: cross-validated probe accuracy for step k's value at the "
                "best thought, at each probed site (--rq3-all-layers probes every block); "
                "dotted: the same probe at the question's own positions.",
            ),
            FigureSpec(
                "RQ3: logit-lens rate by layer (best thought per step)",
                "rq3_lens_by_layer",
                partial(lens_by_layer, view),
                "One line per step: the logit lens's top-1 rate (%) at the best thought, at the "
                "input embedding (emb) and after each block.",
            ),
        ]

    def unjudgeable(self, view: StudyView) -> str | None:
        """Why no RQ3 claim can be judged (the problem set has no step values), or None."""
        return no_step_values_reason(view)

    def summary(self, view: StudyView) -> dict[str, object]:
        """Numbers for ``summary_statistics.json`` (``analyses.rq3``)."""
        reason = no_step_values_reason(view)
        if reason is not None:
            return {"skipped": reason}
        stats = view.of("rq3")
        probes = rq3_probes(view)
        return {
            "steps": list(view.steps),
            "sites": list(stats.sites),
            "probed_sites": list(probes.sites),
            "value_baseline": _listed(stats.baseline[: len(view.steps)]),
            "lens_rate_embedding": _listed(stats.lens_embedding),
            "lens_rate_by_site_best_thought": _listed(stats.lens_by_site),
            "lens_step": {str(k): r.as_dict() | _verdict(r) for k, r in stats.lens_step.items()},
            "probe_accuracy_best_layer": _listed(probes.accuracy),
            "probe_minus_question": _listed(probes.selectivity),
            "probe_accuracy_by_site": _listed(probes.by_site),  # (step, thought, site)
            "probe_question_by_site": _listed(probes.question_by_site),  # (step, site)
            "probe_best_layer": {f"s{k}-t{t}": v for (k, t), v in probes.layer.items()},
            "probe_by_bin": {f"s{k}-t{t}": v for (k, t), v in probes.by_bin.items()},
            "probe": {
                f"s{k}-t{t}": {"statistic": r.statistic, "verdict": r.verdict}
                for (k, t), r in probes.cells.items()
            },
            "codi_paper_step_decoding": stats.codi_paper,
            "rq1_link": {
                "best_thought": list(stats.link.best_thought) if stats.link else None,
                "importance_rank": list(stats.link.importance_rank) if stats.link else None,
                **(stats.link.result.as_dict() | _verdict(stats.link.result) if stats.link else {}),
            },
        }


def _verdict(r: StatResult) -> dict[str, object]:
    return {"verdict": r.verdict, "verdict_reason": r.verdict_reason}


def _listed(a: np.ndarray) -> list[object]:
    return [None if isinstance(v, float) and math.isnan(v) else v for v in a.tolist()]


def probed_layers(settings: Settings, n_layers: int) -> list[int]:
    """The blocks whose hidden states are probed: the role layers, or all (``rq3_all_layers``)."""
    if settings.rq3_all_layers:
        return list(range(n_layers))
    try:
        roles = layer_roles(n_layers, settings.layers).as_dict()
    except ValueError:
        return []  # the plugin reports a bad --layers itself
    return sorted(set(roles.values()))


# --- statistics --------------------------------------------------------------------------------
@dataclass
class Rq3Stats:
    """Everything RQ3 computes on one study (K steps = the view's ``steps``, T thoughts)."""

    sites: tuple[str, ...]  # lens sites: emb, L0..
    baseline: np.ndarray  # (K_all,) value-distribution baseline per step column
    lens_embedding: np.ndarray  # (K, T) lens rate at the input embedding
    lens_by_site: np.ndarray  # (K, S) lens rate of the best thought, per site
    lens_step: dict[int, StatResult]  # per step: some thought decodes it (Holm over steps)
    lens_grid: dict[tuple[int, int], StatResult]  # (step, thought) at the embedding
    codi_paper: dict[str, object] = field(default_factory=dict)
    link: LinkResult | None = None
    link_reason: str = ""


@dataclass
class Rq3Probes:
    """The probe statistics (computed only when a probe claim, figure or summary asks)."""

    sites: tuple[str, ...]  # probed sites: emb, L<role>..
    cells: dict[tuple[int, int], StatResult]  # (step, thought): beyond both baselines
    layer: dict[tuple[int, int], str]  # the best probed site per cell
    accuracy: np.ndarray  # (K, T) accuracy at the best probed layer
    selectivity: np.ndarray  # (K, T) accuracy minus the question baseline
    by_site: np.ndarray  # (K, T, S) probe accuracy at every probed site (the layer curves)
    question_by_site: np.ndarray  # (K, S) the question-position probe's accuracy per site
    by_bin: dict[tuple[int, int], dict[str, dict[str, object]]]
    """(step, thought) -> difficulty bin -> the cell's probe (at its chosen site) on that
    bin's problems: role (step k is the ``answer`` of a k-step problem, an ``intermediate``
    of a longer one), n, accuracy, and accuracy minus each baseline with its CI."""


def rq3_probes(view: StudyView) -> Rq3Probes:
    """Probes per (step, thought) at the probed layers (memoised)."""

    def compute() -> Rq3Probes:
        n_layers = int(str(view.results.meta["n_layers"]))
        n_cols = view.results.readouts["lens-tokens"].shape[1] - 1
        steps = [k for k in view.steps if k <= n_cols]
        cells, layer, acc, sel, sites, by_site, question, by_bin = _probes(
            view, steps, readout_positions(view.n_thoughts), n_layers
        )
        return Rq3Probes(sites, cells, layer, acc, sel, by_site, question, by_bin)

    return view.memoised(("rq3_probes",), compute)


def no_step_values_reason(view: StudyView) -> str | None:
    """Why RQ3 / RQ4 cannot be judged on this study (no step values), or None."""
    values = view.results.readouts.get("step-values")
    if values is None:
        return "inconclusive: the study has no RQ3 / RQ4 read-outs (RQ3 / RQ4 not selected)"
    if values.shape[1] < 2 or not np.isfinite(values[:, :-1]).any():
        return (
            "inconclusive: the problem set has no step values (intermediate results), so "
            "RQ3 / RQ4 cannot be judged; use problems with reasoning_steps / <<...>> annotations"
        )
    return None


def _bonferroni(r: StatResult, m: int) -> StatResult:
    """``r`` with its p-values multiplied by ``m`` (a best-of-m selection).

    ``r`` must be computed at ``alpha / m`` (its CI at ``1 - 2 alpha / m``), so that the
    verdict's CI matches its adjusted p on both sides: the CI clears the SESOI exactly when
    ``m p_sesoi`` is below alpha, and lies below it exactly when ``m p_equivalence`` is (a
    refutation of the best of ``m`` cells is judged at the same level as a support).
    """
    return replace(
        r,
        p_value=min(1.0, r.p_value * m),
        p_sesoi=None if r.p_sesoi is None else min(1.0, r.p_sesoi * m),
        p_equivalence=None if r.p_equivalence is None else min(1.0, r.p_equivalence * m),
        method=f"best of {m} cells, Bonferroni x{m}; {r.method}",
    )


def _holm(cells: dict[object, StatResult], alpha: float) -> dict[object, StatResult]:
    keys = [k for k, r in cells.items() if not r.inconclusive]
    judged = apply_holm_verdicts([cells[k] for k in keys], alpha=alpha)
    out = dict(cells)
    out.update(zip(keys, judged, strict=True))
    return out


def _combine(permuted: StatResult, question: StatResult, site: str, alpha: float) -> StatResult:
    """Intersection-union of the two baselines, shown as the comparison that decides it.

    Supported only when both are (each at ``alpha``). Refuted when either is with its p-values
    x 2 (:func:`~codi_fixtures.stats.union_route`: two routes to "refuted", so a false one has
    probability at most ``alpha``). Shown (statistic, CI, p-values) is a refuting baseline's
    difference (the question's when both refute), else the one with the larger Holm p_sesoi
    (the binding one; when inconclusive, among those not supported).
    """
    named = {"permuted labels": permuted, "question positions": question}
    # a route to "refuted" is judged with its p-values x 2; union_route only ever weakens
    named = {
        n: union_route(r, 2, alpha=alpha) if r.verdict == "refuted" else r for n, r in named.items()
    }
    if {permuted.verdict, question.verdict} == {"supported"}:
        verdict = "supported"
    elif any(r.verdict == "refuted" for r in named.values()):
        verdict = "refuted"
    else:
        verdict = "inconclusive"

    def p_sesoi(name: str) -> float:
        r = named[name]
        return pvalue_or_one(r.p_sesoi_corrected if r.p_sesoi_corrected is not None else r.p_sesoi)

    if verdict == "refuted":
        shown = (
            "question positions"
            if named["question positions"].verdict == "refuted"
            else "permuted labels"
        )
    else:
        candidates = [n for n, r in named.items() if r.verdict != "supported"] or list(named)
        shown = max(reversed(candidates), key=p_sesoi)  # ties: the question baseline
    reason = (
        f"{verdict}: at {site}; minus permuted labels: {named['permuted labels'].verdict_reason}; "
        f"minus question positions: {named['question positions'].verdict_reason}"
    )
    base = named[shown]
    return replace(
        base,
        verdict=verdict,  # type: ignore[arg-type]
        verdict_reason=reason,
        method=(
            f"probe accuracy at {site} minus the {shown} probe (shown: it decides); {base.method}"
        ),
    )


def _probe_cell(
    grid: ProbeGrid, k: int, thought: int, site: str, m: int, alpha: float
) -> dict[str, StatResult]:
    """One cell's two baseline differences at its chosen site, best of ``m`` probed sites.

    Computed at ``alpha / m`` and Bonferroni-adjusted (:func:`_bonferroni`), so each
    result's CI is at the level its adjusted p is judged at; not yet Holm-corrected.
    """
    effects = probe_effects(grid, k - 1, f"t{thought}", site, sesoi=SESOI_RATE, alpha=alpha / m)
    out = {}
    for key in ("minus_permuted", "minus_question"):
        result = effects[key]
        if result.sesoi is None or math.isnan(result.statistic):
            out[key] = inconclusive_verdict(
                f"inconclusive: fewer than 20 problems have a step {k} (a probe needs >= 20)",
                effects["accuracy"].n,
            )
        else:
            out[key] = _bonferroni(result, m)
    return out


def rq3_stats(view: StudyView) -> Rq3Stats:
    """Lens rates and claims, probes and claims, the CODI-paper rates and the RQ1 link."""
    return view.memoised(("rq3_stats",), lambda: _rq3_stats(view))


def _rq3_stats(view: StudyView) -> Rq3Stats:
    r = view.results.readouts
    alpha, n_t = view.alpha, view.n_thoughts
    n_layers = int(str(view.results.meta["n_layers"]))
    sites = ("emb", *(f"L{b}" for b in range(n_layers)))
    ranks, tokens, values = r["lens-rank"], r["lens-tokens"], r["step-values"]
    n_cols = tokens.shape[1] - 1  # step columns (the last is the answer)
    steps = [k for k in view.steps if k <= n_cols]
    _, base, _, _ = lens_rate_table(ranks, tokens, values)
    k_n = len(view.steps)
    lens_emb = np.full((k_n, n_t), np.nan)
    lens_site = np.full((k_n, len(sites)), np.nan)
    lens_step: dict[int, StatResult] = {}
    lens_grid: dict[tuple[int, int], StatResult] = {}
    best_site: dict[int, int] = {}
    for i, k in enumerate(view.steps):
        if k not in steps:
            lens_step[k] = inconclusive_verdict(f"inconclusive: no problem has a step {k}")
            for t in range(n_t):
                lens_grid[(k, t)] = lens_step[k]
            continue
        col = k - 1
        cells = {}
        for t in range(n_t):
            for s in range(len(sites)):
                cells[(t, s)] = lens_rate(
                    ranks[:, 2 + t, s, col], tokens[:, col], sesoi=SESOI_RATE, alpha=alpha
                )
            lens_emb[i, t] = cells[(t, 0)].rate
            lens_grid[(k, t)] = cells[(t, 0)].result
        for s in range(len(sites)):
            lens_site[i, s] = max(cells[(t, s)].rate for t in range(n_t))
        best = max(cells, key=lambda c: cells[c].rate)
        best_site[k] = best[1]
        m = len(cells)
        # the CI of the chosen cell at the Bonferroni level, so the verdict's CI matches its p
        chosen = lens_rate(
            ranks[:, 2 + best[0], best[1], col],
            tokens[:, col],
            sesoi=SESOI_RATE,
            alpha=alpha / m,
        ).result
        p_eq = max(pvalue_or_one(c.result.p_equivalence) for c in cells.values())
        lens_step[k] = replace(
            _bonferroni(chosen, m),
            p_equivalence=p_eq,
            ci_level=chosen.ci_level,
            method=(
                f"thought {best[0]} at {sites[best[1]]}, best of {m} cells (Bonferroni x{m}; "
                f"refuted only when every cell is: max p_equivalence); {chosen.method}"
            ),
        )
    lens_step = _holm(lens_step, alpha)  # type: ignore[assignment,arg-type]
    lens_grid = _holm(lens_grid, alpha)  # type: ignore[assignment,arg-type]
    decoded = {k: best_site[k] for k in steps if lens_step[k].verdict == "supported"}
    link, link_reason = _link(view, ranks, tokens, decoded)
    return Rq3Stats(
        sites=sites,
        baseline=base,
        lens_embedding=lens_emb,
        lens_by_site=lens_site,
        lens_step=lens_step,
        lens_grid=lens_grid,
        codi_paper=_codi_paper(ranks, tokens, n_t, len(sites), view.steps),
        link=link,
        link_reason=link_reason,
    )


def _probes(
    view: StudyView, steps: list[int], positions: tuple[str, ...], n_layers: int
) -> tuple[
    dict[tuple[int, int], StatResult],
    dict[tuple[int, int], str],
    np.ndarray,
    np.ndarray,
    tuple[str, ...],
    np.ndarray,
    np.ndarray,
    dict[tuple[int, int], dict[str, dict[str, object]]],
]:
    r = view.results.readouts
    names = ["positions-embedding"] + [
        f"positions-block{b}" for b in range(n_layers) if f"positions-block{b}" in r
    ]
    probe_sites = tuple("emb" if n.endswith("embedding") else "L" + n[15:] for n in names)
    n_t, k_n = view.n_thoughts, len(view.steps)
    acc = np.full((k_n, n_t), np.nan)
    sel = np.full((k_n, n_t), np.nan)
    perm_cells: dict[tuple[int, int], StatResult] = {}
    quest_cells: dict[tuple[int, int], StatResult] = {}
    layer: dict[tuple[int, int], str] = {}
    values = r["step-values"]
    hidden = np.stack([r[n].astype(np.float32) for n in names], axis=2)  # (N, P, S, d)
    grid = probe_grid(
        hidden,
        values,
        positions,
        probe_sites,
        targets=[k - 1 for k in steps],
        seed=view.seed,
        permuted=False,  # only at each cell's chosen layer, below
        max_iter=PROBE_MAX_ITER,
        tol=PROBE_TOL,
    )
    m = len(probe_sites)
    by_bin: dict[tuple[int, int], dict[str, dict[str, object]]] = {}
    by_site = np.full((k_n, n_t, m), np.nan)
    question = np.full((k_n, m), np.nan)
    for i, k in enumerate(view.steps):
        for t in range(n_t):
            if k not in steps:
                perm_cells[(k, t)] = quest_cells[(k, t)] = inconclusive_verdict(
                    f"inconclusive: no problem has a step {k}"
                )
                continue
            effects = {
                s: probe_effects(grid, k - 1, f"t{t}", s, sesoi=SESOI_RATE, alpha=view.alpha)
                for s in probe_sites
            }
            for j, s in enumerate(probe_sites):
                by_site[i, t, j] = effects[s]["accuracy"].statistic
                question[i, j] = by_site[i, t, j] - effects[s]["minus_question"].statistic
            best = max(
                probe_sites,
                key=lambda s: (
                    -1.0
                    if math.isnan(effects[s]["accuracy"].statistic)
                    else effects[s]["accuracy"].statistic
                ),
            )
            _permuted_cell(grid, hidden, values, k - 1, 2 + t, probe_sites.index(best), view.seed)
            effects[best] = probe_effects(
                grid, k - 1, f"t{t}", best, sesoi=SESOI_RATE, alpha=view.alpha
            )
            chosen = effects[best]
            by_bin[(k, t)] = _probe_by_bin(grid, k, t, best, view)
            layer[(k, t)] = best
            acc[i, t] = chosen["accuracy"].statistic
            sel[i, t] = chosen["minus_question"].statistic
            judged = _probe_cell(grid, k, t, best, m, view.alpha)
            perm_cells[(k, t)] = judged["minus_permuted"]
            quest_cells[(k, t)] = judged["minus_question"]
    perm_cells = _holm(perm_cells, view.alpha)  # type: ignore[assignment,arg-type]
    quest_cells = _holm(quest_cells, view.alpha)  # type: ignore[assignment,arg-type]
    probe = {
        key: (
            quest_cells[key]
            if quest_cells[key].inconclusive
            else _combine(perm_cells[key], quest_cells[key], layer.get(key, "?"), view.alpha)
        )
        for key in quest_cells
    }
    return probe, layer, acc, sel, probe_sites, by_site, question, by_bin


def _probe_by_bin(
    grid: ProbeGrid, k: int, thought: int, site: str, view: StudyView
) -> dict[str, dict[str, object]]:
    """One cell's probe (at its chosen site) on each difficulty bin's problems.

    Step k is the answer of a k-step problem and an intermediate of a longer one, so the
    two are reported apart. Descriptive: no verdict, CIs unadjusted.
    """
    difficulty = np.asarray(view.results.difficulty)
    out: dict[str, dict[str, object]] = {}
    for label in sorted(set(difficulty.tolist())):
        rows = difficulty == label
        lead = re.match(r"\d+", label)
        role = "" if lead is None else "answer" if int(lead.group()) == k else "intermediate"
        if lead is not None and int(lead.group()) < k:
            continue  # no step k
        eff = probe_effects(grid, k - 1, f"t{thought}", site, rows=rows, sesoi=SESOI_RATE)
        if not eff["accuracy"].n:
            continue  # the cell was not probed (too few problems)
        out[label] = {
            "role": role,
            "n": eff["accuracy"].n,
            "accuracy": _finite(eff["accuracy"].statistic),
            **{
                key: [_finite(r.statistic), _finite(r.ci_low), _finite(r.ci_high)]
                for key, r in (
                    ("minus_permuted", eff["minus_permuted"]),
                    ("minus_question", eff["minus_question"]),
                )
            },
        }
    return out


def _finite(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def _permuted_cell(
    grid: ProbeGrid,
    hidden: np.ndarray,
    values: np.ndarray,
    col: int,
    position: int,
    site: int,
    seed: int,
) -> None:
    """Fill the permuted-label baseline of one probe cell (in place)."""
    rows = np.flatnonzero(np.isfinite(values[:, col]))
    if rows.size < 20:
        return
    _, labels = np.unique(values[rows, col], return_inverse=True)
    grid.permuted[col, position, site, rows] = cv_probe(
        hidden[rows, position, site],
        labels,
        seed=seed,
        permute=True,
        max_iter=PROBE_MAX_ITER,
        tol=PROBE_TOL,
    )


def _codi_paper(
    ranks: np.ndarray, tokens: np.ndarray, n_t: int, n_sites: int, steps: Sequence[int]
) -> dict[str, object]:
    """The CODI paper's form: share of problems whose k-th step value is decoded (it reports 1-3).

    Decoded = the value's first token is among the lens top-1 (top-5) of *some* thought's
    last-block output (what the paper decodes: the continuous thought through the LM head).
    Per step, over the problems that have that step.
    """
    out: dict[str, object] = {"site": "last block output, any thought"}
    last = n_sites - 1
    for k in steps:
        col = k - 1
        if col >= tokens.shape[1] - 1:
            continue
        has = tokens[:, col] >= 0
        if not has.any():
            continue
        rk = ranks[has, 2 : 2 + n_t, last, col]
        out[f"step{k}"] = {
            "n": int(has.sum()),
            "top1": float((rk == 0).any(axis=1).mean()),
            "top5": float(((rk >= 0) & (rk < 5)).any(axis=1).mean()),
        }
    return out


def _link(
    view: StudyView, ranks: np.ndarray, tokens: np.ndarray, steps: dict[int, int]
) -> tuple[LinkResult | None, str]:
    """RQ1 link over the steps the lens decodes, each at the site where it decodes best."""
    n_t = view.n_thoughts
    if not steps:
        return None, (
            "inconclusive: no step's value is decodable by the logit lens (no step's lens "
            "claim is supported), so no thought 'best encodes' a step"
        )
    dec = np.full((ranks.shape[0], len(steps), n_t), np.nan)
    for i, (k, site) in enumerate(steps.items()):
        has = tokens[:, k - 1] >= 0
        dec[has, i] = (ranks[has, 2 : 2 + n_t, site, k - 1] == 0).astype(np.float64)
    imp = view.importance()  # its kind is validated against the run's kinds at start-up
    keep = np.isfinite(imp).all(axis=1) & np.isfinite(dec).any(axis=(1, 2))
    if keep.sum() < 5:
        return None, "inconclusive: fewer than 5 usable problems"
    try:
        link = rq1_link_test(dec[keep], imp[keep], alpha=view.alpha, seed=view.seed, n_boot=999)
    except DegenerateData as err:
        return None, f"inconclusive: {err}"
    return link, ""


# --- claims --------------------------------------------------------------------------------------
def _skip_or(view: StudyView, get: object) -> StatResult:
    reason = no_step_values_reason(view)
    if reason is not None:  # n = every problem: the claim names this reason, not "too few"
        return inconclusive_verdict(reason, len(view.results.problem_ids))
    assert callable(get)
    result = get(rq3_stats(view))
    assert isinstance(result, StatResult)
    return result


def lens_decodes_step(view: StudyView, step: int) -> Evidence:
    """Step k's value is decodable by the logit lens from some thought (beyond the baseline)."""
    return Evidence(
        f"step {step}'s value is decodable from some thought (logit lens)",
        _skip_or(view, lambda s: s.lens_step[step]),
        {"step": step, "measure": "lens top-1 rate minus the value-distribution baseline"},
        ("rq3-lens", lambda: lens_heatmap(view)),
    )


def decodable_at(view: StudyView, step: int, thought: int) -> Evidence:
    """The logit lens reads step k's value at thought t's input embedding (beyond baseline)."""
    return Evidence(
        f"thought {thought}'s input embedding holds step {step}'s value (logit lens)",
        _skip_or(view, lambda s: s.lens_grid[(step, thought)]),
        {
            "step": step,
            "thought": thought,
            "site": "input embedding",
            "measure": "lens top-1 rate minus the value-distribution baseline",
        },
        ("rq3-lens", lambda: lens_heatmap(view)),
    )


def probe_decodes_step(view: StudyView, step: int, thought: int) -> Evidence:
    """A linear probe reads step k's value at thought t beyond both baselines."""
    return Evidence(
        f"a probe reads step {step}'s value at thought {thought} beyond both baselines",
        _skip_or(view, lambda s: rq3_probes(view).cells[(step, thought)]),
        {
            "step": step,
            "thought": thought,
            "measure": "probe accuracy minus the baseline that decides (the question-position "
            "probe or permuted labels, named in the method; best probed layer)",
        },
        ("rq3-probe", lambda: probe_heatmap(view)),
    )


def link_to_importance(view: StudyView) -> Evidence:
    """The thoughts that best encode the steps rank above average in RQ1 importance."""

    def get(s: Rq3Stats) -> StatResult:
        return s.link.result if s.link is not None else inconclusive_verdict(s.link_reason)

    return Evidence(
        "the thoughts that best encode the steps rank above the average thought in RQ1 "
        "importance (mean rank, beyond the SESOI)",
        _skip_or(view, get),
        {
            "measure": "(T+1)/2 minus the mean RQ1 importance rank of each step's best thought "
            "(thoughts ranked by the 20% trimmed mean of delta log p, as in RQ1)"
        },
        ("rq3-lens", lambda: lens_heatmap(view)),
    )


# --- figures -------------------------------------------------------------------------------------
def _heatmap(values: np.ndarray, title: str, label: str, vmin: float, vmax: float) -> Figure:
    fig = Figure(figsize=(6.4, 2.8), layout="constrained")
    ax = fig.subplots()
    signed = vmin < 0 < vmax  # a difference: diverging, centred on 0
    im = ax.imshow(
        values,
        cmap=_diverging_cmap() if signed else "viridis",
        norm=TwoSlopeNorm(0.0, vmin, vmax) if signed else Normalize(vmin, vmax),
        aspect="auto",
    )
    ax.set_xticks(range(values.shape[1]))
    ax.set_yticks(range(values.shape[0]), [f"step {k}" for k in range(1, values.shape[0] + 1)])
    ax.set_xlabel("thought t (0-based)")
    ax.set_title(title)
    label_cells(ax, im, cell_text(values), fontsize=9)
    fig.colorbar(im, ax=ax, label=label)
    return fig


def lens_heatmap(view: StudyView) -> Figure:
    """Step x thought: lens top-1 rate at the input embedding."""
    s = rq3_stats(view)
    return _heatmap(s.lens_embedding, "logit lens at the input embedding", "top-1 rate", 0, 1)


def probe_heatmap(view: StudyView) -> Figure:
    """Step x thought: probe accuracy minus the question-position baseline."""
    return _heatmap(
        rq3_probes(view).selectivity,
        "probe selectivity (best layer)",
        "accuracy - question probe",
        -1,
        1,
    )


def probe_by_layer(view: StudyView) -> Figure:
    """Per-layer curves: the best thought's probe accuracy per step, and the question's."""
    p = rq3_probes(view)
    fig = Figure(figsize=(6.4, 3.2), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(p.sites))
    for i, k in enumerate(view.steps):
        curve = p.by_site[i]
        if not np.isfinite(curve).any():
            continue
        (line,) = ax.plot(x, np.nanmax(curve, axis=0), marker="o", label=f"step {k}")
        ax.plot(x, p.question_by_site[i], ls=":", color=line.get_color(), lw=1)
    ax.set_xticks(x, p.sites)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("site (input embedding, then block outputs probed)")
    ax.set_ylabel("probe accuracy (best thought)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title="dotted: probe at the question", fontsize="small")
    else:
        _no_data(ax)
    return fig


def lens_by_layer(view: StudyView) -> Figure:
    """Per-layer curves: the best thought's lens rate per step, with the baseline."""
    s = rq3_stats(view)
    fig = Figure(figsize=(6.4, 3.2), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(s.sites))
    for i, k in enumerate(view.steps):
        (line,) = ax.plot(x, s.lens_by_site[i], marker="o", label=f"step {k}")
        if i < s.baseline.size and np.isfinite(s.baseline[i]):
            ax.axhline(s.baseline[i], color=line.get_color(), ls=":", lw=1)
    ax.set_xticks(x, s.sites)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("site (input embedding, then block outputs)")
    ax.set_ylabel("lens top-1 rate (best thought)")
    ax.legend(title="dotted: value baseline", fontsize="small")
    return fig
