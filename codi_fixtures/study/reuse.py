"""Reuse a cached study that computed more than a run needs (``-k rq1`` after a full run).

Every study written to the cache gets a small index file beside it (what it was computed
for: weights, problems, run config, cache version, and the requirements). A run whose exact
study is not cached looks for one computed for the same model, problems and config whose
requirements contain its own, narrows it to exactly what the run would have computed (its
conditions, in its order; its read-outs), and caches that under its own key, so claims,
figures and the report read the same file as a fresh computation would have written.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from codi_fixtures.atomic import atomic_write_text
from codi_fixtures.study.conditions import (
    AttentionReadout,
    HiddenReadout,
    Interchange,
    LensReadout,
    PositionReadout,
    Requirements,
    RoutingReadout,
)
from codi_fixtures.study.results import StudyResults, load_cached_study

__all__ = ["narrow", "readout_keys", "reuse_superset", "write_index"]

log = logging.getLogger(__name__)

_INDEX_SUFFIX = ".needs.json"


def readout_keys(needs: Requirements) -> set[str]:
    """The ``StudyResults.readouts`` keys a study computed for ``needs`` holds."""
    keys: set[str] = set()
    interchange = any(isinstance(c, Interchange) for c in needs.conditions)
    for readout in needs.readouts:
        if isinstance(readout, HiddenReadout | PositionReadout):
            keys.add(readout.name)
        elif isinstance(readout, LensReadout):
            keys.update(("lens-rank", "lens-prob", "lens-tokens"))
        elif isinstance(readout, RoutingReadout):
            keys.update(
                ("routing", *(f"routing-{p}" for p in ("roles", "operands", "tokens", "steps")))
            )
    if interchange or any(isinstance(r, LensReadout | PositionReadout) for r in needs.readouts):
        keys.add("step-values")
    if interchange:
        keys.update(("interchange-donors", "interchange-counterfactual"))
    return keys


def write_index(study_path: Path, base: dict[str, object], needs: Requirements) -> None:
    """Record beside ``study-<key>.npz`` what it was computed for."""
    content = {"base": base, "requirements": needs.describe()}
    atomic_write_text(
        study_path.with_name(study_path.stem + _INDEX_SUFFIX), json.dumps(content, sort_keys=True)
    )


def narrow(results: StudyResults, needs: Requirements, fingerprint: str) -> StudyResults:
    """``results`` cut to the conditions (in ``needs``' order) and read-outs of ``needs``."""
    columns = [results.column(c.name) for c in needs.conditions]
    attention = results.attention
    if AttentionReadout() not in needs.readouts:
        n, _, _, t = attention.shape
        attention = np.zeros((n, 0, 0, t), dtype=attention.dtype)
    keys = readout_keys(needs)
    meta = dict(results.meta, fingerprint=fingerprint, narrowed_from=results.meta["fingerprint"])
    meta["requirements"] = needs.describe()
    return replace(
        results,
        conditions=[c.name for c in needs.conditions],
        answer=results.answer[:, columns],
        correct=results.correct[:, columns],
        logp=results.logp[:, columns],
        logp_first=results.logp_first[:, columns],
        kl=results.kl[:, columns],
        nonfinite=results.nonfinite[:, columns],
        attention=attention,
        meta=meta,
        readouts={k: v for k, v in results.readouts.items() if k in keys},
    )


def _contains(outer: dict[str, list[str]], inner: dict[str, list[str]]) -> bool:
    return all(set(inner[part]) <= set(outer.get(part, ())) for part in inner)


def reuse_superset(
    cache_dir: Path, base: dict[str, object], needs: Requirements, fingerprint: str
) -> StudyResults | None:
    """A cached study for the same base whose requirements contain ``needs``, narrowed."""
    wanted = needs.describe()
    base = json.loads(json.dumps(base, sort_keys=True))  # as stored: tuples become lists
    for index in sorted(cache_dir.glob("study-*" + _INDEX_SUFFIX)):
        try:
            content = json.loads(index.read_text())
        except (OSError, ValueError):
            continue  # a torn or foreign index is not a match
        if content.get("base") != base or not _contains(content["requirements"], wanted):
            continue
        key = index.name.removeprefix("study-").removesuffix(_INDEX_SUFFIX)
        results = load_cached_study(cache_dir, key)
        if results is None:
            continue
        log.info("reusing cached study %s (computed for more than this run needs)", key)
        return narrow(results, needs, fingerprint)
    return None
