"""The study's results: per problem x condition outcomes and the clean run's read-outs.

Plain numpy arrays (no torch), so analyses and reports read them without a model. Stored as an
``.npz`` without pickles, beside a checksum; :mod:`codi_fixtures.study.runs` computes them.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from codi_fixtures.atomic import atomic_write_bytes, atomic_write_text

__all__ = ["StudyResults", "load_cached_study"]

log = logging.getLogger(__name__)

_READOUT_PREFIX = "readout__"


@dataclass
class StudyResults:
    """Per problem x condition outcomes. N problems, C conditions, L layers, H heads, T thoughts."""

    problem_ids: list[str]
    difficulty: list[str]
    gold: np.ndarray  # (N,)
    conditions: list[str]  # e.g. "t3-mean", "all-zero"
    clean_answer: np.ndarray  # (N,) nan where unparseable
    clean_correct: np.ndarray  # (N,) bool
    clean_logp: np.ndarray  # (N,) log p(gold answer | clean), teacher-forced
    clean_text: list[str]
    clean_nonfinite: np.ndarray  # (N,) bool
    answer: np.ndarray  # (N, C)
    correct: np.ndarray  # (N, C) bool
    logp: np.ndarray  # (N, C) log p(gold answer | ablated): the number's tokens and eos
    clean_logp_first: np.ndarray  # (N,) log p(first token of the gold number | clean)
    logp_first: np.ndarray  # (N, C) the same under each condition
    # (N, C) KL(clean || ablated) at the first token of the answer number, teacher-forced
    # through the answer prompt (the token after <eot> is the fixed word "The": no signal)
    kl: np.ndarray
    nonfinite: np.ndarray  # (N, C) bool
    attention: np.ndarray  # (N, L, H, T) <eot> query -> thought keys; (N, 0, 0, T) if not read
    meta: dict[str, object] = field(default_factory=dict)
    # further read-outs by name (codi_fixtures.study.conditions.HiddenReadout): (N, T, d)
    readouts: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def delta_logp(self) -> np.ndarray:
        """(N, C) log p(gold | clean) - log p(gold | ablated)."""
        return self.clean_logp[:, None] - self.logp

    @property
    def delta_logp_first(self) -> np.ndarray:
        """(N, C) the same for the first token of the gold number alone."""
        return self.clean_logp_first[:, None] - self.logp_first

    def column(self, condition: str) -> int:
        """Index of a condition such as ``t5-mean``."""
        try:
            return self.conditions.index(condition)
        except ValueError:
            raise KeyError(
                f"condition {condition!r} was not run; available: {self.conditions}"
            ) from None

    # --- persistence --------------------------------------------------------------------
    _ARRAYS = (
        "gold clean_answer clean_correct clean_logp clean_nonfinite answer correct logp "
        "clean_logp_first logp_first kl nonfinite attention"
    ).split()

    def to_bytes(self) -> bytes:
        """Serialise as an ``.npz`` (no pickles)."""
        buffer = io.BytesIO()
        arrays = {name: getattr(self, name) for name in self._ARRAYS}
        arrays["problem_ids"] = np.array(self.problem_ids)
        arrays["difficulty"] = np.array(self.difficulty)
        arrays["conditions"] = np.array(self.conditions)
        arrays["clean_text"] = np.array(self.clean_text)
        arrays["meta"] = np.array(json.dumps(self.meta))
        for name, values in self.readouts.items():
            arrays[_READOUT_PREFIX + name] = values
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> StudyResults:
        """Inverse of :meth:`to_bytes`."""
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            arrays = {name: data[name] for name in cls._ARRAYS}
            return cls(
                problem_ids=data["problem_ids"].tolist(),
                difficulty=data["difficulty"].tolist(),
                conditions=data["conditions"].tolist(),
                clean_text=data["clean_text"].tolist(),
                meta=json.loads(str(data["meta"])),
                readouts={
                    k.removeprefix(_READOUT_PREFIX): data[k]
                    for k in data.files
                    if k.startswith(_READOUT_PREFIX)
                },
                **arrays,
            )


def load_cached_study(cache_dir: Path, fingerprint: str) -> StudyResults | None:
    """The cached study with this fingerprint, if present and intact."""
    return _load_verified(cache_dir / f"study-{fingerprint}.npz")


def _save_verified(path: Path, results: StudyResults) -> None:
    blob = results.to_bytes()
    atomic_write_bytes(path, blob)
    digest = hashlib.sha256(blob).hexdigest()
    atomic_write_text(path.with_suffix(".sha256"), digest + "\n")


def _load_verified(path: Path) -> StudyResults | None:
    """A cached result whose checksum matches, else None (a torn or foreign file is ignored)."""
    check = path.with_suffix(".sha256")
    if not (path.exists() and check.exists()):
        return None
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != check.read_text().strip():
        log.warning("cache file %s fails its checksum; recomputing", path)
        return None
    return StudyResults.from_bytes(blob)
