"""What a study computes, as data: intervention conditions, read-outs, and their union.

An analysis declares :class:`Requirements` (conditions and read-outs); the runner
(:func:`codi_fixtures.study.runs.compute_study`) computes the union of every selected
analysis's requirements in one batched pass per problem chunk. No torch here: analyses build
these objects without loading a model.

Sites (DESIGN.md): an ablation replaces the value at a *site* of one or more thoughts, once, at
the thought's position ``Q+1+t``; everything downstream is recomputed by the engine.

- ``EmbeddingSite()``: the thought's input embedding (so its keys/values change at every layer);
- ``ResidualSite(layer=L)``: the output of decoder block ``L`` at the thought's position.

Kinds: ``zero``; ``mean`` (per-thought dataset mean at that site, leave-one-out); ``noise``
(Gaussian with the site's per-dimension RMS over the other problems, seeded); and ``resample``
(the same site of another problem, a seeded derangement). The replacement values are computed
by :func:`codi_fixtures.study.interventions.apply`.

Two more kinds of condition are rows of the same passes: :class:`Knockout` (attention edges
from the ``<eot>`` / answer queries to a thought removed at chosen layers, and heads) and
:class:`FewerThoughts` (the latent loop cut to ``k`` thoughts, then ``<eot>``).

RQ3 / RQ4: :class:`Interchange` (thought t's site value replaced by a donor problem's, the
donor chosen by its step-k value: same / different / random) is a row of the same passes;
:class:`LensReadout` (logit-lens ranks of each step value's first token) and
:class:`PositionReadout` (hidden states at the question's last token, ``<bot>`` and the
thoughts, float16) are read-outs of the clean run.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Literal

from codi_fixtures.config import ABLATION_KINDS, AblationKind, RunConfig
from codi_fixtures.errors import ConfigError

__all__ = [
    "DONOR_KINDS",
    "Ablation",
    "AttentionReadout",
    "Condition",
    "Dimensions",
    "EmbeddingSite",
    "FewerThoughts",
    "HiddenReadout",
    "Interchange",
    "Knockout",
    "LensReadout",
    "PositionReadout",
    "QueryScope",
    "Readout",
    "Requirements",
    "ResidualSite",
    "RoutingReadout",
    "Site",
    "all_subsets",
    "conditions_for",
    "default_requirements",
    "parse_site",
    "readout_positions",
    "subset_ablations",
    "subset_label",
]


@dataclass(frozen=True)
class EmbeddingSite:
    """The input embedding of a thought."""

    @property
    def layer(self) -> None:
        """No decoder block: the patch applies before block 0."""
        return None

    def __str__(self) -> str:
        return "embedding"


@dataclass(frozen=True)
class ResidualSite:
    """The output of decoder block ``layer`` at a thought's position."""

    layer: int

    def __post_init__(self) -> None:
        if self.layer < 0:
            raise ValueError(f"residual site layer must be >= 0, got {self.layer}")

    def __str__(self) -> str:
        return f"block{self.layer}"


Site = EmbeddingSite | ResidualSite


def parse_site(text: str, n_layers: int) -> Site:
    """``embedding`` or ``blockL`` / ``block:L`` (0 <= L < n_layers)."""
    if text == "embedding":
        return EmbeddingSite()
    match = re.fullmatch(r"block:?(\d+)", text)
    if match:
        layer = int(match.group(1))
        if layer >= n_layers:
            raise ValueError(
                f"site {text!r}: layer {layer} out of range, the model has {n_layers} blocks "
                f"(0..{n_layers - 1})"
            )
        return ResidualSite(layer)
    raise ValueError(f"unknown ablation site {text!r}; use 'embedding' or 'block<L>' (e.g. block8)")


@dataclass(frozen=True)
class Ablation:
    """Ablate ``thoughts`` (0-based) at ``site`` with ``kind`` (a condition of the study).

    ``label`` names the condition's column in the results; without it a single thought is
    ``t3-mean`` and several thoughts ``all-mean`` (so a subset that is not every thought needs
    a label of its own, e.g. ``t0+t1-zero``).
    """

    thoughts: tuple[int, ...]
    kind: AblationKind
    site: Site = EmbeddingSite()
    label: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ABLATION_KINDS:
            raise ValueError(
                f"unknown ablation kind {self.kind!r}; allowed: {', '.join(ABLATION_KINDS)}"
            )
        if not self.thoughts:
            raise ValueError("an ablation needs at least one thought")
        if any(t < 0 for t in self.thoughts):
            raise ValueError(f"thought indices must be >= 0, got {self.thoughts}")

    @property
    def name(self) -> str:
        """Readable id: ``t3-mean``, ``all-mean`` for several thoughts, or the label."""
        if self.label is not None:
            return self.label
        who = f"t{self.thoughts[0]}" if len(self.thoughts) == 1 else "all"
        return f"{who}-{self.kind}"

    def check(self, n_thoughts: int) -> None:
        """Raise when a thought index does not exist in an ``n_thoughts`` model."""
        bad = [t for t in self.thoughts if t >= n_thoughts]
        if bad:
            raise ValueError(
                f"thought index {bad[0]} out of range: the model has {n_thoughts} thoughts "
                f"(0..{n_thoughts - 1})"
            )

    def describe(self) -> str:
        """Everything that defines the condition, for the cache fingerprint."""
        thoughts = ",".join(map(str, self.thoughts))
        return f"{self.name}={self.kind}@{self.site}[{thoughts}]"


QueryScope = Literal["eot", "answer"]
"""``eot``: only the ``<eot>`` query; ``answer``: ``<eot>`` and every answer position after it."""
QUERY_SCOPES: tuple[str, ...] = ("eot", "answer")


@dataclass(frozen=True)
class Knockout:
    """Block the attention edge from the chosen queries to ``thoughts`` (a condition).

    ``layers`` None = every layer at once; ``head`` None = every head. ``thoughts=()`` blocks
    nothing (the run equals the clean one exactly). Default name: ``ko-t3-L2-answer``,
    ``ko-t3-Lall-eot``, ``ko-t3-L2-h1-answer``.
    """

    thoughts: tuple[int, ...]
    layers: tuple[int, ...] | None = None
    queries: QueryScope = "answer"
    head: int | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        if self.queries not in QUERY_SCOPES:
            raise ValueError(f"unknown query scope {self.queries!r}; allowed: eot, answer")
        if any(t < 0 for t in self.thoughts):
            raise ValueError(f"thought indices must be >= 0, got {self.thoughts}")
        if self.layers is not None and (not self.layers or any(v < 0 for v in self.layers)):
            raise ValueError("layer indices must be a non-empty tuple of ints >= 0")
        if self.head is not None and self.head < 0:
            raise ValueError(f"head index must be >= 0, got {self.head}")

    @property
    def name(self) -> str:
        """Readable id (the results column), or the label."""
        if self.label is not None:
            return self.label
        who = ",".join(map(str, self.thoughts)) or "none"
        where = "all" if self.layers is None else ",".join(map(str, self.layers))
        head = "" if self.head is None else f"-h{self.head}"
        return f"ko-t{who}-L{where}{head}-{self.queries}"

    def check(self, n_thoughts: int, n_layers: int | None = None) -> None:
        """Raise when a thought or layer index does not exist in the model."""
        bad = [t for t in self.thoughts if t >= n_thoughts]
        if bad:
            raise ValueError(
                f"thought index {bad[0]} out of range: the model has {n_thoughts} thoughts "
                f"(0..{n_thoughts - 1})"
            )
        if n_layers is not None and self.layers is not None:
            bad = [layer for layer in self.layers if layer >= n_layers]
            if bad:
                raise ValueError(
                    f"layer {bad[0]} out of range: the model has {n_layers} blocks "
                    f"(0..{n_layers - 1})"
                )

    def describe(self) -> str:
        """Everything that defines the condition, for the cache fingerprint."""
        thoughts = ",".join(map(str, self.thoughts))
        where = "all" if self.layers is None else ",".join(map(str, self.layers))
        head = "all" if self.head is None else str(self.head)
        return f"{self.name}=knockout[{thoughts}]@L{where}h{head}q{self.queries}"


@dataclass(frozen=True)
class FewerThoughts:
    """Run the latent loop for ``k`` thoughts only, then ``<eot>`` (a condition; k >= 0)."""

    k: int
    label: str | None = None

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ValueError(f"the number of thoughts must be >= 0, got {self.k}")

    @property
    def name(self) -> str:
        """``k3-thoughts``, or the label."""
        return self.label if self.label is not None else f"k{self.k}-thoughts"

    def check(self, n_thoughts: int) -> None:
        """Raise when ``k`` exceeds the model's number of thoughts."""
        if self.k > n_thoughts:
            raise ValueError(f"k={self.k} exceeds the model's {n_thoughts} thoughts")

    def describe(self) -> str:
        """For the cache fingerprint."""
        return f"{self.name}=fewer[{self.k}]"


DonorKind = Literal["same", "different", "random"]
DONOR_KINDS: tuple[str, ...] = ("same", "different", "random")


@dataclass(frozen=True)
class Interchange:
    """Replace thought ``thought``'s site value by a donor problem's clean one (a condition).

    The donor is chosen per problem by its value at ``step`` (1-based; the runner's seeded
    table, :func:`codi_fixtures.study.interchange.choose_donors`): ``same`` value, a
    ``different`` value whose counterfactual answer (the problem's chain replayed from that
    step with the donor's value) differs from the gold answer, or a ``random`` other problem
    (the baseline). A problem without such a donor (no step values, or none that qualifies) gets
    no patch in that row, and the donor table says so (``-1``). Patched at the study's site
    (the input embedding by default). Name: ``ic-t2-s3-different``.
    """

    thought: int
    step: int
    donor: DonorKind
    label: str | None = None

    def __post_init__(self) -> None:
        if self.donor not in DONOR_KINDS:
            raise ValueError(f"unknown donor kind {self.donor!r}; allowed: same, different, random")
        if self.thought < 0:
            raise ValueError(f"thought index must be >= 0, got {self.thought}")
        if self.step < 1:
            raise ValueError(f"steps are 1-based, got {self.step}")

    @property
    def name(self) -> str:
        """``ic-t2-s3-different``, or the label."""
        if self.label is not None:
            return self.label
        return f"ic-t{self.thought}-s{self.step}-{self.donor}"

    def check(self, n_thoughts: int) -> None:
        """Raise when the thought does not exist in an ``n_thoughts`` model."""
        if self.thought >= n_thoughts:
            raise ValueError(
                f"thought index {self.thought} out of range: the model has {n_thoughts} thoughts "
                f"(0..{n_thoughts - 1})"
            )

    def describe(self) -> str:
        """For the cache fingerprint."""
        return f"{self.name}=interchange[t{self.thought},s{self.step},{self.donor}]"


Condition = Ablation | Knockout | FewerThoughts | Interchange


@dataclass(frozen=True)
class AttentionReadout:
    """Attention from the ``<eot>`` query to each thought's key, every layer and head (clean run).

    Stored as ``StudyResults.attention``: (N, L, H, T), per query head for grouped-query
    attention.
    """

    name = "attention"

    def describe(self) -> str:
        """For the cache fingerprint."""
        return "attention:eot->thoughts:all-layers"


@dataclass(frozen=True)
class HiddenReadout:
    """The hidden state at each thought's position in the clean run (probes, logit lens).

    ``layer=None`` is the thought's input embedding (what position ``Q+1+t`` receives); ``L``
    is the output of decoder block ``L`` there. Stored as ``StudyResults.readouts[name]``:
    (N, T, d) float32.
    """

    layer: int | None = None

    @property
    def name(self) -> str:
        """``hidden-embedding`` or ``hidden-block<L>``."""
        return "hidden-embedding" if self.layer is None else f"hidden-block{self.layer}"

    def describe(self) -> str:
        """For the cache fingerprint."""
        return self.name


def readout_positions(n_thoughts: int) -> tuple[str, ...]:
    """Positions of :class:`LensReadout` / :class:`PositionReadout`: ``q_last, bot, t0..``."""
    return ("q_last", "bot", *(f"t{t}" for t in range(n_thoughts)))


@dataclass(frozen=True)
class LensReadout:
    """Logit lens of the clean run (RQ3): final norm + LM head on every hidden state read.

    At positions :func:`readout_positions` (the question's last token, ``<bot>``, each
    thought) x sites (the input embedding, then every block's output), the rank (0 = top-1)
    and probability of the first token of each step value and of the answer (as it follows
    the answer prompt). Stored in ``StudyResults.readouts``: ``lens-rank`` (N, P, 1+L, K)
    int32 (-1 = no such target, or its first token does not spell the value) and
    ``lens-prob`` (float32), ``lens-tokens`` (N, K) and ``step-values`` (N, K): K-1 step
    columns (the longest chain of the problem set) then the answer.
    """

    name = "lens"

    def describe(self) -> str:
        """For the cache fingerprint."""
        return "lens:first-token(steps,answer)@q_last,bot,thoughts:embedding+all-blocks"


@dataclass(frozen=True)
class PositionReadout:
    """Hidden states at :func:`readout_positions` in the clean run, float16 (probes, RQ3).

    ``layer=None``: the input embedding there (a token embedding for ``q_last`` / ``<bot>``,
    the fed latent for a thought); ``L``: block L's output. Stored as
    ``StudyResults.readouts[name]``: (N, 2 + T, d) float16.
    """

    layer: int | None = None

    @property
    def name(self) -> str:
        """``positions-embedding`` or ``positions-block<L>``."""
        return "positions-embedding" if self.layer is None else f"positions-block{self.layer}"

    def describe(self) -> str:
        """For the cache fingerprint."""
        return self.name + ":float16"


@dataclass(frozen=True)
class RoutingReadout:
    """Attention from the query that produces each thought to every question token (RQ6).

    Thought t's input is computed at position ``Q+t`` (``<bot>`` for t = 0, thought t-1
    after; DESIGN.md), so that query's attention, per layer and averaged over heads, to the
    question's positions ``0..Q-1`` (BOS and an eos before ``<bot>`` included), read in the
    clean pass. Stored in ``StudyResults.readouts``: ``routing`` (N, L, T, Qmax) float16,
    NaN past each question's ``q_len``; ``routing-roles`` (N, Qmax) int8 role codes and
    ``routing-operands`` (N, Qmax) int32 step bit masks
    (:mod:`codi_fixtures.study.roles`), ``routing-tokens`` (N, Qmax) the tokens' text and
    ``routing-steps`` (N,) the equations parsed from each problem's chain (0 = none).
    """

    name = "routing"

    def describe(self) -> str:
        """For the cache fingerprint."""
        return "routing:producing-query->question:all-layers:head-mean:float16"


Readout = AttentionReadout | HiddenReadout | LensReadout | PositionReadout | RoutingReadout


@dataclass(frozen=True)
class Dimensions:
    """What requirements may depend on: the model's depth and number of thoughts."""

    n_layers: int
    n_thoughts: int
    n_heads: int | None = None  # query heads per layer (None where unknown)


def _unique(items: tuple[object, ...]) -> tuple[object, ...]:
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True)
class Requirements:
    """What one or more analyses need computed: conditions (rows) and read-outs (clean run).

    ``a | b`` is the union, in order of first appearance, so the union of RQ1's and RQ2's
    requirements is exactly the study computed before analyses were separate modules.
    """

    conditions: tuple[Condition, ...] = ()
    readouts: tuple[Readout, ...] = ()

    def __or__(self, other: Requirements) -> Requirements:
        return Requirements(
            conditions=_unique(self.conditions + other.conditions),  # type: ignore[arg-type]
            readouts=_unique(self.readouts + other.readouts),  # type: ignore[arg-type]
        )

    def describe(self) -> dict[str, list[str]]:
        """A JSON-able description (the cache fingerprint of a non-default study)."""
        return {
            "conditions": [c.describe() for c in self.conditions],
            "readouts": [r.describe() for r in self.readouts],
        }


def all_subsets(n_thoughts: int, *, max_size: int | None = None) -> list[tuple[int, ...]]:
    """Every non-empty subset of ``range(n_thoughts)``, by size, then lexicographic (63 for 6)."""
    top = n_thoughts if max_size is None else min(max_size, n_thoughts)
    return [s for k in range(1, top + 1) for s in itertools.combinations(range(n_thoughts), k)]


def subset_label(subset: tuple[int, ...], kind: str, n_thoughts: int) -> str:
    """The results column of a subset ablation: ``t3-mean``, ``all-mean``, ``t0+t3-mean``."""
    if len(subset) == n_thoughts:
        return f"all-{kind}"
    return "+".join(f"t{t}" for t in subset) + f"-{kind}"


def subset_ablations(
    n_thoughts: int, kind: AblationKind, site: Site = EmbeddingSite()
) -> list[Ablation]:
    """One ablation per non-empty subset (RQ5), in :func:`all_subsets` order.

    Single thoughts and all thoughts keep their usual names (``t3-mean``, ``all-mean``), so
    they are the very conditions RQ1 runs.
    """
    out = []
    for subset in all_subsets(n_thoughts):
        single_or_all = len(subset) in (1, n_thoughts)
        label = None if single_or_all else subset_label(subset, kind, n_thoughts)
        out.append(Ablation(subset, kind, site, label=label))
    return out


def conditions_for(cfg: RunConfig, dims: Dimensions) -> list[Ablation]:
    """Ablations per problem: each thought alone, then all thoughts, for every kind."""
    unknown = [k for k in cfg.kinds if k not in ABLATION_KINDS]
    if unknown:
        raise ConfigError(
            f"unknown ablation kind {unknown[0]!r}; allowed: {', '.join(ABLATION_KINDS)}"
        )
    try:
        site = parse_site(cfg.site, dims.n_layers)
    except ValueError as err:
        raise ConfigError(f"--ablation-site: {err}") from err
    n = dims.n_thoughts
    out: list[Ablation] = []
    for kind in cfg.kinds:
        out += [Ablation((t,), kind, site) for t in range(n)]  # type: ignore[arg-type]
        out.append(Ablation(tuple(range(n)), kind, site))  # type: ignore[arg-type]
    return out


def default_requirements(cfg: RunConfig, dims: Dimensions) -> Requirements:
    """What RQ1 + RQ2 need: every kind's conditions and the attention read-out.

    This is the study as it was computed before analyses declared their needs, so its cache
    key is unchanged.
    """
    return Requirements(tuple(conditions_for(cfg, dims)), (AttentionReadout(),))
