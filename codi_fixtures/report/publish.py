"""Where a run's report goes, and how it replaces the previous one without ever mixing two runs.

Everything a run writes (``report.html``, ``figures/``, ``summary_statistics.json``) goes to a
staging folder beside the target first. Only a run that judged at least one claim publishes:
the old folder is renamed away, the staging folder renamed into place, the old one deleted. A
reader sees the old report or the new one, never a mix; a run that computes no verdicts (a
usage error, a broken study, ``-k`` matching nothing) leaves the previous report untouched.

A run that selects only some claims (``-k``, a file, a test id), or that stops early (``-x``,
``--maxfail``), does not replace the complete report of its tier: it publishes to
``<tier>-partial/`` beside it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ReportTarget"]


PARTIAL_SUFFIX = "-partial"


def _partial(report_dir: Path) -> Path:
    """Where a run over only some claims publishes: ``<report_dir>-partial`` beside it."""
    return report_dir.with_name(report_dir.name + PARTIAL_SUFFIX)


@dataclass(frozen=True)
class ReportTarget:
    """The folder a run publishes to, and the staging folder it writes into meanwhile."""

    final: Path
    staging: Path
    explicit: bool = False  # --report-dir: publish exactly there

    @classmethod
    def for_run(cls, report_dir: Path, *, explicit: bool, complete: bool) -> ReportTarget:
        """``report_dir`` itself for a complete run or an explicit ``--report-dir``."""
        report_dir = report_dir.absolute()
        final = report_dir if explicit or complete else _partial(report_dir)
        staging = final.parent / f".{final.name}.staging-{os.getpid()}"
        return cls(final, staging, explicit)

    def partial(self) -> ReportTarget:
        """The same staging folder, published beside the complete report instead of over it.

        For a run found incomplete only at its end (``-x`` stopped it); an explicit
        ``--report-dir`` is kept.
        """
        if self.explicit or self.final.name.endswith(PARTIAL_SUFFIX):
            return self
        return ReportTarget(_partial(self.final), self.staging)

    def publish(self) -> None:
        """Swap the staging folder into place (the previous report is removed)."""
        if not self.staging.is_dir():
            return
        old = self.final.parent / f".{self.final.name}.old-{os.getpid()}"
        if self.final.exists():
            os.replace(self.final, old)
        os.replace(self.staging, self.final)
        shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        """Drop what this run staged; the previous report stays as it was."""
        shutil.rmtree(self.staging, ignore_errors=True)
