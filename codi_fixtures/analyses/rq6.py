"""RQ6: which attention edges carry the thoughts to the answer? Attention knockout.

Requirements: for every layer L and thought t, the edge from the ``<eot>`` and answer queries to
thought t's key blocked at L alone (and at every layer at once); the same with only the
``<eot>`` query blocked (a reported variant); with ``--knockout-heads``, each (layer, head)
on its own. Effects are Δ log p(gold) per problem (clean − knocked out).

Statistics: the knockout effect per (layer, thought), Holm over the whole grid; the causal RQ2,
"at layer L, the attention weight on a thought predicts the knockout effect of that edge", with
RQ2's decomposed tests (:func:`codi_fixtures.stats.rq2_tests`, Holm across the layers); and RQ2's
attention–importance tests at every layer (Holm across all layers), beside the layer × thought
mean attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from codi_fixtures.analyses.base import Evidence, FigureSpec
from codi_fixtures.analyses.plotting import (
    ATTENTION_LABEL,
    LOGP_LABEL,
    OKABE_ITO,
    _colours,
    _diverging_cmap,
    _scatter_by_thought,
    _symmetric_limit,
    _thought_legend,
    _zero_line,
    cell_text,
    label_cells,
)
from codi_fixtures.analyses.view import StudyView, guarded
from codi_fixtures.config import Settings
from codi_fixtures.stats import (
    Rq2Tests,
    StatResult,
    apply_holm_verdicts,
    holm_rq2,
    mean_effect,
)
from codi_fixtures.study.conditions import (
    Ablation,
    AttentionReadout,
    Dimensions,
    Knockout,
    Requirements,
    parse_site,
)

__all__ = [
    "Rq6",
    "Rq6Grid",
    "attention_heatmap",
    "causal_attention_claim",
    "causal_rq2",
    "every_layer_rq2",
    "knockout_claim",
    "knockout_grid",
    "knockout_heatmap",
    "knockout_vs_attention",
    "layer_sweep",
]

LayerKey = int | str  # a layer index, or "all"


class Rq6:
    """The RQ6 analysis: knockout of each (layer, thought) edge; attention at every layer."""

    name = "rq6"

    def requirements(self, settings: Settings, dims: Dimensions) -> Requirements:
        """Knockouts (answer and ``<eot>``-only queries), the importance ablations, attention."""
        n_l, n_t = dims.n_layers, dims.n_thoughts
        conditions: list[object] = []
        for queries in ("answer", "eot"):
            conditions += [
                Knockout((t,), (layer,), queries) for layer in range(n_l) for t in range(n_t)
            ]
            conditions += [Knockout((t,), None, queries) for t in range(n_t)]
        if settings.knockout_heads:
            if dims.n_heads is None:
                raise ValueError("--knockout-heads needs the model's number of heads")
            conditions += [
                Knockout((t,), (layer,), "answer", head=h)
                for layer in range(n_l)
                for h in range(dims.n_heads)
                for t in range(n_t)
            ]
        site = parse_site(settings.run.site, n_l)
        kind = settings.importance_kind
        conditions += [Ablation((t,), kind, site) for t in range(n_t)]  # type: ignore[arg-type]
        return Requirements(conditions=tuple(conditions), readouts=(AttentionReadout(),))  # type: ignore[arg-type]

    def compute(self, view: StudyView) -> StudyView:
        """The statistics are functions of the view (memoised there)."""
        return view

    def figures(self, view: StudyView) -> list[FigureSpec]:
        """Knockout heatmap, knockout vs attention, every-layer RQ2, mean attention."""
        if not has_knockouts(view):
            return []
        return [
            FigureSpec(
                "RQ6: knockout effect per layer and thought",
                "rq6_knockout_heatmap",
                partial(knockout_heatmap, view),
                "one cell per (layer, thought): 20% trimmed mean Δ log p(gold) over problems "
                "when that thought's key is hidden from the <eot> + answer queries (left) or "
                "<eot> only (right); * supported after Holm over the grid",
            ),
            FigureSpec(
                "RQ6: knockout effect vs attention, per layer",
                "rq6_knockout_vs_attention",
                partial(knockout_vs_attention, view),
                "one point per problem x thought: head-mean attention from <eot> at that layer "
                "vs the knockout effect of that edge at that layer",
            ),
            FigureSpec(
                "RQ6: RQ2's tests at every layer",
                "rq6_every_layer_rq2",
                partial(layer_sweep, view),
                f"one point per layer: r ({view.ci_percent} jackknife CI) of "
                "attention vs ablation importance "
                "and vs knockout effect; * supported after Holm across all layers",
            ),
            FigureSpec(
                "RQ6: mean attention from <eot> per layer and thought",
                "rq6_attention_heatmap",
                partial(attention_heatmap, view),
                "one cell per (layer, thought): attention from <eot>, mean over problems and heads",
            ),
        ]

    def left_out(self, settings: Settings) -> list[str]:
        """What these settings switch off (the report lists it)."""
        if settings.knockout_heads:
            return []
        return ["RQ6 per-head knockouts (--knockout-heads runs them)"]

    def summary(self, view: StudyView) -> dict[str, object]:
        """Numbers for ``summary_statistics.json`` (under ``analyses.rq6``)."""
        out: dict[str, object] = {}
        if not has_knockouts(view):
            return out
        for queries in ("answer", "eot"):
            grid = knockout_grid(view, queries)
            out[f"knockout_{queries}"] = {
                _key(layer): [_num(r) for r in row] for layer, row in grid.logp.items()
            }
            out[f"knockout_{queries}_accuracy"] = {
                _key(layer): row.tolist() for layer, row in grid.accuracy.items()
            }
        out["attention_predicts_knockout"] = {
            f"L{layer}": {q: _num(getattr(t, q)) for q in Rq2Tests.QUESTIONS}
            for layer, t in causal_rq2(view).items()
        }
        out["rq2_every_layer"] = {
            f"L{layer}": {q: _num(getattr(t, q)) for q in Rq2Tests.QUESTIONS}
            for layer, t in every_layer_rq2(view).items()
        }
        out["mean_attention_layer_x_thought"] = _mean_attention(view).tolist()
        heads = head_effects(view)
        if heads is not None:
            out["knockout_heads_mean_effect"] = heads.tolist()  # (L, H, T)
        return out


def has_knockouts(a: StudyView) -> bool:
    """True when the study ran RQ6's knockout grid."""
    return Knockout((0,), None, "answer").name in a.results.conditions


def _key(layer: LayerKey) -> str:
    return f"L{layer}"


def _num(r: StatResult) -> dict[str, object]:
    return {
        "statistic": r.statistic,
        "ci": [r.ci_low, r.ci_high],
        "p": r.p_value,
        "p_holm": r.p_corrected,
        "n": r.n,
        "verdict": r.verdict,
    }


# --- statistics --------------------------------------------------------------------------------
def _n_layers(a: StudyView) -> int:
    return int(str(a.results.meta["n_layers"]))


def _column(a: StudyView, thought: int, layer: LayerKey, queries: str) -> int:
    layers = None if layer == "all" else (int(layer),)
    return a.results.column(Knockout((thought,), layers, queries).name)  # type: ignore[arg-type]


def knockout_effect(a: StudyView, layer: LayerKey, queries: str = "answer") -> np.ndarray:
    """(N, T) Δ log p(gold) of knocking out each thought's edge at ``layer`` (NaN: non-finite)."""
    cols = [_column(a, t, layer, queries) for t in range(a.n_thoughts)]
    values = a.results.delta_logp[:, cols].astype(np.float64)
    values[~a.finite_rows(cols)] = np.nan
    return values


@dataclass(frozen=True)
class Rq6Grid:
    """Knockout effects per layer (and ``"all"``) and thought, Holm over the whole grid."""

    queries: str
    logp: dict[LayerKey, list[StatResult]]
    accuracy: dict[LayerKey, np.ndarray]  # (T,) accuracy drop (clean − knocked out)


def knockout_grid(a: StudyView, queries: str = "answer") -> Rq6Grid:
    """20% trimmed mean Δ log p per (layer, thought) and verdict; Holm over (layers + all) x T."""

    def compute() -> Rq6Grid:
        layers: list[LayerKey] = [*range(_n_layers(a)), "all"]
        flat, accuracy = [], {}
        for layer in layers:
            effect = knockout_effect(a, layer, queries)
            cols = [_column(a, t, layer, queries) for t in range(a.n_thoughts)]
            accuracy[layer] = (
                a.results.clean_correct[:, None].astype(float) - a.results.correct[:, cols]
            ).mean(axis=0)
            for t in range(a.n_thoughts):
                x = effect[:, t]
                x = x[np.isfinite(x)]
                flat.append(guarded(partial(_mean, a, x), len(x), "greater"))
        flat = apply_holm_verdicts(flat, alpha=a.alpha)
        n_t = a.n_thoughts
        logp = {layer: flat[i * n_t : (i + 1) * n_t] for i, layer in enumerate(layers)}
        return Rq6Grid(queries, logp, accuracy)

    return a.memoised(("rq6", "grid", queries), compute)


def _mean(a: StudyView, x: np.ndarray) -> StatResult:
    return mean_effect(x, sesoi=a.sesoi_logp, alpha=a.alpha, seed=a.seed, n_boot=a.n_boot)


def _rq2_family(a: StudyView, target: str) -> dict[int, Rq2Tests]:
    layers = list(range(_n_layers(a)))
    imp = a.importance() if target == "importance" else None
    tests = []
    for layer in layers:
        y = imp if imp is not None else knockout_effect(a, layer, "answer")
        rows = ~np.isnan(y).any(axis=1)
        what = "importance" if imp is not None else "the knockout effect"
        tests.append(a.rq2_tests(a.attention(layer)[rows], y[rows], what))
    return dict(zip(layers, holm_rq2(tests, alpha=a.alpha), strict=True))


def causal_rq2(a: StudyView) -> dict[int, Rq2Tests]:
    """Per layer: does attention on a thought predict the knockout effect of that edge there?"""
    return a.memoised(("rq6", "causal"), lambda: _rq2_family(a, "knockout"))


def every_layer_rq2(a: StudyView) -> dict[int, Rq2Tests]:
    """RQ2 (attention vs ablation importance) at every layer, Holm across all layers."""
    return a.memoised(("rq6", "sweep"), lambda: _rq2_family(a, "importance"))


def _mean_attention(a: StudyView) -> np.ndarray:
    """(L, T) attention from <eot> to each thought, mean over problems and heads."""
    return a.results.attention.mean(axis=(0, 2)).astype(np.float64)


def head_effects(a: StudyView) -> np.ndarray | None:
    """(L, H, T) mean Δ log p of each per-head knockout, or None when not run."""
    n_l, n_t = _n_layers(a), a.n_thoughts
    n_h = int(a.results.attention.shape[2]) if a.results.attention.ndim == 4 else 0
    if not n_h or Knockout((0,), (0,), "answer", head=0).name not in a.results.conditions:
        return None
    out = np.full((n_l, n_h, n_t), np.nan)
    delta = a.results.delta_logp
    for layer in range(n_l):
        for h in range(n_h):
            for t in range(n_t):
                col = a.results.column(Knockout((t,), (layer,), "answer", head=h).name)
                out[layer, h, t] = np.nanmean(delta[:, col])
    return out


# --- figures ------------------------------------------------------------------------------------
def knockout_heatmap(a: StudyView) -> Figure:
    """Layer (and all layers) x thought trimmed-mean knockout effect: answer queries, <eot> only."""
    fig = Figure(figsize=(10.0, 4.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    grids = [knockout_grid(a, q) for q in ("answer", "eot")]
    values = [np.array([[r.statistic for r in row] for row in g.logp.values()]) for g in grids]
    limit = max(_symmetric_limit(v) for v in values)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)
    for ax, grid, value in zip(axes, grids, values, strict=True):
        image = ax.imshow(
            np.ma.masked_invalid(value),
            origin="lower",
            aspect="auto",
            cmap=_diverging_cmap(),
            norm=norm,
        )
        labels = np.array(
            [
                [f"{r.statistic:.2f}{'*' if r.verdict == 'supported' else ''}" for r in row]
                for row in grid.logp.values()
            ],
            dtype=object,
        )
        label_cells(ax, image, labels)
        ax.set_xticks(range(a.n_thoughts), [f"t{t}" for t in range(a.n_thoughts)])
        ax.set_yticks(range(len(grid.logp)), [_key(k) for k in grid.logp])
        title = "<eot> + answer queries" if grid.queries == "answer" else "<eot> query only"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("thought whose edge is blocked")
    axes[0].set_ylabel("layer where it is blocked")
    bar = fig.colorbar(image, ax=list(axes), shrink=0.85)
    bar.set_label(f"20% trimmed mean {LOGP_LABEL}")  # the statistic each verdict reads
    fig.suptitle("RQ6: attention knockout (* supported after Holm over the grid)", fontsize=11)
    return fig


def knockout_vs_attention(a: StudyView) -> Figure:
    """Per layer: attention to a thought vs the knockout effect of that edge, one point each."""
    n_l = _n_layers(a)
    ncols = min(3, n_l)
    nrows = math.ceil(n_l / ncols)
    colours = _colours(a.n_thoughts)
    fig = Figure(figsize=(3.6 * ncols + 0.6, 3.0 * nrows + 1.0), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    tests = causal_rq2(a)
    for layer, ax in enumerate(axes):
        if layer >= n_l:
            ax.remove()
            continue
        y = knockout_effect(a, layer)
        keep = ~np.isnan(y).any(axis=1)
        _scatter_by_thought(ax, a.attention(layer)[keep], y[keep], colours)
        beyond = tests[layer].beyond_position
        if beyond.inconclusive:  # not judged: say why in a few words (the reason's head)
            why = beyond.method.removeprefix("inconclusive: ").split(":")[0]
            title = f"L{layer}: not judged ({why})"
        else:
            title = f"L{layer}: beyond-position r={beyond.statistic:.2f} ({beyond.verdict})"
        ax.set_title(title, fontsize=9)
    fig.supxlabel(ATTENTION_LABEL, fontsize=10)
    fig.supylabel(f"knockout {LOGP_LABEL}", fontsize=10)
    _thought_legend(fig, a.n_thoughts, colours)
    return fig


def layer_sweep(a: StudyView) -> Figure:
    """Per layer, r with its (1 - 2 alpha) CI: RQ2 against importance and the knockout effect."""
    fig = Figure(figsize=(9.0, 3.9), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, test in zip(axes, ("position", "beyond_position"), strict=True):
        for dx, colour, (label, family) in zip(
            (-0.12, 0.12),
            OKABE_ITO[:2],
            (("ablation importance", every_layer_rq2(a)), ("knockout effect", causal_rq2(a))),
            strict=True,
        ):
            layers = sorted(family)
            res = [getattr(family[layer], test) for layer in layers]
            x = np.array(layers, dtype=float) + dx
            stat = np.array([r.statistic for r in res])
            low = np.array([r.ci_low for r in res])
            high = np.array([r.ci_high for r in res])
            ax.errorbar(
                x,
                stat,
                yerr=np.vstack([np.clip(stat - low, 0, None), np.clip(high - stat, 0, None)]),
                fmt="o",
                color=colour,
                capsize=3,
                label=label,
            )
            for xi, r in zip(x, res, strict=True):
                if r.verdict == "supported":
                    ax.annotate("*", (xi, r.ci_high), ha="center", va="bottom", color=colour)
        ax.axhline(a.sesoi_r, color="0.5", linestyle=":", linewidth=1)
        _zero_line(ax)
        ax.set_xlabel("layer")
        ax.set_title(test.replace("_", " "), fontsize=10)
    axes[0].set_ylabel(f"r ({a.ci_percent} CI)")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        "RQ2 at every layer: attention vs importance and vs knockout effect "
        "(* supported, Holm across layers)",
        fontsize=10,
    )
    return fig


def attention_heatmap(a: StudyView) -> Figure:
    """Layer x thought mean attention from <eot>."""
    values = _mean_attention(a)
    fig = Figure(figsize=(5.6, 4.2), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(values, origin="lower", aspect="auto", cmap="viridis")
    label_cells(ax, image, cell_text(values))
    ax.set_xticks(range(a.n_thoughts), [f"t{t}" for t in range(a.n_thoughts)])
    ax.set_yticks(range(values.shape[0]), [f"L{x}" for x in range(values.shape[0])])
    fig.colorbar(image, ax=ax).set_label("mean attention (problems, heads)")
    ax.set_title("Attention from <eot> to each thought", fontsize=10)
    return fig


# --- claims (experiments/test_rq6_knockout.py) ------------------------------------------------
def knockout_claim(a: StudyView, thought: int, layer: LayerKey) -> Evidence:
    """Blocking the <eot>+answer queries' edge to ``thought`` at ``layer`` lowers log p(gold)."""
    where = "every layer" if layer == "all" else f"layer {layer}"
    return Evidence(
        f"blocking the answer's attention to thought {thought} at {where} lowers log p(gold)",
        knockout_grid(a, "answer").logp[layer][thought],
        {
            "thought": thought,
            "layer": str(layer),
            "queries": "<eot> + answer",
            "family": "Holm over layers x thoughts",
        },
        ("rq6-knockout-heatmap", lambda: knockout_heatmap(a)),
    )


def causal_attention_claim(a: StudyView, layer: int, test: str) -> Evidence:
    """At ``layer``, attention on a thought predicts the knockout effect of that edge."""
    word = {"position": "position-level", "beyond_position": "beyond-position"}[test]
    return Evidence(
        f"layer L{layer}: the <eot> query's attention to a thought predicts the effect of "
        f"blocking the <eot> and answer queries' edge to it ({word} r > SESOI)",
        getattr(causal_rq2(a)[layer], test),
        {"layer": layer, "test": test, "family": "Holm across layers"},
        ("rq6-knockout-vs-attention", lambda: knockout_vs_attention(a)),
    )
