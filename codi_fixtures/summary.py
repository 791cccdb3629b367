"""Session-level report: figures, ``summary_statistics.json`` and the HTML summary block.

Runs in the controller only. It reads each tier's study from the on-disk cache
(named by the fingerprint the workers reported), so it needs no model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from codi_fixtures.analysis import StudyAnalysis
from codi_fixtures.data import problem_set_fingerprint
from codi_fixtures.figures import (
    attention_vs_importance,
    head_correlation_map,
    importance_by_thought,
    importance_heatmap,
    per_thought_correlations,
    png_base64,
    save_figure,
)
from codi_fixtures.report import (
    ClaimRow,
    package_versions,
    summary_html,
    summary_statistics,
    write_summary_statistics,
)
from codi_fixtures.runs import load_cached_study

if TYPE_CHECKING:
    from codi_fixtures.plugin import CodiSession

__all__ = ["build_summary", "claim_rows"]


def claim_rows(reports: Sequence[pytest.TestReport], outcomes: Mapping[str, str]) -> list[ClaimRow]:
    """One row per judged claim, in a stable order (tier, then test id).

    ``outcomes`` (test id -> outcome, :mod:`codi_fixtures.outcomes`) is what the controller
    classified from every phase of every claim's reports.
    """
    from codi_fixtures.plugin import CLAIM_PROPERTY

    rows = []
    for report in reports:
        payload = json.loads(str(dict(report.user_properties)[CLAIM_PROPERTY]))
        message = payload["message"]
        if report.skipped and not hasattr(report, "wasxfail"):
            message = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else message
        rows.append(
            ClaimRow(
                nodeid=report.nodeid,
                outcome=outcomes.get(report.nodeid, "error"),
                tier=payload["tier"],
                label=payload["label"],
                message=message,
                stats=payload["stats"],
            )
        )
    return sorted(rows, key=lambda r: (r.tier, r.nodeid))


def _study_fingerprints(reports: Sequence[pytest.TestReport]) -> dict[str, str]:
    from codi_fixtures.plugin import STUDY_PROPERTY

    out: dict[str, str] = {}
    for report in reports:
        for key, value in report.user_properties:
            if key == STUDY_PROPERTY:
                info = json.loads(str(value))
                out[info["tier"]] = info["fingerprint"]
    return out


def build_summary(
    codi: CodiSession,
    reports: Sequence[pytest.TestReport],
    outcomes: Mapping[str, str],
    out_dir: Path,
) -> str:
    """Write figures + JSON for every tier that ran into ``out_dir``; return the HTML block."""
    settings = codi.settings
    fig_dir = out_dir / "figures"
    rows = claim_rows(reports, outcomes)
    tiers: dict[str, tuple[StudyAnalysis, dict[str, str], dict[str, str]]] = {}
    stats_by_tier: dict[str, dict[str, object]] = {}
    for tier, fingerprint in sorted(_study_fingerprints(reports).items()):
        results = load_cached_study(settings.cache_dir, fingerprint)
        if results is None:
            continue
        analysis = StudyAnalysis.from_settings(results, settings)
        figures = {
            "RQ1: importance by thought (mean with 95% CI), per ablation kind": (
                "importance_by_thought",
                importance_by_thought(analysis),
            ),
            "RQ1: problems x thoughts importance, grouped by difficulty": (
                "importance_heatmap",
                importance_heatmap(analysis),
            ),
            "RQ2: attention vs importance at the early / middle / late layers": (
                "attention_vs_importance",
                attention_vs_importance(analysis),
            ),
            f"RQ2: per-thought correlations at layer {analysis.layers.middle}": (
                "per_thought_correlations",
                per_thought_correlations(analysis, analysis.layers.middle),
            ),
            "RQ2: attention-importance correlation per layer and head": (
                "head_correlation_map",
                head_correlation_map(analysis),
            ),
        }
        encoded = {}
        for title, (name, fig) in figures.items():
            save_figure(fig, fig_dir, f"{tier}-{name}")
            encoded[title] = png_base64(fig)
        problems = codi.problems(tier)
        questions = {p.id: p.question for p in problems}
        meta = {
            "tier": tier,
            "study_fingerprint": fingerprint,
            "model_fingerprint": results.meta.get("model_fingerprint"),
            "problem_set_fingerprint": problem_set_fingerprint(problems),
        }
        stats_by_tier[tier] = summary_statistics(analysis, meta)
        tiers[tier] = (analysis, encoded, questions)
    run_meta = {
        "model": settings.model_label,
        "checkpoint": str(settings.model.ckpt or "bundled"),
        "device": settings.model.device,
        "dtype": settings.model.dtype,
        "problems": str(settings.problems or "bundled held-out set"),
        "settings": settings.describe(),
        "versions": package_versions(),
        "wall_time_s": round(time.monotonic() - codi.started, 1),
    }
    content: dict[str, object] = {}
    if stats_by_tier:
        # One tier: its statistics at the top level (the seed's layout); several: "full" there.
        main = stats_by_tier.get("full", next(iter(stats_by_tier.values())))
        content.update(main)
        if len(stats_by_tier) > 1:
            content["tiers"] = stats_by_tier
    content["verdicts"] = [
        {
            "test": r.nodeid,
            "tier": r.tier,
            "outcome": r.outcome,
            "claim": r.label,
            "evidence": r.message,
            "stats": dict(r.stats),
        }
        for r in rows
    ]
    content["run"] = run_meta
    write_summary_statistics(out_dir / "summary_statistics.json", content)
    return summary_html(rows, tiers, run_meta)
