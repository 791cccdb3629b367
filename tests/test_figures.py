"""The analyses' figures on synthetic studies: every figure renders (PNG and PDF)."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from codi_fixtures.analyses import StudyAnalysis, rq1, rq2
from codi_fixtures.config import BUNDLED_CHECKPOINT
from codi_fixtures.model.architecture import LayerRoles
from codi_fixtures.report import figures
from codi_fixtures.study.problems import DIFFICULTY_BINS
from codi_fixtures.study.results import StudyResults
from codi_fixtures.testing import synthetic_study

KINDS = ("zero", "mean")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_PNG_BYTES = 300_000


def analyse(results: StudyResults, layers: LayerRoles | None = None) -> StudyAnalysis:
    """The analysis with small resampling counts, so the tests stay fast."""
    return StudyAnalysis(results, layers=layers or LayerRoles(4, 8, 14), n_boot=200, n_perm=200)


FIGURES: dict[str, Callable[[StudyAnalysis], Figure]] = {
    "importance_by_thought": rq1.importance_by_thought,
    "importance_heatmap": rq1.importance_heatmap,
    "attention_vs_importance": rq2.attention_vs_importance,
    "per_thought_correlations": lambda a: rq2.per_thought_correlations(a, a.layers.middle),
    "head_correlation_map": rq2.head_correlation_map,
    "rq2_position": lambda a: rq2.rq2_layer_scatter(a, a.layers.middle, "position"),
    "rq2_beyond": lambda a: rq2.rq2_layer_scatter(a, a.layers.late, "beyond_position"),
    "rq1_logp": lambda a: rq1.rq1_kind_bars(a, "mean", "logp"),
    "rq1_accuracy": lambda a: rq1.rq1_kind_bars(a, "zero", "accuracy"),
}
ONE_PER_FUNCTION = [n for n in FIGURES if n not in {"rq2_beyond", "rq1_accuracy"}]


@pytest.fixture(scope="module")
def studies() -> dict[str, StudyAnalysis]:
    """Read-only analyses shared by the tests of this module (do not mutate)."""
    return {
        "n12": analyse(synthetic_study(12, seed=1)),
        "n100": analyse(synthetic_study(100, n_nonfinite=3, seed=2)),
        "degenerate": analyse(synthetic_study(10, zero_importance=True, bins=DIFFICULTY_BINS[:3])),
    }


def assert_png(blob: bytes) -> None:
    assert blob.startswith(PNG_MAGIC)
    assert len(blob) < MAX_PNG_BYTES


@pytest.mark.parametrize("name", list(FIGURES))
def test_figure_saves_png_and_pdf(
    name: str, studies: dict[str, StudyAnalysis], tmp_path: Path
) -> None:
    """Each figure of the 100-problem study is written as a small PNG, and a PDF on request."""
    fig = FIGURES[name](studies["n100"])
    assert isinstance(fig, Figure)
    only_png = figures.save_figure(fig, tmp_path / "png", name)
    assert set(only_png) == {"png"}  # the default: PNG only, rendered once
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [f"{name}.png"]
    rendered = figures.save_figure(fig, tmp_path / "figs", name, ("png", "pdf"))
    assert set(rendered) == {"png", "pdf"}
    assert_png(rendered["png"])
    assert (tmp_path / "figs" / f"{name}.png").read_bytes() == rendered["png"]
    assert (tmp_path / "figs" / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == [f"{name}.pdf", f"{name}.png"]


@pytest.mark.parametrize("study", ["n12", "degenerate"])
@pytest.mark.parametrize("name", list(FIGURES))
def test_figure_renders_on_small_and_degenerate_studies(
    name: str, study: str, studies: dict[str, StudyAnalysis]
) -> None:
    """Ten-problem, all-zero-importance and empty-bin studies still give every figure."""
    blob = base64.b64decode(figures.png_base64(FIGURES[name](studies[study])), validate=True)
    assert_png(blob)


@pytest.mark.parametrize(("n_thoughts", "n_layers", "n_heads"), [(1, 4, 1), (8, 5, 3)])
def test_figures_handle_any_shape(n_thoughts: int, n_layers: int, n_heads: int) -> None:
    """Any number of thoughts, layers and heads renders, also when roles share a layer."""
    results = synthetic_study(
        10, n_thoughts=n_thoughts, n_layers=n_layers, n_heads=n_heads, planted_layer=2
    )
    a = analyse(results, LayerRoles(1, 2, 2))
    for name in ONE_PER_FUNCTION:
        build = FIGURES[name]
        assert_png(base64.b64decode(figures.png_base64(build(a))))


def test_degenerate_heatmap_groups_only_nonempty_bins(studies: dict[str, StudyAnalysis]) -> None:
    """An empty difficulty bin gets no row group and no label."""
    fig = rq1.importance_heatmap(studies["degenerate"])
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["2-step (n=4)", "3-step (n=3)", "4-step (n=3)"]


def test_thoughts_are_labelled_zero_based(studies: dict[str, StudyAnalysis]) -> None:
    """Scatter legends name 'thought 0' .. 'thought T-1', never 1-based tokens."""
    fig = rq2.attention_vs_importance(studies["n12"])
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts == [f"thought {t}" for t in range(6)]


def test_save_figure_rejects_paths_as_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="plain file stem"):
        figures.save_figure(Figure(), tmp_path, "../escape")


def test_bad_arguments_raise(studies: dict[str, StudyAnalysis]) -> None:
    a = studies["n12"]
    with pytest.raises(ValueError, match="unknown measure"):
        rq1.rq1_kind_bars(a, "mean", "flips")
    with pytest.raises(ValueError, match="was not run"):
        rq1.rq1_kind_bars(a, "noise", "logp")
    with pytest.raises(ValueError, match="not a role layer"):
        rq2.rq2_layer_scatter(a, 3, "position")
    with pytest.raises(ValueError, match="unknown RQ2 test"):
        rq2.rq2_layer_scatter(a, 8, "spearman")


def test_saved_files_are_reproducible(studies: dict[str, StudyAnalysis], tmp_path: Path) -> None:
    """The same figure saved twice gives identical PNG and PDF bytes (no timestamps)."""
    both = ("png", "pdf")
    first = figures.save_figure(
        rq1.rq1_kind_bars(studies["n12"], "mean", "logp"), tmp_path, "a", both
    )
    again = figures.save_figure(
        rq1.rq1_kind_bars(studies["n12"], "mean", "logp"), tmp_path, "b", both
    )
    for fmt in both:
        assert first[fmt] == again[fmt]
        assert (tmp_path / f"a.{fmt}").read_bytes() == (tmp_path / f"b.{fmt}").read_bytes()


def test_parallel_rendering_matches_serial(
    studies: dict[str, StudyAnalysis], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Figures drawn by forked workers are byte-identical to those drawn here, in order.

    PDFs are rendered here only: their bytes depend on what the process rendered before.
    """
    a = studies["n12"]
    jobs: list[figures.FigureJob] = [(lambda a=a, n=n: FIGURES[n](a), n) for n in FIGURES]
    assert figures._workers(len(jobs), ("png", "pdf")) == 0
    if figures._workers(len(jobs)) == 0:
        pytest.skip("this platform cannot fork, or only one core is usable")
    parallel = figures.render_figures(jobs, tmp_path / "parallel")
    monkeypatch.setattr(figures, "_workers", lambda n_jobs, formats: 0)
    serial = figures.render_figures(jobs, tmp_path / "serial")
    assert parallel == serial
    for name in FIGURES:
        written = (tmp_path / "parallel" / f"{name}.png").read_bytes()
        assert written == (tmp_path / "serial" / f"{name}.png").read_bytes()


def test_a_dead_figure_worker_falls_back_to_serial_rendering(
    studies: dict[str, StudyAnalysis], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker killed mid-figure (out of memory, a signal) costs time, not the report."""
    here = os.getpid()

    def dies_in_a_worker() -> Figure:
        if os.getpid() != here:
            os._exit(1)
        return rq1.importance_heatmap(studies["n12"])

    jobs: list[figures.FigureJob] = [
        (dies_in_a_worker, "a"),
        (lambda: rq1.importance_heatmap(studies["n12"]), "b"),
    ]
    if figures._workers(len(jobs)) == 0:
        pytest.skip("this platform cannot fork, or only one core is usable")
    rendered = figures.render_figures(jobs, tmp_path, ("png",))
    assert rendered[0]["png"] == rendered[1]["png"]
    assert "a figure worker died" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]


def test_a_refused_fork_renders_the_figures_here(
    studies: dict[str, StudyAnalysis],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A fork the system refuses (memory, process limit) costs time, not the report."""
    jobs: list[figures.FigureJob] = [
        (lambda: rq1.importance_heatmap(studies["n12"]), name) for name in ("a", "b")
    ]
    if figures._workers(len(jobs)) == 0:
        pytest.skip("this platform cannot fork, or only one core is usable")

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(figures.ProcessPoolExecutor, "submit", refuse)
    rendered = figures.render_figures(jobs, tmp_path)
    assert rendered[0]["png"] == rendered[1]["png"]
    assert "cannot fork figure workers" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]


def _lightness(cmap: object) -> np.ndarray:
    """CIE L* of 256 samples of a colour map (what a greyscale print shows)."""
    rgb = np.asarray(cmap(np.linspace(0.0, 1.0, 256)))[:, :3]  # type: ignore[operator]
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    y = linear @ np.array([0.2126, 0.7152, 0.0722])
    return np.where(y > 216 / 24389, 116 * np.cbrt(y) - 16, y * 24389 / 27)


def _scale_problem(mappable: object) -> str | None:
    """Why a colour scale is unreadable in greyscale, or None when it is fine.

    Sequential scales must be monotone in lightness (each value has one grey); signed ones
    must diverge from a light centre at 0 (lightness falls monotonically on both sides).
    """
    from matplotlib.colors import Normalize, TwoSlopeNorm

    lightness = _lightness(mappable.get_cmap())  # type: ignore[attr-defined]
    steps = np.diff(lightness)
    norm = mappable.norm  # type: ignore[attr-defined]
    if (steps >= -0.5).all() or (steps <= 0.5).all():
        signed = norm.vmin is not None and norm.vmin < 0 < norm.vmax
        return "signed values on a sequential map (use a diverging one)" if signed else None
    centre = int(np.argmax(lightness))
    if abs(centre - 128) > 8:
        return f"not monotone and not diverging (lightest at {centre}/255)"
    if not ((np.diff(lightness[: centre + 1]) >= -0.5).all()) or not (
        (np.diff(lightness[centre:]) <= 0.5).all()
    ):
        return "a diverging map whose lightness is not monotone on each side"
    if isinstance(norm, TwoSlopeNorm):
        return None if norm.vcenter == 0 else f"diverging map centred at {norm.vcenter}, not 0"
    if isinstance(norm, Normalize) and norm.vmin is not None and norm.vmin == -norm.vmax:
        return None
    return "a diverging map whose centre is not at 0"


@pytest.mark.slow
@pytest.mark.skipif(
    not (BUNDLED_CHECKPOINT / "model.safetensors").exists(), reason="bundled model not built"
)
def test_every_report_figure_reads_in_greyscale(tmp_path: Path) -> None:
    """Every colour scale of every analysis's figures (RQ1-RQ6, bundled quick study)."""
    from codi_fixtures.analyses import BUILTIN_ANALYSES, requirements_of, rq3, rq4
    from codi_fixtures.config import ModelConfig, Settings
    from codi_fixtures.models import load_model
    from codi_fixtures.study.data import load_problems, stratified_sample
    from codi_fixtures.study.runs import compute_study, dimensions_of

    settings = Settings(model=ModelConfig(device="cpu"))
    model = load_model(settings.model)
    problems = stratified_sample(load_problems(BUNDLED_CHECKPOINT / "eval.jsonl"), 10, seed=0)
    analyses = (*BUILTIN_ANALYSES, rq3.Rq3(), rq4.Rq4())
    needs = requirements_of(analyses, settings, dimensions_of(model))
    results = compute_study(model, problems, settings.run, tmp_path, needs)
    view = StudyAnalysis.for_run(results, settings, analyses)
    problems_found, scales = [], 0
    for spec in view.figures():
        fig = spec.draw()
        for ax in fig.axes:
            for mappable in [*ax.images, *ax.collections]:
                if getattr(mappable, "get_array", lambda: None)() is None:
                    continue  # plain markers and lines carry no colour scale
                scales += 1
                problem = _scale_problem(mappable)
                if problem:
                    problems_found.append(f"{spec.name}: {problem}")
    assert scales >= 8  # the heatmaps were drawn
    assert problems_found == []
