"""Rendering of figures for the report: PNG (embedded, base64), PDF on request (for print).

The figures themselves belong to the analyses
(:meth:`codi_fixtures.analyses.base.Analysis.figures`); this module only
writes them, reproducibly (no creation dates in the files).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

from matplotlib.figure import Figure

from codi_fixtures.atomic import atomic_write_bytes

__all__ = ["PNG_DPI", "as_base64", "png_base64", "save_figure"]

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
    if not name or Path(name).name != name or name in {".", ".."}:
        raise ValueError(f"figure name must be a plain file stem without '/', got {name!r}")
    out = {}
    for fmt in formats:
        data = _render(fig, fmt)
        atomic_write_bytes(Path(directory) / f"{name}.{fmt}", data)
        out[fmt] = data
    return out


def as_base64(data: bytes) -> str:
    """Base64 text of rendered bytes, for embedding in HTML."""
    return base64.b64encode(data).decode("ascii")


def png_base64(fig: Figure) -> str:
    """Base64 of the figure's PNG bytes, for embedding in HTML."""
    return as_base64(_render(fig, "png"))
