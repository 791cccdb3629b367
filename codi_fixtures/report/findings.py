"""The top of the report: what ran, the answer to each research question in words, verdict grids.

Pure functions of the verdict rows and run metadata (HTML strings). Sentences are generated
from the verdicts and their statistics, one paragraph per experiments file (research
question); a grid per claim function shows every verdict as a coloured cell that links to its
row in the verdict table. Repeated inconclusive reasons are shown once, with the claims folded.
"""

from __future__ import annotations

import html
import math
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from codi_fixtures.report.vocabulary import OUTCOMES, SYMBOLS, ClaimRow, grid_cell

Row = ClaimRow

__all__ = [
    "COLOURS",
    "anchor",
    "answers_html",
    "facts_html",
    "grids_html",
    "group_by_function",
    "verdict_table_html",
]

COLOURS = {  # Okabe-Ito: distinguishable by colour-blind readers; text labels carry it too
    "supported": "#009E73",
    "refuted": "#D55E00",
    "inconclusive": "#BBBBBB",
    "known": "#E69F00",
    "unexpected": "#CC79A7",
    "error": "#000000",
}
MEANING = {
    "supported": "the effect exceeds the SESOI (corrected test and CI agree)",
    "refuted": "an equivalence test shows any effect is below the SESOI",
    "inconclusive": "the data cannot tell (skipped)",
    "known": "a refutation declared for this model and problem set (strict xfail)",
    "unexpected": "a declared known outcome that no longer holds",
    "error": "a crash, never a verdict",
}


def _e(value: object) -> str:
    return html.escape(str(value))


def _num(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return "n/a" if value is None else str(value)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isinf(value):  # a CI end no sample this size gives
            return "∞" if value > 0 else "−∞"
        if isinstance(value, float) and math.isnan(value):
            return "n/a"
        return f"{value:.3g}"
    return str(value)


def anchor(nodeid: str) -> str:
    """An HTML id for a claim's row in the verdict table."""
    return "claim-" + re.sub(r"[^A-Za-z0-9_-]+", "-", nodeid).strip("-")


def _split(nodeid: str) -> tuple[str, str]:
    path, _, function = nodeid.partition("::")
    return Path(path).stem, function.split("[")[0]


def _question(stem: str) -> str:
    """``test_rq1_importance`` -> ``RQ1``."""
    head = stem.removeprefix("test_").split("_")[0]
    return head.upper() if head.lower().startswith("rq") else stem


def group_by_function(rows: Sequence[Row]) -> dict[str, dict[str, list[Row]]]:
    """Experiments file -> claim function -> its rows, in order of appearance."""
    out: dict[str, dict[str, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        stem, function = _split(row.nodeid)
        out[stem][function].append(row)
    return out


def _cell_key(row: Row) -> tuple[str, str]:
    return grid_cell(tuple(str(v) for k, v in row.params.items() if k != "tier"))


def _counts(rows: Sequence[Row]) -> str:
    counts = Counter(r.outcome for r in rows)
    return ", ".join(f"{counts[o]} {o}" for o in OUTCOMES if counts[o])


def _effect(row: Row) -> str:
    s = row.stats
    stat, low, high = s.get("statistic"), s.get("ci_low"), s.get("ci_high")
    level = s.get("ci_level")
    pct = f"{100 * float(level):.3g}% " if isinstance(level, (int, float)) else ""  # 99.8, not 100
    if not isinstance(stat, (int, float)):
        return "n/a"
    return f"{_num(stat)} ({pct}CI [{_num(low)}, {_num(high)}])"


def _extremes(rows: Sequence[Row]) -> str:
    """Where the effect is smallest and largest among a function's judged rows."""
    judged = [
        r
        for r in rows
        if isinstance(r.stats.get("statistic"), (int, float))
        and math.isfinite(float(r.stats["statistic"]))  # type: ignore[arg-type]
    ]
    if len(judged) < 2:
        return ""
    judged.sort(key=lambda r: float(r.stats["statistic"]))  # type: ignore[arg-type]
    low, high = judged[0], judged[-1]

    def name(cell: tuple[str, str]) -> str:
        return "-".join(part for part in cell if part)

    return (
        f" Smallest effect at {_e(name(_cell_key(low)))}: {_e(_effect(low))}; largest at "
        f"{_e(name(_cell_key(high)))}: {_e(_effect(high))}."
    )


def _single(row: Row) -> str:
    """A lone claim's effect with its CI; an inconclusive one without a statistic: why."""
    effect = _effect(row)
    if effect == "n/a" and row.outcome == "inconclusive" and row.message:
        return row.message.removeprefix("inconclusive: ").rstrip(".")
    return effect


def _hypothesis(rows: Sequence[Row]) -> str:
    """The claim function's hypothesis (a row that ended in an error carries none)."""
    return next((r.hypothesis for r in rows if r.hypothesis), "")


def answers_html(rows: Sequence[Row]) -> str:
    """One paragraph per research question: each claim's hypothesis, its tally and extremes."""
    parts = []
    for stem, functions in group_by_function(rows).items():
        sentences = []
        for function, frows in functions.items():
            hypothesis = _hypothesis(frows) or function.removeprefix("test_").replace("_", " ")
            supported = sum(r.outcome == "supported" for r in frows)
            refuted = sum(r.outcome in ("refuted", "known") for r in frows)
            if len(frows) == 1:
                verdict = frows[0].outcome
                sentences.append(
                    f"<li><b>{_e(hypothesis)}</b> — <span class='codi-{_e(verdict)}'>"
                    f"{_e(verdict)}</span>: {_e(_single(frows[0]))}.</li>"
                )
                continue
            sentences.append(
                f"<li><b>{_e(hypothesis)}</b> — supported in {supported} of {len(frows)}, "
                f"refuted in {refuted} ({_e(_counts(frows))}).{_extremes(frows)}</li>"
            )
        parts.append(
            f"<h3>{_e(_question(stem))} <small>({_e(stem)}.py)</small></h3>"
            f"<ul class='codi-answers'>{''.join(sentences)}</ul>"
        )
    return "<h2>What the data say</h2>" + "".join(parts)


_ROLE_ORDER = {"early": 0, "middle": 1, "late": 2}


def _axis_order(value: str) -> tuple[int, int, str]:
    """Natural order of a grid axis: layer roles early < middle < late, then numbers, then text."""
    role = _ROLE_ORDER.get(value.split("-")[0], 3)
    number = re.search(r"\d+", value)
    return role, int(number.group()) if number else -1, value


def _grid(function: str, frows: Sequence[Row]) -> str:
    cells = {_cell_key(r): r for r in frows}
    first = sorted(dict.fromkeys(k[0] for k in cells), key=_axis_order)
    second = list(dict.fromkeys(k[1] for k in cells))

    def cell(key: tuple[str, str]) -> str:
        row = cells.get(key)
        if row is None:
            return "<td></td>"
        colour = COLOURS.get(row.outcome, "#000")
        text = "#000" if row.outcome in ("inconclusive", "known") else "#fff"
        return (
            f"<td style='background:{colour};color:{text}'><a style='color:{text}' "
            f"href='#{anchor(row.nodeid)}' title='{_e(row.outcome)}: {_e(row.label)}'>"
            f"{SYMBOLS.get(row.outcome, '?')}</a></td>"
        )

    head = "".join(f"<th>{_e(c)}</th>" for c in first)
    body = []
    for k2 in second:
        keys = [(k1, k2) for k1 in first]
        body.append(f"<tr><th>{_e(k2)}</th>{''.join(cell(k) for k in keys)}</tr>")
    name = _hypothesis(frows) or function
    return (
        f"<figure class='codi-grid'><figcaption>{_e(name)}</figcaption><table>"
        f"<thead><tr><th></th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></figure>"
    )


def _thumbs(rows: Sequence[Row], figures: Mapping[str, Sequence[tuple[str, str]]]) -> str:
    """Thumbnails of the figures of the analyses these claims read; each opens full size."""
    names = dict.fromkeys(name for row in rows for name in row.analyses)
    items = [
        f"<a href='#{_e(anchor_)}' title='open full size'><img data-figure='{_e(anchor_)}' "
        f"alt='{_e(title)}'/>{_e(title)}</a>"
        for name in names
        for anchor_, title in figures.get(name, ())
    ]
    return f"<div class='codi-thumbs'>{''.join(items)}</div>" if items else ""


def grids_html(
    rows: Sequence[Row], figures: Mapping[str, Sequence[tuple[str, str]]] | None = None
) -> str:
    """A verdict grid per claim function, grouped by research question; a legend.

    ``figures`` maps an analysis to its figures' (anchor, title): each question's grids are
    followed by thumbnails of the figures of the analyses its claims read.
    """
    legend = " · ".join(
        f"<span class='codi-chip' style='background:{COLOURS[o]};"
        f"color:{'#000' if o in ('inconclusive', 'known') else '#fff'}'>{SYMBOLS[o]} {o}</span>"
        f" {MEANING[o]}"
        for o in OUTCOMES
    )
    parts = [f"<h2>Verdicts at a glance</h2><p class='codi-legend'>{legend}</p>"]
    for stem, functions in group_by_function(rows).items():
        grids = "".join(_grid(f, r) for f, r in functions.items())
        thumbs = _thumbs([r for frows in functions.values() for r in frows], figures or {})
        parts.append(f"<h3>{_e(_question(stem))}</h3><div class='codi-grids'>{grids}</div>{thumbs}")
    return "".join(parts)


def _table_row(row: Row) -> str:
    s = row.stats
    p, p_corr = s.get("p_value"), s.get("p_corrected")
    return (
        f"<tr id='{anchor(row.nodeid)}'><td>{_e(row.tier)}</td>"
        f"<td class='codi-{_e(row.outcome)}'>{_e(row.outcome)}</td>"
        f"<td>{_e(row.label)}</td><td>{_e(_effect(row))}</td>"
        f"<td>{_e(_num(s.get('sesoi')))}</td><td>{_e(_num(p))}</td><td>{_e(_num(p_corr))}</td>"
        f"<td>{_e(_num(s.get('n')))}</td><td>{_e(s.get('method', ''))}</td>"
        f"<td>{_e(row.message) if row.outcome != 'supported' else ''}</td></tr>"
    )


def _reason(row: Row) -> str:
    """An inconclusive row's reason with the claim's own words and numbers removed."""
    text = row.message.removeprefix("inconclusive: ")
    text = text.replace(row.label, "").strip(" :")
    return re.sub(r"[-+]?\d[\d.e+-]*", "#", text)


def verdict_table_html(rows: Sequence[Row]) -> str:
    """Every verdict as a readable row; a reason shared by 3+ inconclusive claims is shown once."""
    header = (
        "<thead><tr><th>tier</th><th>verdict</th><th>claim</th><th>effect (CI)</th>"
        "<th>SESOI</th><th>p</th><th>p (Holm)</th><th>n</th><th>test</th><th>why</th></tr>"
        "</thead>"
    )
    shared: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        if row.outcome == "inconclusive":
            shared[_reason(row)].append(row)
    folded = {id(r) for group in shared.values() if len(group) >= 3 for r in group}
    body = [_table_row(r) for r in rows if id(r) not in folded]
    groups = []
    for group in shared.values():
        if len(group) < 3:
            continue
        inner = "".join(_table_row(r) for r in group)
        groups.append(
            f"<details class='codi-group'><summary>{len(group)} claims inconclusive: "
            f"{_e(group[0].message)}</summary><table class='codi-verdicts'>{header}"
            f"<tbody>{inner}</tbody></table></details>"
        )
    return (
        f"<h2>Every verdict</h2><p>{_e(_counts(rows) or 'no claims ran')}.</p>"
        + "".join(groups)
        + f"<table id='codi-verdicts' class='codi-verdicts'>{header}<tbody>{''.join(body)}"
        "</tbody></table>"
    )


def facts_html(meta: Mapping[str, Any], tiers: Mapping[str, tuple[int, float]]) -> str:
    """What ran: model, problems, tiers with N and clean accuracy, device/dtype used, time."""
    tier_text = "; ".join(
        f"{t}: {n} problems, clean accuracy {100 * acc:.0f}%" for t, (n, acc) in tiers.items()
    )
    items = [
        ("model", meta.get("model")),
        ("checkpoint", meta.get("checkpoint")),
        ("problem set", meta.get("problems")),
        ("tier", tier_text or "none"),
        ("device / dtype used", f"{meta.get('device')} / {meta.get('dtype')}"),
        ("wall time", f"{_num(meta.get('wall_time_s'))} s"),
        ("analyses computed", ", ".join(meta.get("analyses") or ()) or "none"),
    ]
    left_out = meta.get("not_computed") or ()
    if left_out:
        items.append(("not computed", "; ".join(str(x) for x in left_out)))
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in items)
    return f"<table class='codi-facts'>{body}</table>"
