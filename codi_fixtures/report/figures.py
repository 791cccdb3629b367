"""Figures of the study, built from a :class:`StudyAnalysis` (PNG for the report, PDF for print).

Every function is pure: it takes the analysis and returns a new
``matplotlib.figure.Figure`` built with the object-oriented API (never pyplot),
so there is no global state and figures can be built in parallel. Thoughts are
numbered 0-based ("thought t" is sequence position ``Q+1+t``, DESIGN.md) and
importance is ``delta log p`` of the gold answer, clean minus ablated. Colours
come from the colour-blind-safe Okabe-Ito palette.

Statistics that the data cannot support (too few finite problems, a single
thought for a within-problem test) are drawn as "n/a" rather than raising, so a
degenerate study still produces every figure.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Colormap, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from matplotlib.typing import ColorType

from codi_fixtures.analyses import Rq2Test, StudyAnalysis
from codi_fixtures.atomic import atomic_write_bytes
from codi_fixtures.stats import StatResult
from codi_fixtures.study.problems import DIFFICULTY_BINS

__all__ = [
    "OKABE_ITO",
    "attention_vs_importance",
    "head_correlation_map",
    "importance_by_thought",
    "importance_heatmap",
    "per_thought_correlations",
    "png_base64",
    "rq1_kind_bars",
    "rq2_layer_scatter",
    "save_figure",
]

OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
"""Okabe-Ito colour-blind-safe palette (blue, vermillion, green, purple, orange, sky, yellow)."""

PNG_DPI = 100
"""Resolution of the PNGs embedded in the HTML report (small files)."""

LOGP_LABEL = "Δ log p(gold) [nats]"
ACC_LABEL = "accuracy drop [percentage points]"
ATTENTION_LABEL = "attention weight from <eot> (head mean)"
_BAD_COLOUR = "#BBBBBB"  # NaN cells (excluded problems) in heatmaps
_DASHES = ("--", ":", "-.", (0, (6, 2, 1, 2, 1, 2)))
_RQ2_TEST_NAMES = {
    "position": "position level (r of the per-thought means)",
    "beyond_position": "beyond position (two-way demeaned r)",
    "pooled": "pooled Pearson (descriptive)",
}

_R = TypeVar("_R")


# --- saving ---------------------------------------------------------------------------------
def _render(fig: Figure, fmt: str) -> bytes:
    """The figure rendered to bytes in ``fmt`` (png at PNG_DPI, or pdf)."""
    buffer = io.BytesIO()
    if fmt == "png":
        fig.savefig(buffer, format="png", dpi=PNG_DPI, metadata={"Software": None})
    else:
        # No creation date, so that identical figures give identical files.
        fig.savefig(buffer, format=fmt, metadata={"CreationDate": None})
    return buffer.getvalue()


def save_figure(fig: Figure, directory: Path, name: str) -> dict[str, Path]:
    """Write ``name.png`` and ``name.pdf`` into ``directory`` atomically; return their paths."""
    if not name or Path(name).name != name or name in {".", ".."}:
        raise ValueError(f"figure name must be a plain file stem without '/', got {name!r}")
    paths = {fmt: Path(directory) / f"{name}.{fmt}" for fmt in ("png", "pdf")}
    for fmt, path in paths.items():
        atomic_write_bytes(path, _render(fig, fmt))
    return paths


def png_base64(fig: Figure) -> str:
    """Base64 of the figure's PNG bytes, for embedding in HTML."""
    return base64.b64encode(_render(fig, "png")).decode("ascii")


# --- small helpers --------------------------------------------------------------------------
def _attempt(compute: Callable[..., _R], *args: object) -> _R | None:
    """``compute(*args)``, or None when the data are too degenerate for the statistic."""
    try:
        return compute(*args)
    except ValueError:  # the stats module raises ValueError on too few finite problems
        return None


def _colours(n: int) -> list[ColorType]:
    """``n`` distinguishable colour-blind-safe colours (Okabe-Ito, viridis beyond eight)."""
    if n <= len(OKABE_ITO):
        return list(OKABE_ITO[:n])
    rgba = colormaps["viridis"](np.linspace(0.0, 0.95, n))
    return [(float(r), float(g), float(b), float(al)) for r, g, b, al in rgba]


def _zero_line(ax: Axes) -> None:
    """A thin grey reference line at y = 0, behind the data."""
    ax.axhline(0.0, color="0.55", linewidth=0.8, zorder=0)


def _fmt_r(value: float) -> str:
    """A correlation for a title; 'n/a' when nan."""
    return "n/a" if not math.isfinite(value) else f"{value:.2f}"


def _fmt_p(value: float | None) -> str:
    """A p-value for a title: three decimals, scientific below 0.001."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.0e}"


def _roles_of(a: StudyAnalysis, layer: int) -> list[str]:
    """Role names (early/middle/late) assigned to ``layer``."""
    return [role for role, lay in a.layers.as_dict().items() if lay == layer]


def _layer_label(a: StudyAnalysis, layer: int) -> str:
    """'L8 (middle)' for a role layer, 'L3' otherwise."""
    roles = _roles_of(a, layer)
    return f"L{layer} ({', '.join(roles)})" if roles else f"L{layer}"


def _thought_axis(ax: Axes, n_thoughts: int) -> None:
    """Integer ticks 0..T-1 and the 0-based thought label on the x axis."""
    ax.set_xticks(np.arange(n_thoughts))
    ax.set_xlim(-0.6, n_thoughts - 0.4)
    ax.set_xlabel("thought t (0-based)")


def _estimates(results: Sequence[StatResult], scale: float) -> tuple[np.ndarray, ...]:
    """(statistic, ci_low, ci_high) arrays, multiplied by ``scale``."""
    stat = np.array([r.statistic for r in results], dtype=np.float64) * scale
    low = np.array([r.ci_low for r in results], dtype=np.float64) * scale
    high = np.array([r.ci_high for r in results], dtype=np.float64) * scale
    return stat, low, high


def _yerr(stat: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Asymmetric error-bar lengths (2, n), never negative."""
    return np.vstack([np.clip(stat - low, 0.0, None), np.clip(high - stat, 0.0, None)])


def _draw_estimates(
    ax: Axes,
    x: np.ndarray,
    results: Sequence[StatResult],
    *,
    scale: float,
    colour: ColorType,
    bars: bool,
    width: float,
) -> np.ndarray:
    """Points or bars with CI whiskers; returns the top of each (for '*' marks), nan if none."""
    stat, low, high = _estimates(results, scale)
    has_ci = np.isfinite(stat) & np.isfinite(low) & np.isfinite(high)
    shown = np.isfinite(stat)
    if bars and shown.any():
        ax.bar(x[shown], stat[shown], width=width, color=colour, alpha=0.85, zorder=2)
    if has_ci.any():
        ax.errorbar(
            x[has_ci],
            stat[has_ci],
            yerr=_yerr(stat, low, high)[:, has_ci],
            fmt="none" if bars else "o",
            color="0.15" if bars else colour,
            ecolor="0.15" if bars else colour,
            capsize=3,
            linewidth=1.2,
            markersize=5,
            zorder=3,
        )
    no_ci = shown & ~has_ci
    if not bars and no_ci.any():
        ax.plot(x[no_ci], stat[no_ci], "o", color=colour, markersize=5, zorder=3)
    top = np.where(has_ci, np.fmax(high, stat), stat)
    return np.where(shown, np.fmax(top, 0.0), np.nan)


def _mark_significant(
    ax: Axes,
    x: np.ndarray,
    top: np.ndarray,
    results: Sequence[StatResult],
    alpha: float,
    colour: ColorType,
) -> None:
    """A '*' above each estimate whose Holm-corrected p is below ``alpha``."""
    for xi, yi, res in zip(x, top, results, strict=True):
        p = res.p_corrected
        if p is not None and p < alpha and math.isfinite(yi):
            ax.annotate(
                "*",
                (float(xi), float(yi)),
                xytext=(0, 1),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=13,
                fontweight="bold",
                color=colour,
            )


def _ensure_span(ax: Axes, min_span: float = 1e-9) -> None:
    """Widen a y range that collapsed around constant data (e.g. every value 0) to +-1."""
    low, high = ax.get_ylim()
    if high - low < min_span * max(1.0, abs(low), abs(high)):
        centre = (low + high) / 2.0
        ax.set_ylim(centre - 1.0, centre + 1.0)


def _dodge(n_series: int, width: float) -> np.ndarray:
    """X offsets that place ``n_series`` series side by side around each tick."""
    return (np.arange(n_series) - (n_series - 1) / 2.0) * width


def _complete_rows(a: StudyAnalysis) -> np.ndarray:
    """(N,) bool: problems whose importance is finite at every thought (the RQ2 sample)."""
    return ~np.isnan(a.importance()).any(axis=1)


def _thought_legend(fig: Figure, n_thoughts: int, colours: Sequence[ColorType]) -> None:
    """A figure legend 'thought t' for scatter colours, outside the panels on the right."""
    handles = [
        Line2D([], [], linestyle="none", marker="o", markersize=6, color=colours[t])
        for t in range(n_thoughts)
    ]
    fig.legend(
        handles,
        [f"thought {t}" for t in range(n_thoughts)],
        loc="outside right center",
        frameon=False,
        fontsize=9,
    )


def _scatter_by_thought(
    ax: Axes, attention: np.ndarray, importance: np.ndarray, colours: Sequence[ColorType]
) -> None:
    """Scatter (problem, thought) pairs, one colour per thought; non-finite pairs skipped."""
    for t in range(attention.shape[1]):
        x, y = attention[:, t], importance[:, t]
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.any():
            ax.scatter(x[ok], y[ok], s=14, color=colours[t], alpha=0.75, linewidths=0, zorder=2)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4))  # long tick labels must not collide
    _zero_line(ax)
    _ensure_span(ax)


# --- RQ1 ------------------------------------------------------------------------------------
def importance_by_thought(a: StudyAnalysis) -> Figure:
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
        logp = _attempt(a.rq1_logp, kind)
        if logp is not None:
            top = _draw_estimates(
                ax_lp, x + dx, logp, scale=1.0, colour=colour, bars=False, width=width
            )
            _mark_significant(ax_lp, x + dx, top, logp, a.alpha, colour)
        acc = _attempt(a.rq1_accuracy, kind)
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
    ax_lp.set_title("log-probability of the gold answer")
    ax_acc.set_ylabel(f"{ACC_LABEL}")
    ax_acc.set_title("accuracy (clean − ablated)")
    fig.suptitle(
        f"RQ1: ablating one thought (mean, bootstrap 95% CI; * Holm p < {a.alpha:g})",
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


def _all_thoughts(a: StudyAnalysis, kind: str) -> StatResult | None:
    """The all-thoughts control for ``kind``, or None when it was not run or is degenerate."""
    if f"all-{kind}" not in a.results.conditions:
        return None
    return _attempt(a.all_thoughts, kind)


def rq1_kind_bars(a: StudyAnalysis, kind: str, measure: str) -> Figure:
    """Per-claim RQ1 figure: mean Δ log p or accuracy drop per thought for one ablation kind."""
    if measure not in ("logp", "accuracy"):
        raise ValueError(f"unknown measure {measure!r}; use 'logp' or 'accuracy'")
    if kind not in a.kinds:
        raise ValueError(f"ablation kind {kind!r} was not run; available: {a.kinds}")
    n_t = a.n_thoughts
    fig = Figure(figsize=(max(4.6, 0.55 * n_t + 2.2), 3.6), layout="constrained")
    ax = fig.subplots()
    if measure == "logp":
        results, scale, ylabel = _attempt(a.rq1_logp, kind), 1.0, f"{LOGP_LABEL} (clean − ablated)"
        title = f"Δ log p(gold) per thought, {kind} ablation"
    else:
        results, scale, ylabel = _attempt(a.rq1_accuracy, kind), 100.0, ACC_LABEL
        title = f"Accuracy drop per thought, {kind} ablation"
    x = np.arange(n_t, dtype=np.float64)
    if results is not None:
        _draw_estimates(ax, x, results, scale=scale, colour=OKABE_ITO[0], bars=True, width=0.6)
    else:
        _no_data(ax)
    _thought_axis(ax, n_t)
    _zero_line(ax)
    _ensure_span(ax)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}\n(mean, bootstrap 95% CI)", fontsize=10)
    return fig


def _no_data(ax: Axes) -> None:
    """Say in the panel that the statistic could not be computed."""
    ax.text(
        0.5,
        0.5,
        "n/a: too few finite problems",
        transform=ax.transAxes,
        ha="center",
        va="center",
        color="0.4",
    )


def _difficulty_groups(difficulty: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """(bin, row indices) in DIFFICULTY_BINS order, then unknown labels; empty bins dropped."""
    labels = np.asarray(list(difficulty), dtype=object)
    order = [*DIFFICULTY_BINS, *(d for d in dict.fromkeys(difficulty) if d not in DIFFICULTY_BINS)]
    groups = [(name, np.flatnonzero(labels == name)) for name in order]
    return [(name, rows) for name, rows in groups if rows.size]


def _symmetric_limit(values: np.ndarray, quantile: float = 100.0) -> float:
    """Half-width of a colour scale centred at 0 covering ``values`` (1.0 when none vary)."""
    finite = np.abs(values[np.isfinite(values)])
    if finite.size == 0:
        return 1.0
    limit = float(np.percentile(finite, quantile))
    if limit <= 0.0:
        limit = float(finite.max())
    return limit if limit > 0.0 else 1.0


def _diverging_cmap() -> Colormap:
    """RdBu_r with grey for NaN (masked) cells."""
    return colormaps["RdBu_r"].with_extremes(bad=_BAD_COLOUR)


def importance_heatmap(a: StudyAnalysis) -> Figure:
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


# --- RQ2 ------------------------------------------------------------------------------------
def _rq2_result(a: StudyAnalysis, test: Rq2Test, layer: int) -> StatResult | None:
    """``a.rq2(test)[layer]``, or None when the data cannot support the test."""
    results = _attempt(a.rq2, test)
    return None if results is None else results.get(layer)


def attention_vs_importance(a: StudyAnalysis) -> Figure:
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


def rq2_layer_scatter(a: StudyAnalysis, layer: int, test: str) -> Figure:
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
        # Show what the test correlates: values minus each problem's and each thought's mean.
        x = x - x.mean(axis=0) - x.mean(axis=1, keepdims=True) + x.mean()
        y = y - y.mean(axis=0) - y.mean(axis=1, keepdims=True) + y.mean()
        xlabel = f"{xlabel}\nminus problem and thought means"
        ylabel = f"{ylabel}\nminus problem and thought means"
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


def per_thought_correlations(a: StudyAnalysis, layer: int) -> Figure:
    """One panel per thought: attention vs importance across problems at ``layer``."""
    n_t = a.n_thoughts
    ncols = min(3, n_t)
    nrows = math.ceil(n_t / ncols)
    imp = a.importance()
    att = a.attention(layer)
    stats = a.per_thought_correlation(layer)
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


def head_correlation_map(a: StudyAnalysis) -> Figure:
    """Layers x heads map of the pooled r between per-head attention and importance."""
    corr = a.head_correlation_map()
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
