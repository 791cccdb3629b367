"""Rendering of figures for the report: PNG (embedded, base64), PDF on request (for print).

The figures themselves belong to the analyses
(:meth:`codi_fixtures.analyses.base.Analysis.figures`); this module only
writes them, reproducibly (no creation dates in the files).
"""

from __future__ import annotations

import base64
import io
import logging
import multiprocessing
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from matplotlib.figure import Figure

from codi_fixtures.atomic import atomic_write_bytes

__all__ = [
    "PNG_DPI",
    "FigureRendering",
    "as_base64",
    "png_base64",
    "render_figures",
    "save_figure",
    "start_rendering",
]

log = logging.getLogger(__name__)

FigureJob = tuple[Callable[[], Figure], str]
"""A figure to make: the function that draws it and its file stem."""

_JOBS: Sequence[FigureJob] = ()
"""The jobs of the rendering under way, inherited by its forked workers."""

PNG_DPI = 100
"""Resolution of the PNGs embedded in the HTML report (small files)."""
PNG_COMPRESS_LEVEL = 1
"""zlib level of the PNGs: 1 encodes ~6x faster than the default 6 for ~11% larger files
(17% of the report's rendering time on the bundled model's RQ1/RQ2 figures)."""


def _render(fig: Figure, fmt: str) -> bytes:
    """The figure rendered to bytes in ``fmt`` (png at PNG_DPI, or pdf)."""
    buffer = io.BytesIO()
    if fmt == "png":
        fig.savefig(
            buffer,
            format="png",
            dpi=PNG_DPI,
            metadata={"Software": None},
            pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL},
        )
    else:
        # No creation date, so that identical figures give identical files.
        fig.savefig(buffer, format=fmt, metadata={"CreationDate": None})
    return buffer.getvalue()


def save_figure(
    fig: Figure, directory: Path, name: str, formats: tuple[str, ...] = ("png",)
) -> dict[str, bytes]:
    """Write ``name.<fmt>`` for each format into ``directory`` atomically; return the bytes.

    Each figure is rendered once per format (PNG by default; PDF on request), and the PNG
    bytes returned here are what the HTML embeds (:func:`as_base64`).
    """
    return render_figures([(lambda: fig, name)], directory, formats)[0]


def _check_stem(name: str) -> None:
    if not name or Path(name).name != name or name in {".", ".."}:
        raise ValueError(f"figure name must be a plain file stem without '/', got {name!r}")


def _draw_and_render(draw: Callable[[], Figure], formats: tuple[str, ...]) -> dict[str, bytes]:
    """The figure ``draw`` makes, rendered in each format."""
    fig = draw()
    return {fmt: _render(fig, fmt) for fmt in formats}


def _draw_and_render_job(index: int, formats: tuple[str, ...]) -> dict[str, bytes]:
    """Job ``index`` of :data:`_JOBS` (in a forked worker, which inherited them)."""
    return _draw_and_render(_JOBS[index][0], formats)


def _workers(n_jobs: int, formats: tuple[str, ...] = ("png",)) -> int:
    """Worker processes for ``n_jobs`` figures: one per usable core; none without fork.

    None for PDF either: matplotlib's PDF bytes depend on what the process rendered
    before (measured: the same heatmap differs after another figure), so only one
    process in a fixed order keeps PDFs reproducible. PNG bytes do not (tested).
    """
    if n_jobs < 2 or formats != ("png",) or "fork" not in multiprocessing.get_all_start_methods():
        return 0
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    cores = (len(usable) if usable is not None else os.cpu_count()) or 1
    return min(n_jobs, cores) if cores > 1 else 0


class FigureRendering:
    """Figures being drawn and rendered, started by :func:`start_rendering`; :meth:`wait`.

    Where the platform can fork, more than one core is usable and only PNGs are asked for
    (the default), forked worker processes draw and render the figures in parallel while
    the caller goes on (the bytes are identical either way); otherwise :meth:`wait`
    renders them here, in order. A fork that fails or a worker that dies (killed, out of
    memory) makes them all render here, one by one, with a warning. Use it as a context
    manager (or call :meth:`close`) where the caller may raise before :meth:`wait`.
    Warnings and log records of the workers' draw functions stay in the workers.
    """

    def __init__(
        self, jobs: Sequence[FigureJob], directory: Path, formats: tuple[str, ...]
    ) -> None:
        for _draw, stem in jobs:
            _check_stem(stem)
        self.jobs, self.directory, self.formats = list(jobs), Path(directory), formats
        self._pool: ProcessPoolExecutor | None = None
        self._futures: list[Future[dict[str, bytes]]] = []
        workers = _workers(len(self.jobs), formats)
        if workers:
            self._start(workers)

    def _start(self, workers: int) -> None:
        global _JOBS
        _JOBS = self.jobs  # inherited by the workers, forked at the first submit
        with warnings.catch_warnings():
            # Python >= 3.12 warns that forking a threaded process may deadlock the child;
            # the workers only draw with numpy and matplotlib (the layer contracts keep torch
            # out of analyses and reports).
            warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
            self._pool = ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("fork")
            )
            try:
                self._futures = [
                    self._pool.submit(_draw_and_render_job, i, self.formats)
                    for i in range(len(self.jobs))
                ]
            except OSError as err:  # fork refused (memory, process limit): render here
                log.warning("cannot fork figure workers (%s); rendering the figures here", err)
                self.close()

    def close(self) -> None:
        """Stop the workers (figures not yet drawn are dropped); safe to call again."""
        global _JOBS
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool, self._futures, _JOBS = None, [], ()

    def __enter__(self) -> FigureRendering:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _collect(self) -> list[dict[str, bytes]] | None:
        """The workers' results, or None where there were none or one died."""
        if self._pool is None:
            return None
        try:
            return [f.result() for f in self._futures]
        except BrokenProcessPool as err:
            log.warning("a figure worker died (%s); rendering the figures here instead", err)
            return None
        finally:
            self.close()

    def wait(self) -> list[dict[str, bytes]]:
        """Every figure's bytes by format, in job order; the files written (atomically)."""
        rendered = self._collect()
        if rendered is None:
            rendered = [_draw_and_render(draw, self.formats) for draw, _stem in self.jobs]
        for (_draw, stem), data in zip(self.jobs, rendered, strict=True):
            for fmt, content in data.items():
                atomic_write_bytes(self.directory / f"{stem}.{fmt}", content)
        return rendered


def start_rendering(
    jobs: Sequence[FigureJob], directory: Path, formats: tuple[str, ...] = ("png",)
) -> FigureRendering:
    """Start drawing and rendering ``jobs`` (in parallel where it can); ``.wait()`` for them."""
    return FigureRendering(jobs, directory, formats)


def render_figures(
    jobs: Sequence[FigureJob], directory: Path, formats: tuple[str, ...] = ("png",)
) -> list[dict[str, bytes]]:
    """Draw, render and write every figure (``stem.<fmt>``, atomically); return the bytes."""
    return start_rendering(jobs, directory, formats).wait()


def as_base64(data: bytes) -> str:
    """Base64 text of rendered bytes, for embedding in HTML."""
    return base64.b64encode(data).decode("ascii")


def png_base64(fig: Figure) -> str:
    """Base64 of the figure's PNG bytes, for embedding in HTML."""
    return as_base64(_render(fig, "png"))
