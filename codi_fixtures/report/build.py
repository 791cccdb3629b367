"""Session-level report: figures, ``summary_statistics.json`` and the HTML summary block.

The plugin's controller calls :func:`build_summary` once at the end of a run. It reads each
tier's study from the on-disk cache (named by the fingerprint the workers reported), so it
needs no model, and it knows nothing of pytest: its inputs are settings, study fingerprints,
problem sets and the verdict rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from codi_fixtures.analyses import BUILTIN_ANALYSES, Analysis, StudyAnalysis
from codi_fixtures.config import Settings
from codi_fixtures.report.figures import as_base64, start_rendering
from codi_fixtures.report.summary import (
    ClaimRow,
    package_versions,
    summary_html,
    summary_statistics,
    write_summary_statistics,
)
from codi_fixtures.report.vocabulary import RenderedFigure
from codi_fixtures.study.data import problem_set_fingerprint
from codi_fixtures.study.problems import Problem
from codi_fixtures.study.results import load_cached_study

__all__ = ["analysis_summaries", "build_summary", "not_computed"]


def not_computed(
    settings: Settings, computed: Sequence[Analysis], registered: Sequence[Analysis]
) -> list[str]:
    """What this run left out, in words: unselected analyses, parts switched off by option.

    The latter come from each computed analysis's optional ``left_out(settings)``.
    """
    names = {a.name for a in computed}
    out = [
        f"{a.name} (no selected claim reads it; run without -k to compute it)"
        for a in registered
        if a.name not in names
    ]
    for analysis in computed:
        left_out = getattr(analysis, "left_out", None)
        if callable(left_out):
            out += left_out(settings)
    return out


def analysis_summaries(analysis: StudyAnalysis) -> dict[str, object]:
    """Numbers of the selected analyses that offer a ``summary(view)`` (optional), by name.

    RQ1 and RQ2 have none: their numbers keep the seed's layout (:func:`summary_statistics`).
    """
    out: dict[str, object] = {}
    for selected in analysis.analyses:
        summary = getattr(selected, "summary", None)
        if callable(summary):
            out[selected.name] = dict(summary(analysis))
    return out


def build_summary(
    settings: Settings,
    fingerprints: Mapping[str, str],
    problems_of: Callable[[str], Sequence[Problem]],
    rows: Sequence[ClaimRow],
    out_dir: Path,
    wall_time_s: float,
    analyses: Sequence[Analysis] = BUILTIN_ANALYSES,
    run_info: Mapping[str, object] | None = None,
    figure_formats: tuple[str, ...] = ("png",),
    loaded: Mapping[str, StudyAnalysis] | None = None,
) -> str:
    """Write figures + JSON for every tier that ran into ``out_dir``; return the HTML block.

    ``fingerprints`` maps each tier to the study the claims read; ``problems_of(tier)`` is the
    tier's problem set; ``rows`` are the verdicts, in the order they are shown; the figures are
    those of the selected ``analyses``, in their order, rendered in ``figure_formats`` (PNG
    always: the HTML embeds it); ``run_info`` adds what actually ran (device, dtype, command).
    ``loaded`` maps study fingerprints to analyses already in memory (with their statistics
    computed) for the same ``analyses``; other studies are read from the cache.
    """
    fig_dir = out_dir / "figures"
    formats = tuple(dict.fromkeys(("png", *figure_formats)))
    studies: dict[str, StudyAnalysis] = {}
    for tier, fingerprint in sorted(fingerprints.items()):
        in_memory = (loaded or {}).get(fingerprint)
        if in_memory is not None and tuple(in_memory.analyses) == tuple(analyses):
            studies[tier] = in_memory  # its statistics already computed by the claims
            continue
        results = load_cached_study(settings.cache_dir, fingerprint)
        if results is not None:
            studies[tier] = StudyAnalysis.for_run(results, settings, analyses)
    specs = [
        (tier, selected, spec)
        for tier, analysis in studies.items()
        for selected in analysis.analyses
        for spec in selected.figures(analysis)
    ]
    # Figures render (in parallel where it can) while the statistics are gathered here.
    with start_rendering(
        [(spec.draw, f"{tier}-{spec.name}") for tier, _a, spec in specs], fig_dir, formats
    ) as rendering:
        stats_by_tier: dict[str, dict[str, object]] = {}
        questions: dict[str, dict[str, str]] = {}
        for tier, analysis in studies.items():
            problems = problems_of(tier)
            questions[tier] = {p.id: p.question for p in problems}
            meta = {
                "tier": tier,
                "study_fingerprint": fingerprints[tier],
                "model_fingerprint": analysis.results.meta.get("model_fingerprint"),
                "problem_set_fingerprint": problem_set_fingerprint(problems),
            }
            stats_by_tier[tier] = summary_statistics(analysis, meta)
            extra = analysis_summaries(analysis)
            if extra:
                stats_by_tier[tier]["analyses"] = extra
        rendered = rendering.wait()
    encoded: dict[str, dict[str, RenderedFigure]] = {tier: {} for tier in studies}
    for (tier, selected, spec), data in zip(specs, rendered, strict=True):
        stem = f"{tier}-{spec.name}"
        encoded[tier][spec.title] = RenderedFigure(
            as_base64(data["png"]), spec.caption, selected.name, f"fig-{stem}"
        )
    tiers = {tier: (analysis, encoded[tier], questions[tier]) for tier, analysis in studies.items()}
    run_meta = {
        "model": settings.model_label,
        "checkpoint": str(settings.model.ckpt or "bundled"),
        "device": settings.model.device,
        "dtype": settings.model.dtype,
        "problems": settings.problems_label,
        "settings": settings.describe(),
        "versions": package_versions(),
        "wall_time_s": round(wall_time_s, 1),
        "analyses": [a.name for a in analyses],
        **dict(run_info or {}),  # what actually ran: resolved device / dtype, command line
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
    fingerprints_by_tier = {t: s.get("meta") for t, s in stats_by_tier.items()}
    return summary_html(rows, tiers, run_meta, fingerprints_by_tier)
