"""Shared drawing helpers of the analyses' figures (matplotlib, object-oriented API only).

Every figure function of an analysis is pure: it takes the study view and returns a new
``matplotlib.figure.Figure`` (never pyplot), so there is no global state. Thoughts are numbered
0-based ("thought t" is sequence position ``Q+1+t``, DESIGN.md) and importance is ``delta log
p`` of the gold answer, clean minus ablated. Colours come from the colour-blind-safe Okabe-Ito
palette. Statistics that the data cannot support are drawn as "n/a" rather than raising, so a
degenerate study still produces every figure. Rendering (PNG, PDF) is the report's job
(:mod:`codi_fixtures.report.figures`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from matplotlib.typing import ColorType

from codi_fixtures.analyses.view import StudyView
from codi_fixtures.stats import DegenerateData, StatResult
from codi_fixtures.study.problems import DIFFICULTY_BINS

OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
"""Okabe-Ito colour-blind-safe palette (blue, vermillion, green, purple, orange, sky, yellow)."""

LOGP_LABEL = "Δ log p(gold) [nats]"
ACC_LABEL = "accuracy drop [percentage points]"
ATTENTION_LABEL = "attention weight from <eot> (head mean)"
_BAD_COLOUR = "#BBBBBB"  # NaN cells (excluded problems) in heatmaps
_DASHES = ("--", ":", "-.", (0, (6, 2, 1, 2, 1, 2)))
_R = TypeVar("_R")


# --- helpers --------------------------------------------------------------------------
def _attempt(compute: Callable[..., _R], *args: object) -> _R | None:
    """``compute(*args)``, or None when the data are too degenerate for the statistic."""
    try:
        return compute(*args)
    except DegenerateData:  # too few finite problems for this statistic: nothing to draw
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


def _roles_of(a: StudyView, layer: int) -> list[str]:
    """Role names (early/middle/late) assigned to ``layer``."""
    return [role for role, lay in a.layers.as_dict().items() if lay == layer]


def _layer_label(a: StudyView, layer: int) -> str:
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
    _draw_open_ends(ax, x, stat, low, high, colour="0.15" if bars else colour)
    top = np.where(has_ci, np.fmax(high, stat), stat)
    return np.where(shown, np.fmax(top, 0.0), np.nan)


def _draw_open_ends(
    ax: Axes, x: np.ndarray, stat: np.ndarray, low: np.ndarray, high: np.ndarray, colour: ColorType
) -> None:
    """Whiskers with an arrow where a CI has no finite end (too few problems to bound it)."""
    shown = np.isfinite(stat) & ~(np.isfinite(low) & np.isfinite(high))
    for xi, si, lo, hi in zip(x[shown], stat[shown], low[shown], high[shown], strict=True):
        for end, direction in ((lo, -1), (hi, 1)):
            if math.isfinite(end):
                ax.plot([xi, xi], [si, end], color=colour, linewidth=1.2, zorder=3)
            elif end == direction * math.inf:
                ax.annotate(
                    "",
                    xy=(float(xi), float(si)),
                    xytext=(0, 16 * direction),
                    textcoords="offset points",
                    arrowprops={"arrowstyle": "<-", "color": colour, "linewidth": 1.2},
                    zorder=3,
                )


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


def _complete_rows(a: StudyView) -> np.ndarray:
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


def cell_text(values: np.ndarray, fmt: str = "{:.2f}") -> np.ndarray:
    """Cell labels for :func:`label_cells`: each finite value formatted, '' elsewhere."""
    out = np.full(values.shape, "", dtype=object)
    for index, v in np.ndenumerate(values):
        if np.isfinite(v):
            out[index] = fmt.format(v)
    return out


def label_cells(ax: Axes, image: AxesImage, labels: np.ndarray, *, fontsize: float = 7.0) -> None:
    """Write ``labels[i, j]`` on cell (i, j), black on light cells and white on dark ones.

    The text colour follows the cell's own colour (its relative luminance), so labels stay
    readable on any colour map, in greyscale too. Empty labels are skipped.
    """
    values = np.ma.masked_invalid(np.asarray(image.get_array(), dtype=float))
    rgba = image.to_rgba(values)
    for (i, j), text in np.ndenumerate(labels):
        if not text:
            continue
        r, g, b = rgba[i, j, :3]
        luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
        ax.text(
            j,
            i,
            text,
            ha="center",
            va="center",
            fontsize=fontsize,
            color="k" if luminance > 0.45 else "w",
        )


def _diverging_cmap() -> Colormap:
    """RdBu_r with grey for NaN (masked) cells."""
    return colormaps["RdBu_r"].with_extremes(bad=_BAD_COLOUR)
