"""The one pure function that computes an ablation's replacement, and per-row patches.

What an ablation is (data: thoughts, site, kind) is defined in
:mod:`codi_fixtures.study.conditions` and re-exported here. Kinds: ``zero``; ``mean``
(per-thought dataset mean at that site); ``noise`` (Gaussian with the site's per-dimension RMS
over the dataset, seeded); and ``resample`` (the same site of another problem, a seeded
derangement).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from codi_fixtures.config import ABLATION_KINDS, AblationKind
from codi_fixtures.engine import ThoughtPatch
from codi_fixtures.study.conditions import (
    Ablation,
    EmbeddingSite,
    ResidualSite,
    Site,
    parse_site,
)

__all__ = [
    "ABLATION_KINDS",
    "Ablation",
    "AblationKind",
    "AblationRef",
    "EmbeddingSite",
    "ResidualSite",
    "Site",
    "apply",
    "build_patch",
    "parse_site",
    "replacement",
]


@dataclass(frozen=True)
class AblationRef:
    """Dataset statistics an ablation draws from, for one site. N problems, T thoughts."""

    values: torch.Tensor  # (N, T, d) clean site values of every problem
    mean: torch.Tensor  # (N, T, d) leave-one-out: mean over the *other* problems
    noise: torch.Tensor  # (N, T, d) Gaussian draws, per-dimension std = the others' RMS
    donors: torch.Tensor  # (N,) problem whose values a resample takes (never itself)

    @classmethod
    def from_values(cls, values: torch.Tensor, seed: int = 0) -> AblationRef:
        """Statistics of clean site values ``(N, T, d)``; noise and donors seeded.

        Problem i's mean and noise scale come from the other N-1 problems of the set
        (leave-one-out), so an ablated problem never contributes to its own reference.
        """
        values = values.detach().float().cpu()
        n = values.shape[0]
        gen = torch.Generator().manual_seed(seed)
        others = max(n - 1, 1)  # with one problem there is no reference (apply refuses)
        mean = (values.double().sum(dim=0) - values.double()) / others
        rms = ((values.double().pow(2).sum(dim=0) - values.double().pow(2)) / others).sqrt()
        noise = torch.randn(values.shape, generator=gen) * rms.float()
        if n >= 2:
            # A random cyclic shift of a random order: a derangement, uniform enough here.
            order = torch.randperm(n, generator=gen)
            donors = torch.empty(n, dtype=torch.long)
            donors[order] = order.roll(1)
        else:
            donors = torch.full((n,), -1, dtype=torch.long)
        return cls(values=values, mean=mean.float(), noise=noise, donors=donors)


def replacement(ablation: Ablation, ref: AblationRef, problems: torch.Tensor) -> torch.Tensor:
    """What ``ablation`` writes at its thoughts for each of ``problems``: ``(P, len(thoughts), d)``.

    The one definition of the kinds; :func:`apply` and :func:`build_patch` take their values
    from here (a copy of stored values, no arithmetic, so both are exact).
    """
    ablation.check(ref.values.shape[1])
    if ablation.kind != "zero" and ref.values.shape[0] < 2:
        raise ValueError(f"{ablation.kind} ablation needs at least 2 problems in the set")
    idx = torch.tensor(ablation.thoughts, dtype=torch.long)
    if ablation.kind == "zero":
        return ref.values.new_zeros((len(problems), len(idx), ref.values.shape[2]))
    if ablation.kind == "mean":
        source, who = ref.mean, problems
    elif ablation.kind == "noise":
        source, who = ref.noise, problems
    elif ablation.kind == "resample":
        source, who = ref.values, ref.donors[problems]
    else:  # unreachable: validated in Ablation
        raise ValueError(f"unknown ablation kind {ablation.kind!r}")
    return source[who[:, None], idx[None, :]]


def apply(ablation: Ablation, value: torch.Tensor, ref: AblationRef, problem: int) -> torch.Tensor:
    """Site values ``(T, d)`` of problem ``problem`` with the ablation applied (a new tensor)."""
    out = value.detach().clone()
    ablation.check(value.shape[0])
    chosen = replacement(ablation, ref, torch.tensor([problem]))[0]
    out[list(ablation.thoughts)] = chosen.to(out)
    return out


def build_patch(
    ablations: Sequence[Ablation | None], problems: Sequence[int], ref: AblationRef
) -> ThoughtPatch:
    """One patch for a batch of run rows: row ``r`` gets ``ablations[r]`` (None = clean).

    Rows with the same ablation are written together (one indexed copy per condition).
    """
    if len(ablations) != len(problems):
        raise ValueError("one ablation (or None) per row is required")
    sites = {a.site for a in ablations if a is not None}
    if len(sites) > 1:
        raise ValueError(f"a patch applies at one site, got {sorted(map(str, sites))}")
    values = ref.values[list(problems)].clone()  # (R, T, d)
    mask = torch.zeros(values.shape[:2], dtype=torch.bool)
    rows_of: dict[Ablation, list[int]] = {}
    for row, ablation in enumerate(ablations):
        if ablation is not None:
            rows_of.setdefault(ablation, []).append(row)
    for ablation, rows in rows_of.items():
        at = torch.tensor(rows, dtype=torch.long)[:, None]
        idx = torch.tensor(ablation.thoughts, dtype=torch.long)[None, :]
        who = torch.tensor([problems[r] for r in rows], dtype=torch.long)
        values[at, idx] = replacement(ablation, ref, who).to(values)
        mask[at, idx] = True
    layer = next(iter(sites)).layer if sites else None
    return ThoughtPatch(values=values, mask=mask, layer=layer)
