"""Run the study over a problem set once, cache it on disk, and let every test read it.

What is computed is the union of the selected analyses' :class:`Requirements` (conditions and
read-outs; :mod:`codi_fixtures.study.conditions`). No analysis runs its own loop: two passes,
each over chunks of problems, serve them all:

1. *clean pass*: per problem, the clean site values (refs for mean / noise /
   resample) and the requested read-outs (the per-layer, per-head attention from ``<eot>``
   to each thought; hidden states at the thoughts' positions);
2. *ablation pass*: per problem, one clean row and one row per condition, all
   branching from the problem's once-encoded question prefix.

Every chunk is written atomically as a shard; an interrupted run resumes from the
finished shards. Chunks are claimed with non-blocking file locks, so pytest-xdist
workers share the work (each on its own device) and merge into one result,
identical to a single-process run. The merged result carries a checksum and is
stored under a fingerprint of (weights, problems, config, and the requirements when they are
not the default ones of RQ1 + RQ2, whose studies keep the key they always had).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import shutil
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from filelock import FileLock, Timeout
from tqdm import tqdm

from codi_fixtures.answers import format_number, numbers_equal
from codi_fixtures.atomic import atomic_write_bytes
from codi_fixtures.config import RunConfig
from codi_fixtures.engine import (
    KnockoutMask,
    LoopState,
    Prompt,
    ThoughtPatch,
    answer_targets,
    build_prompt,
    encode_prompt,
    run_latent,
)
from codi_fixtures.errors import ConfigError
from codi_fixtures.model.architecture import unwrap_peft
from codi_fixtures.model.codi import CodiModel
from codi_fixtures.model.devices import is_out_of_memory
from codi_fixtures.study.batching import resolve_batch_rows
from codi_fixtures.study.conditions import (
    AttentionReadout,
    Condition,
    Dimensions,
    FewerThoughts,
    HiddenReadout,
    Interchange,
    Knockout,
    LensReadout,
    PositionReadout,
    Requirements,
    RoutingReadout,
    conditions_for,
    default_requirements,
)
from codi_fixtures.study.data import problem_set_fingerprint
from codi_fixtures.study.interchange import Donors, ValueDomain, choose_donors
from codi_fixtures.study.interventions import (
    Ablation,
    AblationRef,
    EmbeddingSite,
    build_patch,
    parse_site,
)
from codi_fixtures.study.problems import Problem
from codi_fixtures.study.readouts import collect_readouts
from codi_fixtures.study.results import (
    StudyResults,
    _load_verified,
    _save_verified,
    load_cached_study,
)
from codi_fixtures.study.reuse import reuse_superset, write_index
from codi_fixtures.study.routing import question_width, routing_arrays

__all__ = [
    "CACHE_VERSION",
    "StudyResults",
    "compute_study",
    "conditions_for",
    "default_requirements",
    "dimensions_of",
    "load_cached_study",
    "study_base",
    "study_fingerprint",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_READOUT = "readout__"  # clean-pass shard keys of the hidden-state read-outs
CACHE_VERSION = "5"  # 5: RQ4 counterfactual replays give no donor where ambiguous
# 4: RQ4 counterfactual chains stay in the problem set's values
# 3: a whitespace-only token before the number is not scored
# 2: leave-one-out mean / noise references; KL and logp at the number


def dimensions_of(model: CodiModel) -> Dimensions:
    """The model's depth and number of thoughts (what requirements may depend on)."""
    return Dimensions(
        n_layers=model.n_layers, n_thoughts=model.spec.n_thoughts, n_heads=_n_heads(model)
    )


def study_base(model: CodiModel, problems: Sequence[Problem], cfg: RunConfig) -> dict[str, object]:
    """What a study depends on besides its requirements: weights, problems, config, version."""
    return {
        "model": model.fingerprint,
        "problems": problem_set_fingerprint(problems),
        "config": cfg.fingerprint_dict(),
        "version": CACHE_VERSION,
    }


def study_fingerprint(
    model: CodiModel,
    problems: Sequence[Problem],
    cfg: RunConfig,
    requirements: Requirements | None = None,
) -> str:
    """Cache key over weights, problems, run config, requirements and cache format version.

    The default requirements (:func:`default_requirements`) add nothing to the key, so a study
    cached before analyses were modules is still found; any other set of conditions and
    read-outs is part of the key.
    """
    content = study_base(model, problems, cfg)
    if requirements is not None and requirements != default_requirements(cfg, dimensions_of(model)):
        content["requirements"] = requirements.describe()
    payload = json.dumps(content, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


# --- shards ---------------------------------------------------------------------------------
def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(path, buffer.getvalue())


def _load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """Arrays of a shard, or None if absent or unreadable (then it is recomputed)."""
    if not path.exists():
        return None
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        log.warning("ignoring unreadable shard %s (%s); recomputing", path, err)
        return None


def _claim_shards(
    n_chunks: int,
    path_of: Callable[[int], Path],
    compute: Callable[[int], dict[str, np.ndarray]],
    desc: str,
) -> list[dict[str, np.ndarray]]:
    """Compute missing shards (claiming each with a lock), wait for others', return all."""
    bar = tqdm(total=n_chunks, desc=desc, unit="chunk")
    for i in range(n_chunks):
        if _load_npz(path_of(i)) is None:
            lock = FileLock(str(path_of(i)) + ".lock")
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue  # another worker is on it
            try:
                if _load_npz(path_of(i)) is None:
                    _save_npz(path_of(i), compute(i))
            finally:
                lock.release()
        bar.update(1)
    shards = []
    for i in range(n_chunks):
        shard = _load_npz(path_of(i))
        if shard is None:  # claimed elsewhere: wait for that worker; take over if it died
            with FileLock(str(path_of(i)) + ".lock"):
                shard = _load_npz(path_of(i))
                if shard is None:
                    shard = compute(i)
                    _save_npz(path_of(i), shard)
            bar.update(1)
        shards.append(shard)
    bar.close()
    return shards


# --- running rows ---------------------------------------------------------------------------
@dataclass
class _Rows:
    answer_logits: torch.Tensor  # (R, V+3) at the answer number's first token
    logp: torch.Tensor  # (R,)
    logp_first: torch.Tensor  # (R,)
    answers: list[float | None]
    texts: list[str]
    nonfinite: torch.Tensor  # (R,)

    @classmethod
    def concat(cls, parts: Sequence[_Rows]) -> _Rows:
        return cls(
            torch.cat([p.answer_logits for p in parts]),
            torch.cat([p.logp for p in parts]),
            torch.cat([p.logp_first for p in parts]),
            [a for p in parts for a in p.answers],
            [t for p in parts for t in p.texts],
            torch.cat([p.nonfinite for p in parts]),
        )

    def take(self, index: Sequence[int]) -> _Rows:
        """The rows at ``index``, in that order."""
        idx = torch.tensor(list(index), dtype=torch.long)
        return _Rows(
            self.answer_logits[idx.to(self.answer_logits.device)],
            self.logp[idx.to(self.logp.device)],
            self.logp_first[idx.to(self.logp_first.device)],
            [self.answers[i] for i in index],
            [self.texts[i] for i in index],
            self.nonfinite[idx.to(self.nonfinite.device)],
        )


@dataclass(frozen=True)
class _Group:
    """Rows of one engine call: which prompt rows, with which patch / knockout / loop length."""

    rows: torch.Tensor  # (R,) prompt rows
    patch: ThoughtPatch | None = None
    knockout: KnockoutMask | None = None
    n_thoughts: int | None = None

    def part(self, sl: slice) -> _Group:
        patch = self.patch
        if patch is not None:
            patch = ThoughtPatch(patch.values[sl], patch.mask[sl], patch.layer)
        knockout = self.knockout
        if knockout is not None:
            knockout = KnockoutMask(knockout.blocked[sl], knockout.answer_queries[sl])
        return _Group(self.rows[sl], patch, knockout, self.n_thoughts)


def _run_rows(
    model: CodiModel,
    prompt: Prompt,
    group: _Group,
    targets: tuple[list[list[int]], list[int]],
    cfg: RunConfig,
    prefix: tuple[LoopState, torch.Tensor] | None = None,
) -> _Rows:
    """Run rows in one batch; on out-of-memory, split in halves and retry."""
    rows = group.rows
    try:
        if cfg.max_rows is not None and len(rows) > cfg.max_rows:
            raise torch.OutOfMemoryError(
                f"simulated: {len(rows)} rows exceed the budget of {cfg.max_rows}"
            )
        run = run_latent(
            model,
            prompt,
            rows=rows,
            patch=group.patch,
            targets=targets,
            max_new_tokens=cfg.max_new_tokens,
            n_thoughts=group.n_thoughts,
            knockout=group.knockout,
            prefix=prefix,
        )
    except RuntimeError as err:  # torch.OutOfMemoryError is one
        if not is_out_of_memory(err) or len(rows) == 1:
            raise
        run = None
    if run is None:  # retried outside the handler, so the failed attempt's tensors are freed
        _release_device_memory()
        half = len(rows) // 2
        log.info("out of memory on %d rows; retrying as %d + %d", len(rows), half, len(rows) - half)
        parts = []
        for sl in (slice(0, half), slice(half, None)):
            sub_targets = (targets[0][sl], targets[1][sl])
            parts.append(_run_rows(model, prompt, group.part(sl), sub_targets, cfg, prefix))
        return _Rows.concat(parts)
    assert run.target_logp is not None
    assert run.answer_logits is not None and run.target_first_logp is not None
    return _Rows(
        run.answer_logits,
        run.target_logp,
        run.target_first_logp,
        run.answers,
        run.answer_text,
        run.nonfinite,
    )


def _kl(clean: torch.Tensor, ablated: torch.Tensor, vocab: int) -> torch.Tensor:
    """KL(clean || ablated) over the generatable vocabulary; rows (R, V+3) -> (R,)."""
    lp_c = torch.log_softmax(clean[:, :vocab].double(), dim=-1)
    lp_a = torch.log_softmax(ablated[:, :vocab].double(), dim=-1)
    return (lp_c.exp() * (lp_c - lp_a)).sum(dim=-1)


# --- the two passes -------------------------------------------------------------------------
def _halving_on_oom(
    compute: Callable[[slice], dict[str, np.ndarray]], n: int, what: str
) -> dict[str, np.ndarray]:
    """``compute(slice(0, n))``; where that runs out of memory, its halves' results joined.

    Halves are split again as needed; a single problem that does not fit is a real error.
    Every array ``compute`` returns is per problem (axis 0).
    """

    def run(rows: slice) -> dict[str, np.ndarray]:
        size = rows.stop - rows.start
        try:
            return compute(rows)
        except RuntimeError as err:  # torch.OutOfMemoryError is one
            if not is_out_of_memory(err) or size == 1:
                raise
        # Retried outside the handler: the failed attempt's tensors, which its traceback
        # holds, are freed first.
        _release_device_memory()
        mid = rows.start + size // 2
        log.info(
            "out of memory on %d %s; retrying as %d + %d",
            size,
            what,
            mid - rows.start,
            rows.stop - mid,
        )
        halves = [run(slice(rows.start, mid)), run(slice(mid, rows.stop))]
        return {k: np.concatenate([h[k] for h in halves]) for k in halves[0]}

    return run(slice(0, n))


def _release_device_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class _Encoded:
    """A chunk's prompt and its encoded question prefix, which the two passes can share."""

    prompt: Prompt
    prefix: tuple[LoopState, torch.Tensor]


def _unless_out_of_memory(compute: Callable[[], _T]) -> _T | None:
    """``compute()``, or None where it runs out of device memory (freed after the handler)."""
    try:
        return compute()
    except RuntimeError as err:
        if not is_out_of_memory(err):
            raise
    _release_device_memory()
    return None


def _encode_for_sharing(model: CodiModel, prompt: Prompt) -> _Encoded | None:
    """The chunk's prefix encoded once for both passes; None where that runs out of memory."""
    return _unless_out_of_memory(lambda: _Encoded(prompt, encode_prompt(model, prompt)))


class _Sharing:
    """Runs a pass's rows on a shared encoding until they run out of memory, then on their own.

    A shared prefix holds every problem of the chunk, so halving the rows would not shrink it:
    on the first out-of-memory the encoding is dropped, and this and every later part of the
    pass encodes its own problems (as without sharing: the same numbers).
    """

    def __init__(self, encoded: _Encoded | None) -> None:
        self.encoded = encoded

    def run(
        self, compute: Callable[[_Encoded | None], dict[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        """``compute(encoding)``: on the shared one while there is one, else on its own (None).

        The first call of a pass is on all its rows, so a shared encoding's rows are the rows.
        """
        encoded = self.encoded
        if encoded is not None:
            out = _unless_out_of_memory(lambda: compute(encoded))
            if out is not None:
                return out
            log.info("out of memory with the shared question encoding; encoding per part")
            self.encoded = encoded = None  # dropped, so its memory can go too
            _release_device_memory()
        return compute(None)


def _clean_pass(
    model: CodiModel,
    chunk: Sequence[Problem],
    cfg: RunConfig,
    needs: Requirements,
    step_columns: int = 0,
    routing_width: int = 0,
    keep: list[_Encoded] | None = None,
) -> dict[str, np.ndarray]:
    """The clean run of each problem of ``chunk`` (one row each) and its read-outs.

    With ``keep``, the question prefix is encoded once, up front, and appended to ``keep`` for
    the ablation pass of the same chunk (which then does not encode it again).
    """
    prompt = build_prompt(model, [p.question for p in chunk])
    sharing = _Sharing(_encode_for_sharing(model, prompt) if keep is not None else None)

    def rows_of(rows: slice) -> dict[str, np.ndarray]:
        return sharing.run(
            lambda shared: _clean_rows(
                model,
                chunk[rows],
                prompt if shared is not None else prompt.take(rows),
                cfg,
                needs,
                step_columns,
                routing_width,
                shared,
            ),
        )

    out = _halving_on_oom(rows_of, len(chunk), "problems (clean runs)")
    if keep is not None and sharing.encoded is not None:
        keep.append(sharing.encoded)
    return out


def _clean_rows(
    model: CodiModel,
    chunk: Sequence[Problem],
    prompt: Prompt,
    cfg: RunConfig,
    needs: Requirements,
    step_columns: int,
    routing_width: int,
    shared: _Encoded | None = None,
) -> dict[str, np.ndarray]:
    """``chunk``'s clean rows, branching from ``shared`` (the chunk's encoding) if given."""
    site = parse_site(cfg.site, model.n_layers)
    hidden = [r for r in needs.readouts if isinstance(r, HiddenReadout)]
    capture = [] if isinstance(site, EmbeddingSite) else [site.layer]
    capture += [r.layer for r in hidden if r.layer is not None and r.layer not in capture]
    attention = AttentionReadout() in needs.readouts
    routing = RoutingReadout() in needs.readouts
    run = run_latent(
        model,
        prompt,
        rows=None if shared is None else torch.arange(len(chunk)),
        prefix=None if shared is None else shared.prefix,
        attention_layers=range(model.n_layers) if attention else (),
        capture_layers=capture,
        generate=False,
        routing=routing,
    )
    values = run.thoughts if site.layer is None else run.block_outputs[site.layer]
    n_thoughts = model.spec.n_thoughts
    out = {
        "site_values": values.float().cpu().numpy(),
        "attention": (
            run.attentions.cpu().numpy()
            if run.attentions is not None
            else np.zeros((len(chunk), 0, 0, n_thoughts), dtype=np.float32)
        ),
        "q_len": run.q_lens.cpu().numpy(),
    }
    for readout in hidden:
        states = run.thoughts if readout.layer is None else run.block_outputs[readout.layer]
        out[_READOUT + readout.name] = states.float().cpu().numpy()
    if routing:
        assert run.routing is not None
        arrays = routing_arrays(model, chunk, run.routing, run.q_lens, routing_width)
        out.update({_READOUT + k: v for k, v in arrays.items()})
    out.update(_position_readouts(model, chunk, needs, step_columns, cfg))
    return out


def _position_readouts(
    model: CodiModel,
    chunk: Sequence[Problem],
    needs: Requirements,
    step_columns: int,
    cfg: RunConfig,
) -> dict[str, np.ndarray]:
    """The lens and position read-outs (RQ3), from one more pass over prefix and thoughts."""
    lens = LensReadout() in needs.readouts
    positions = [r for r in needs.readouts if isinstance(r, PositionReadout)]
    if not lens and not positions:
        return {}
    if lens:
        layers = list(range(model.n_layers))
    else:
        layers = sorted({r.layer for r in positions if r.layer is not None})
    n_sites = (2 + model.spec.n_thoughts) * (1 + len(layers))
    readouts = collect_readouts(
        model,
        chunk,
        layers=layers,
        max_steps=step_columns,
        keep_hidden=bool(positions),
        batch=max(1, min(256, (cfg.batch_rows or 512) * 8 // n_sites)),
    )
    out: dict[str, np.ndarray] = {}
    if lens:
        out[_READOUT + "lens-rank"] = readouts.lens_rank
        out[_READOUT + "lens-prob"] = readouts.lens_prob
        out[_READOUT + "lens-tokens"] = readouts.target_tokens
    for readout in positions:
        assert readouts.hidden is not None
        site = 0 if readout.layer is None else 1 + layers.index(readout.layer)
        out[_READOUT + readout.name] = readouts.hidden[:, :, site].astype(np.float16)
    return out


def _n_heads(model: CodiModel) -> int:
    config: Any = unwrap_peft(model.codi).config
    return int(config.num_attention_heads)


def knockout_mask(model: CodiModel, knockouts: Sequence[Knockout | None]) -> KnockoutMask:
    """The engine's per-row mask for run rows with these knockouts (None = nothing blocked)."""
    n_layers, n_heads, n_thoughts = model.n_layers, _n_heads(model), model.spec.n_thoughts
    blocked = torch.zeros((len(knockouts), n_layers, n_heads, n_thoughts), dtype=torch.bool)
    answer = torch.zeros(len(knockouts), dtype=torch.bool)
    for row, ko in enumerate(knockouts):
        if ko is None:
            continue
        layers = list(range(n_layers)) if ko.layers is None else list(ko.layers)
        heads = list(range(n_heads)) if ko.head is None else [ko.head]
        for layer in layers:
            for head in heads:
                blocked[row, layer, head, list(ko.thoughts)] = True
        answer[row] = ko.queries == "answer"
    return KnockoutMask(blocked, answer)


def _ablation_pass(
    model: CodiModel,
    chunk: Sequence[Problem],
    offset: int,
    conditions: Sequence[Condition],
    ref: AblationRef,
    cfg: RunConfig,
    donors: Donors | None = None,
    shared: _Encoded | None = None,
) -> dict[str, np.ndarray]:
    """Per problem the clean row and one row per condition, from one encoding of the prefix.

    Ablations and knockouts are rows of one engine call; each number of thoughts k of the
    :class:`FewerThoughts` conditions is one more call branching from the same prefix.
    ``shared`` is the clean pass's encoding of this very chunk, used instead of encoding again.
    """
    prompt = build_prompt(model, [p.question for p in chunk]) if shared is None else shared.prompt
    sharing = _Sharing(shared)
    shared = None  # only ``sharing`` holds the encoding: it lets go of it on out-of-memory
    return _halving_on_oom(
        lambda rows: sharing.run(
            lambda encoded: _ablation_rows(
                model,
                chunk[rows],
                prompt if encoded is not None else prompt.take(rows),
                offset + rows.start,
                conditions,
                ref,
                cfg,
                donors,
                encoded,
            ),
        ),
        len(chunk),
        "problems (ablation runs)",
    )


def _ablation_rows(
    model: CodiModel,
    chunk: Sequence[Problem],
    prompt: Prompt,
    offset: int,
    conditions: Sequence[Condition],
    ref: AblationRef,
    cfg: RunConfig,
    donors: Donors | None,
    shared: _Encoded | None = None,
) -> dict[str, np.ndarray]:
    n = len(chunk)
    per = 1 + len(conditions)
    golds = [format_number(p.answer) for p in chunk]
    main = [i for i, c in enumerate(conditions) if not isinstance(c, FewerThoughts)]
    fewer: dict[int, list[int]] = {}
    for i, c in enumerate(conditions):
        if isinstance(c, FewerThoughts):
            fewer.setdefault(c.k, []).append(i)
    prefix = encode_prompt(model, prompt) if shared is None else shared.prefix
    parts: list[_Rows] = []
    placed: list[int] = []  # final (problem * per + column) of each produced row, in order
    # clean + ablations + knockouts: one call
    columns = [0, *(1 + i for i in main)]
    rows = torch.arange(n).repeat_interleave(len(columns))
    row_conds: list[Condition | None] = [None, *(conditions[i] for i in main)] * n
    ablations = [c if isinstance(c, Ablation) else None for c in row_conds]
    patch = build_patch(ablations, [offset + int(r) for r in rows], ref)
    if donors is not None:
        layer = parse_site(cfg.site, model.n_layers).layer
        problems = [offset + int(r) for r in rows]
        patch = _interchange_patch(patch, row_conds, problems, ref, donors, layer)
    knockouts = [c if isinstance(c, Knockout) else None for c in row_conds]
    mask = knockout_mask(model, knockouts) if any(k is not None for k in knockouts) else None
    targets = answer_targets(model, [golds[int(r)] for r in rows])
    parts.append(_run_rows(model, prompt, _Group(rows, patch, mask), targets, cfg, prefix))
    placed += [p * per + c for p in range(n) for c in columns]
    for k, idxs in fewer.items():
        rows = torch.arange(n).repeat_interleave(len(idxs))
        targets = answer_targets(model, [golds[int(r)] for r in rows])
        group = _Group(rows, n_thoughts=k)
        parts.append(_run_rows(model, prompt, group, targets, cfg, prefix))
        placed += [p * per + 1 + i for p in range(n) for i in idxs]
    order = [0] * len(placed)
    for produced, final in enumerate(placed):
        order[final] = produced
    out = _Rows.concat(parts) if len(parts) > 1 else parts[0]
    if order != list(range(len(order))):
        out = out.take(order)
    answers = np.array([np.nan if a is None else a for a in out.answers]).reshape(len(chunk), per)
    gold = np.array([p.answer for p in chunk])
    correct = np.array(
        [
            numbers_equal(None if math.isnan(a) else a, g)
            for a, g in zip(answers.ravel(), gold.repeat(per), strict=True)
        ]
    ).reshape(len(chunk), per)
    logits = out.answer_logits.reshape(len(chunk), per, -1)
    clean_logits = logits[:, :1].expand_as(logits).reshape(-1, logits.shape[-1])
    kl = _kl(clean_logits, out.answer_logits, model.base_vocab_size).reshape(len(chunk), per)
    return {
        "answer": answers,
        "correct": correct,
        "logp": out.logp.double().cpu().numpy().reshape(len(chunk), per),
        "logp_first": out.logp_first.double().cpu().numpy().reshape(len(chunk), per),
        "kl": kl.cpu().numpy(),
        "nonfinite": out.nonfinite.cpu().numpy().reshape(len(chunk), per),
        "clean_text": np.array(out.texts[::per]),
    }


def _interchange_patch(
    patch: ThoughtPatch,
    row_conds: Sequence[Condition | None],
    problems: Sequence[int],
    ref: AblationRef,
    donors: Donors,
    layer: int | None,
) -> ThoughtPatch:
    """``patch`` with each :class:`Interchange` row's thought set to its donor's clean value."""
    values, mask = patch.values.clone(), patch.mask.clone()
    tables = {"same": donors.same, "different": donors.different, "random": donors.random}
    for row, (cond, problem) in enumerate(zip(row_conds, problems, strict=True)):
        if not isinstance(cond, Interchange) or cond.step > donors.same.shape[1]:
            continue
        donor = int(tables[cond.donor][problem, cond.step - 1])
        if donor >= 0:
            values[row, cond.thought] = ref.values[donor, cond.thought]
            mask[row, cond.thought] = True
    return ThoughtPatch(values=values, mask=mask, layer=layer)


def _check_requirements(needs: Requirements, cfg: RunConfig, model: CodiModel) -> None:
    """Conditions the runner can batch: one site (the study's), existing thoughts, unique names."""
    site = parse_site(cfg.site, model.n_layers)
    names: dict[str, Condition] = {}
    for condition in needs.conditions:
        if isinstance(condition, Ablation) and condition.site != site:
            raise ConfigError(
                f"condition {condition.name!r} ablates at {condition.site}, but the study's site "
                f"is {site} (--ablation-site): one site per study"
            )
        try:
            if isinstance(condition, Knockout):
                condition.check(model.spec.n_thoughts, model.n_layers)
                if condition.head is not None and condition.head >= _n_heads(model):
                    raise ValueError(
                        f"head {condition.head} out of range: the model has {_n_heads(model)}"
                    )
            else:
                condition.check(model.spec.n_thoughts)
        except ValueError as err:
            raise ConfigError(f"condition {condition.name!r}: {err}") from None
        if names.setdefault(condition.name, condition) != condition:
            raise ConfigError(
                f"two different conditions are named {condition.name!r}; give one a label"
            )
    for readout in needs.readouts:
        if isinstance(readout, HiddenReadout | PositionReadout) and readout.layer is not None:
            if not 0 <= readout.layer < model.n_layers:
                raise ConfigError(
                    f"read-out {readout.name!r}: layer {readout.layer} out of range, the model "
                    f"has {model.n_layers} blocks"
                )


def _step_values(problems: Sequence[Problem], step_columns: int) -> np.ndarray:
    """(N, K) each problem's step values (nan past its chain), then the answer (column K-1)."""
    values = np.full((len(problems), step_columns + 1), np.nan)
    for row, problem in enumerate(problems):
        chain = problem.intermediates[:step_columns]
        values[row, : len(chain)] = chain
        values[row, -1] = problem.answer
    return values


def compute_study(
    model: CodiModel,
    problems: Sequence[Problem],
    cfg: RunConfig,
    cache_dir: Path,
    requirements: Requirements | None = None,
) -> StudyResults:
    """The study's results for (model, problems, cfg): read from cache or computed once.

    ``requirements`` is the union of what the selected analyses need; by default, what RQ1 and
    RQ2 need (:func:`default_requirements`).
    """
    if not problems:
        raise ConfigError("the problem set is empty; nothing to run")
    needs = (
        requirements
        if requirements is not None
        else default_requirements(cfg, dimensions_of(model))
    )
    _check_requirements(needs, cfg, model)
    conditions = list(needs.conditions)
    if (
        any(isinstance(a, Ablation) and a.kind == "resample" for a in conditions)
        and len(problems) < 2
    ):
        raise ConfigError("resample ablation needs at least 2 problems; drop it with --kinds")
    key = study_fingerprint(model, problems, cfg, needs)
    final = cache_dir / f"study-{key}.npz"
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = _load_verified(final)
    if cached is not None:
        return cached
    base = study_base(model, problems, cfg)
    with FileLock(str(final) + ".lock"):
        cached = _load_verified(final)
        if cached is not None:
            return cached
        reused = reuse_superset(cache_dir, base, needs, key)
        if reused is not None:
            _save_verified(final, reused)
            write_index(final, base, needs)
            return reused
        shard_dir = cache_dir / f"study-{key}.shards"
        shard_dir.mkdir(exist_ok=True)
        results = _compute(model, problems, cfg, needs, final, shard_dir)
        write_index(final, base, needs)
        return results


def _compute(
    model: CodiModel,
    problems: Sequence[Problem],
    cfg: RunConfig,
    needs: Requirements,
    final: Path,
    shard_dir: Path,
) -> StudyResults:
    start = time.monotonic()
    batch_rows = resolve_batch_rows(cfg.batch_rows, model, problems, cfg.max_new_tokens)
    cfg = replace(cfg, batch_rows=batch_rows)
    conditions = list(needs.conditions)
    size = max(1, batch_rows // (1 + len(conditions)))  # problems per ablation chunk
    chunks = [list(problems[i : i + size]) for i in range(0, len(problems), size)]
    offsets = [i * size for i in range(len(chunks))]
    clean_size = max(1, batch_rows)  # one row per problem in the clean pass
    clean_chunks = [list(problems[i : i + clean_size]) for i in range(0, len(problems), clean_size)]
    step_columns = max((len(p.intermediates) for p in problems), default=0)
    routing_width = question_width(model, problems) if RoutingReadout() in needs.readouts else 0
    donors = None
    if any(isinstance(c, Interchange) for c in conditions):
        donors = choose_donors(
            problems,
            max_steps=max(step_columns, 1),
            domain=(
                ValueDomain(*cfg.value_domain) if cfg.value_domain else ValueDomain.of(problems)
            ),
            seed=cfg.seed,
        )
    # One chunk per pass, the same problems: the ablation pass reuses the clean pass's
    # encoding of the questions (bit-identical: the same prompt, encoded the same way).
    encoded: list[_Encoded] | None = None
    if len(clean_chunks) == len(chunks) == 1 and RoutingReadout() not in needs.readouts:
        encoded = []
    with torch.no_grad():
        clean = _claim_shards(
            len(clean_chunks),
            lambda i: shard_dir / f"clean-{clean_size}-{i:05d}.npz",
            lambda i: _clean_pass(
                model, clean_chunks[i], cfg, needs, step_columns, routing_width, encoded
            ),
            "clean runs + attention",
        )
        ref = AblationRef.from_values(
            torch.from_numpy(np.concatenate([s["site_values"] for s in clean])), seed=cfg.seed
        )
        ablated = _claim_shards(
            len(chunks),
            lambda i: shard_dir / f"ablate-{size}-{i:05d}.npz",
            lambda i: _ablation_pass(
                model,
                chunks[i],
                offsets[i],
                conditions,
                ref,
                cfg,
                donors,
                encoded.pop() if encoded else None,
            ),
            "ablation runs",
        )
    joined = {k: np.concatenate([s[k] for s in ablated]) for k in ablated[0]}
    results = StudyResults(
        problem_ids=[p.id for p in problems],
        difficulty=[p.difficulty for p in problems],
        gold=np.array([p.answer for p in problems], dtype=np.float64),
        conditions=[a.name for a in conditions],
        clean_answer=joined["answer"][:, 0],
        clean_correct=joined["correct"][:, 0],
        clean_logp=joined["logp"][:, 0],
        clean_text=joined["clean_text"].tolist(),
        clean_nonfinite=joined["nonfinite"][:, 0],
        answer=joined["answer"][:, 1:],
        correct=joined["correct"][:, 1:],
        logp=joined["logp"][:, 1:],
        clean_logp_first=joined["logp_first"][:, 0],
        logp_first=joined["logp_first"][:, 1:],
        kl=joined["kl"][:, 1:],
        nonfinite=joined["nonfinite"][:, 1:],
        attention=np.concatenate([s["attention"] for s in clean]),
        meta={
            "fingerprint": final.stem.removeprefix("study-"),
            "model_fingerprint": model.fingerprint,
            "config": cfg.fingerprint_dict(),
            "n_layers": model.n_layers,
            "n_thoughts": model.spec.n_thoughts,
            "q_len": np.concatenate([s["q_len"] for s in clean]).tolist(),
            "compute_wall_s": round(time.monotonic() - start, 2),
        },
        readouts={
            k.removeprefix(_READOUT): np.concatenate([s[k] for s in clean])
            for k in clean[0]
            if k.startswith(_READOUT)
        },
    )
    if needs != default_requirements(cfg, dimensions_of(model)):
        results.meta["requirements"] = needs.describe()
    if donors is not None or any(
        isinstance(r, LensReadout | PositionReadout) for r in needs.readouts
    ):
        results.readouts["step-values"] = _step_values(problems, step_columns)
    if donors is not None:
        results.readouts["interchange-donors"] = np.stack(
            [donors.same, donors.different, donors.random], axis=-1
        )
        results.readouts["interchange-counterfactual"] = donors.counterfactual
    _save_verified(final, results)
    shutil.rmtree(shard_dir, ignore_errors=True)
    return results
