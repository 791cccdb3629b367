"""Report content: per-claim stats tables, the summary block, ``summary_statistics.json``.

Pure functions (HTML strings and dicts); the plugin decides when and where to
write them. Every piece of user data (problem text, ids, messages) is escaped.
"""

from __future__ import annotations

import html
import json
import math
import platform
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

from codi_fixtures.analyses import StudyAnalysis
from codi_fixtures.atomic import atomic_write_text
from codi_fixtures.report.vocabulary import ClaimRow, RenderedFigure
from codi_fixtures.stats import StatResult, is_constant

__all__ = [
    "ClaimRow",
    "package_versions",
    "stats_table_html",
    "summary_html",
    "summary_statistics",
    "write_summary_statistics",
]

_PACKAGES = ("codi-interp", "torch", "transformers", "peft", "numpy", "scipy", "pytest")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.3g}"
    return str(value)


def stats_table_html(result: StatResult, context: Mapping[str, object]) -> str:
    """A small table: statistic, p, corrected p, CI, n, method, plus context (kind, layer)."""
    rows: list[tuple[str, object]] = [
        ("verdict", result.verdict or "n/a"),
        ("why", result.verdict_reason or "n/a"),
        ("statistic (effect size)", result.statistic),
        ("SESOI", result.sesoi if result.sesoi is not None else "n/a"),
        ("p (H0: no effect)", result.p_value),
        ("corrected p (Holm)", result.p_corrected if result.p_corrected is not None else "n/a"),
        (
            "p (H0: effect <= SESOI), Holm",
            result.p_sesoi_corrected if result.p_sesoi_corrected is not None else "n/a",
        ),
        (
            "p (H0: effect >= SESOI), Holm",
            result.p_equivalence_corrected if result.p_equivalence_corrected is not None else "n/a",
        ),
        (f"{100 * result.ci_level:.3g}% CI", f"[{_fmt(result.ci_low)}, {_fmt(result.ci_high)}]"),
        ("n (problems)", result.n),
        ("alternative", result.alternative),
        ("method", result.method),
        *context.items(),
    ]
    body = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(str(k))}</th>"
        f"<td>{html.escape(_fmt(v))}</td></tr>"
        for k, v in rows
    )
    return f"<table class='codi-stats'>{body}</table>"


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape the numbers, plus Python."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _result_dict(result: StatResult) -> dict[str, object]:
    return {
        k: (None if isinstance(v, float) and math.isnan(v) else v)
        for k, v in result.as_dict().items()
    }


def _rq2_statistics(a: StudyAnalysis) -> dict[str, object]:
    """RQ2's keys: the seed's ``overall_correlation`` and ``per_token``, and by difficulty."""
    roles = a.layers.as_dict()
    middle = a.layers.middle
    imp = a.importance()
    pooled = a.rq2("pooled")
    spearman = {}
    overall: dict[str, object] = {}
    for role, layer in roles.items():
        res = pooled[layer]
        position = a.rq2("position")[layer]
        beyond = a.rq2("beyond_position")[layer]
        x, y = a.attention(layer).ravel(), imp.ravel()
        keep = ~np.isnan(y)
        if keep.sum() > 2 and not is_constant(x[keep]) and not is_constant(y[keep]):
            from scipy.stats import spearmanr

            rho, p_rho = spearmanr(x[keep], y[keep])
            spearman[layer] = (float(rho), float(p_rho))
        overall[f"layer_{layer}"] = {
            "r": None if math.isnan(res.statistic) else res.statistic,
            "p": res.p_value,
            "role": role,
            "n_pairs": int(keep.sum()),
            "n_problems": res.n,
            "spearman_rho": spearman.get(layer, (None, None))[0],
            "spearman_p": spearman.get(layer, (None, None))[1],
            "p_note": "naive: treats the pairs of a problem as independent; decides nothing",
            "pooled": _result_dict(res),
            "position": _result_dict(position),
            "beyond_position": _result_dict(beyond),
        }
    per_token: dict[str, object] = {}
    att_mid = a.attention(middle)
    per_thought = a.per_thought_correlation(middle)
    by_layer = {layer: a.per_thought_correlation(layer) for layer in roles.values()}
    for t in range(a.n_thoughts):
        col = imp[:, t][~np.isnan(imp[:, t])]
        r, p = per_thought[t]
        per_token[f"token_{t}"] = {
            "thought": t,
            "importance_mean": float(col.mean()) if col.size else None,
            "importance_std": float(col.std(ddof=1)) if col.size > 1 else None,
            "attention_mean": float(att_mid[:, t].mean()),
            "attention_std": float(att_mid[:, t].std(ddof=1)) if len(att_mid) > 1 else None,
            "correlation": None if math.isnan(r) else r,
            "p": p,
            "layer": middle,
            "by_layer": {
                f"layer_{layer}": {
                    "attention_mean": float(a.attention(layer)[:, t].mean()),
                    "correlation": _none_nan(by_layer[layer][t][0]),
                    "p": by_layer[layer][t][1],
                }
                for layer in roles.values()
            },
        }
    study = a.results
    by_difficulty = {
        bin_: {
            f"layer_{layer}": _result_dict(r) for layer, r in a.rq2("beyond_position", bin_).items()
        }
        for bin_ in sorted(set(study.difficulty))
    }
    return {
        "overall_correlation": overall,
        "per_token": per_token,
        "rq2_by_difficulty": by_difficulty,
    }


def summary_statistics(a: StudyAnalysis, meta: Mapping[str, object]) -> dict[str, object]:
    """The seed's keys (``overall_correlation``, ``per_token``) plus ours.

    RQ1's and RQ2's keys appear when the run computed those analyses (``-k rq5`` computes
    neither); ``analyses_run`` names what was computed.
    """
    selected = {analysis.name for analysis in a.analyses}
    out: dict[str, object] = {}
    if "rq2" in selected:
        out.update(_rq2_statistics(a))
    if "rq1" in selected:
        out["rq1"] = {
            kind: {
                "logp": {f"t{t}": _result_dict(r) for t, r in enumerate(a.rq1_logp(kind))},
                "accuracy": {f"t{t}": _result_dict(r) for t, r in enumerate(a.rq1_accuracy(kind))},
                "all_thoughts": _result_dict(a.all_thoughts(kind)),
                "last_most_important": _result_dict(a.last_most_important(kind)),
            }
            for kind in a.kinds
        }
    study = a.results
    out.update(
        {
            "clean_accuracy": float(study.clean_correct.mean()),
            "n_problems": len(study.problem_ids),
            "excluded_nonfinite": a.excluded_problems(),
            "importance_measure": f"delta log p(gold), {a.importance_kind} ablation",
            "layer_roles": a.layers.as_dict(),
            "alpha": a.alpha,
            "sesoi": {
                "delta_logp_nats": a.sesoi_logp,
                "accuracy_drop": a.sesoi_accuracy,
                "correlation_r": a.sesoi_r,
            },
            "verdict_rule": (
                "supported: the Holm-corrected test against 0 and the minimal-effect test "
                "(H0: effect <= SESOI) reject and the (1-2 alpha) CI lies above the SESOI; "
                "refuted: the equivalence test (H0: effect >= SESOI) rejects and the CI lies "
                "below the SESOI; inconclusive otherwise. Each result's 'method' names its test; "
                "RQ2 'pooled' is descriptive (its p is naive) and decides nothing."
            ),
            "meta": dict(meta),
            "analyses_run": [analysis.name for analysis in a.analyses],
        }
    )
    return out


def _none_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


NUMBER_ENCODING = (
    'null: a number that could not be computed (NaN); "inf" / "-inf": an infinite value, e.g. a '
    "CI end that no sample of this size can bound; every other number is a JSON number"
)
"""How ``summary_statistics.json`` writes the floats JSON has no literal for (its key
``number_encoding``). ``float("inf")`` reads the strings back in Python."""


def write_summary_statistics(path: Path, content: Mapping[str, object]) -> None:
    """Write JSON atomically: NaN becomes null, +-inf the strings "inf" / "-inf"."""
    body = _clean({**content, "number_encoding": NUMBER_ENCODING})
    atomic_write_text(path, json.dumps(body, indent=2, sort_keys=True, allow_nan=False) + "\n")


def _clean(value: object) -> object:
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"  # unbounded: not the same as missing
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return _clean(value.item())
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    return value


def _problems_table(a: StudyAnalysis, questions: Mapping[str, str], limit: int = 12) -> str:
    res = a.results
    rows = []
    for i, pid in enumerate(res.problem_ids[:limit]):
        rows.append(
            "<tr>"
            f"<td>{html.escape(pid)}</td><td>{html.escape(res.difficulty[i])}</td>"
            f"<td>{html.escape(questions.get(pid, ''))}</td>"
            f"<td>{html.escape(_fmt(float(res.gold[i])))}</td>"
            f"<td>{html.escape(res.clean_text[i])}</td>"
            f"<td>{'yes' if res.clean_correct[i] else 'no'}</td>"
            "</tr>"
        )
    return (
        f"<details><summary>First {min(limit, len(res.problem_ids))} problems and clean "
        "answers</summary><table class='codi-problems'><thead><tr><th>id</th><th>bin</th>"
        "<th>question</th><th>gold</th><th>clean answer</th><th>correct</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></details>"
    )


_STYLE = """<style>
body{min-width:0 !important}
#codi-summary{max-width:1200px;font-family:sans-serif;font-size:14px;line-height:1.45;color:#1a1a1a}
#codi-summary h2{color:#1a1a1a;font-size:1.3em;margin-top:1.2em}
#codi-summary h3{color:#1a1a1a;font-size:1.1em}
#codi-summary h1{font-size:1.6em;margin:.3em 0}
#codi-summary figure{margin:1em 0}
#codi-summary figure.codi-figure img{width:100%;max-width:1000px;height:auto;border:1px solid #ddd}
#codi-summary figure.codi-figure a{cursor:zoom-in}
#codi-summary .codi-close{display:none}
#codi-summary figure.codi-figure:target{position:fixed;inset:0;z-index:1000;margin:0;padding:1em;
background:#fff;overflow:auto}
#codi-summary figure.codi-figure:target img{width:auto;max-width:none;height:calc(100vh - 7em)}
#codi-summary figure.codi-figure:target .codi-close{display:block;position:sticky;top:0;
font-size:1.2em;padding:.2em .5em;background:#fff;cursor:pointer}
.codi-thumbs{display:flex;flex-wrap:wrap;gap:.5em;margin:.3em 0 1em}
.codi-thumbs a{display:block;width:180px;font-size:.8em;color:#333;text-decoration:none}
.codi-thumbs img{width:180px;height:auto;border:1px solid #ddd}
#codi-summary figcaption{font-size:.9em;color:#333}
#codi-summary table{border-collapse:collapse}
#codi-summary td,#codi-summary th{padding:2px 6px;text-align:left;vertical-align:top}
.codi-facts th{padding-right:1em}
.codi-verdicts{width:100%;font-size:.85em}
.codi-verdicts td,.codi-verdicts th{border-bottom:1px solid #eee;overflow-wrap:anywhere}
.codi-grids{display:flex;flex-wrap:wrap;gap:1em}
.codi-grid table td{text-align:center;min-width:2.2em;border:1px solid #fff}
.codi-grid a{text-decoration:none;font-weight:bold}
.codi-grid figcaption{max-width:30em}
.codi-chip{padding:0 4px;border-radius:3px;font-weight:bold}
.codi-supported{color:#007a59;font-weight:bold}.codi-refuted{color:#b34700;font-weight:bold}
.codi-known{color:#9a6a00;font-weight:bold}.codi-error{font-weight:bold}
.codi-unexpected{color:#a0507f;font-weight:bold}
.codi-reproduce code{overflow-wrap:anywhere}
</style>"""
_TO_TOP = (
    "<script>(function(){var s=document.getElementById('codi-summary');"
    "if(s&&document.body.firstChild!==s){document.body.insertBefore(s,document.body.firstChild);}"
    "})();</script>"
)


_THUMBS = (  # thumbnails borrow their figure's image: the page carries each PNG once
    "<script>(function(){document.querySelectorAll('img[data-figure]').forEach(function(t){"
    "var f=document.querySelector('#'+t.dataset.figure+' img');if(f){t.src=f.src;}});})();"
    "</script>"
)


def _reproduce_html(meta: Mapping[str, object], fingerprints: Mapping[str, object]) -> str:
    items: list[tuple[str, object]] = [
        ("command", meta.get("command", "")),
        ("checkpoint", meta.get("checkpoint", "")),
        *((f"fingerprints ({tier})", v) for tier, v in fingerprints.items()),
        ("versions", meta.get("versions", {})),
        ("settings", meta.get("settings", {})),
    ]
    body = "".join(
        f"<tr><th>{html.escape(k)}</th><td><code>"
        f"{html.escape(v if isinstance(v, str) else json.dumps(v, default=str))}</code></td></tr>"
        for k, v in items
    )
    return (
        "<h2>Reproduce</h2><details class='codi-reproduce' open><summary>Command, "
        "fingerprints, versions, settings — and <a href='summary_statistics.json' download>"
        "summary_statistics.json</a> (every statistic of this page)</summary>"
        f"<table class='codi-meta'>{body}</table></details>"
    )


def summary_html(
    rows: Sequence[ClaimRow],
    tiers: Mapping[str, tuple[StudyAnalysis, Mapping[str, RenderedFigure], Mapping[str, str]]],
    meta: Mapping[str, object],
    fingerprints: Mapping[str, object] | None = None,
) -> str:
    """The block that opens report.html: findings, verdict grids, figures, every verdict.

    ``tiers`` maps a tier to (analysis, {figure title: :class:`RenderedFigure`}, {problem id:
    question}); every figure opens full size on click (CSS ``:target``, no script needed), and
    each research question's grids show thumbnails of its analyses' figures that open them.
    ``fingerprints`` maps a tier to its study / model / problem-set fingerprints.
    """
    from codi_fixtures.report.findings import (
        answers_html,
        facts_html,
        grids_html,
        verdict_table_html,
    )

    sizes = {
        tier: (len(a.results.problem_ids), float(a.results.clean_correct.mean()))
        for tier, (a, _, _) in tiers.items()
    }
    title = f"CODI findings: {meta.get('model')} on {meta.get('problems')}"
    parts = [
        _STYLE,
        f"<h1>{html.escape(title)}</h1>",
        facts_html(meta, sizes),
        answers_html(rows),
        grids_html(rows, _figures_by_analysis(tiers)),
    ]
    for tier, (analysis, figures, questions) in tiers.items():
        n = len(analysis.results.problem_ids)
        parts.append(
            f"<h2 id='codi-figures-{html.escape(tier)}'>Figures, {html.escape(tier)} tier "
            f"(n = {n} problems)</h2><p>Click a figure to see it full size.</p>"
        )
        for title_, fig in figures.items():
            parts.append(
                f"<figure class='codi-figure' id='{fig.anchor}'>"
                f"<a class='codi-close' href='#codi-figures-{html.escape(tier)}'>close ✕</a>"
                f"<a href='#{fig.anchor}' title='open full size'><img alt='{html.escape(title_)}' "
                f"src='data:image/png;base64,{fig.png_base64}'/></a>"
                f"<figcaption><b>{html.escape(title_)}</b> "
                f"(n = {n} problems, {html.escape(tier)} tier). {html.escape(fig.caption)}"
                "</figcaption></figure>"
            )
        parts.append(_problems_table(analysis, questions))
    parts.append(verdict_table_html(rows))
    parts.append(_reproduce_html(meta, fingerprints or {}))
    return "<div id='codi-summary'>" + "".join(parts) + "</div>" + _TO_TOP + _THUMBS


def _figures_by_analysis(
    tiers: Mapping[str, tuple[StudyAnalysis, Mapping[str, RenderedFigure], Mapping[str, str]]],
) -> dict[str, list[tuple[str, str]]]:
    """Analysis name -> [(figure anchor, title)], over every tier (for the grids' thumbnails)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for _, figures, _ in tiers.values():
        for title, fig in figures.items():
            out.setdefault(fig.analysis, []).append((fig.anchor, title))
    return out
