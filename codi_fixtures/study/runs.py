"""Run the study over a problem set once, cache it on disk, and let every test read it.

Two passes, each over chunks of problems:

1. *clean pass*: per problem, the clean site values (refs for mean / noise /
   resample) and the per-layer, per-head attention from ``<eot>`` to each thought;
2. *ablation pass*: per problem, one clean row and one row per condition, all
   branching from the problem's once-encoded question prefix.

Every chunk is written atomically as a shard; an interrupted run resumes from the
finished shards. Chunks are claimed with non-blocking file locks, so pytest-xdist
workers share the work (each on its own device) and merge into one result,
identical to a single-process run. The merged result carries a checksum and is
stored under a fingerprint of (weights, problems, config).
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout
from tqdm import tqdm

from codi_fixtures.answers import format_number, numbers_equal
from codi_fixtures.atomic import atomic_write_bytes, atomic_write_text
from codi_fixtures.config import ABLATION_KINDS, RunConfig
from codi_fixtures.engine import Prompt, ThoughtPatch, answer_targets, build_prompt, run_latent
from codi_fixtures.errors import ConfigError
from codi_fixtures.model.codi import CodiModel
from codi_fixtures.study.data import problem_set_fingerprint
from codi_fixtures.study.interventions import (
    Ablation,
    AblationRef,
    EmbeddingSite,
    build_patch,
    parse_site,
)
from codi_fixtures.study.problems import Problem

__all__ = [
    "CACHE_VERSION",
    "StudyResults",
    "compute_study",
    "conditions_for",
    "load_cached_study",
    "study_fingerprint",
]

log = logging.getLogger(__name__)
CACHE_VERSION = "2"  # 2: leave-one-out mean / noise references; KL and logp at the number


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
    attention: np.ndarray  # (N, L, H, T) <eot> query -> thought keys
    meta: dict[str, object] = field(default_factory=dict)

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
                **arrays,
            )


def conditions_for(cfg: RunConfig, model: CodiModel) -> list[Ablation]:
    """Ablations per problem: each thought alone, then all thoughts, for every kind."""
    unknown = [k for k in cfg.kinds if k not in ABLATION_KINDS]
    if unknown:
        raise ConfigError(
            f"unknown ablation kind {unknown[0]!r}; allowed: {', '.join(ABLATION_KINDS)}"
        )
    try:
        site = parse_site(cfg.site, model.n_layers)
    except ValueError as err:
        raise ConfigError(f"--ablation-site: {err}") from err
    n = model.spec.n_thoughts
    out: list[Ablation] = []
    for kind in cfg.kinds:
        out += [Ablation((t,), kind, site) for t in range(n)]  # type: ignore[arg-type]
        out.append(Ablation(tuple(range(n)), kind, site))  # type: ignore[arg-type]
    return out


def study_fingerprint(model: CodiModel, problems: Sequence[Problem], cfg: RunConfig) -> str:
    """Cache key over weights, problems, run config and cache format version."""
    payload = json.dumps(
        {
            "model": model.fingerprint,
            "problems": problem_set_fingerprint(problems),
            "config": cfg.fingerprint_dict(),
            "version": CACHE_VERSION,
        },
        sort_keys=True,
    )
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


def _run_rows(
    model: CodiModel,
    prompt: Prompt,
    rows: torch.Tensor,
    patch: ThoughtPatch,
    targets: tuple[list[list[int]], list[int]],
    cfg: RunConfig,
) -> _Rows:
    """Run rows in one batch; on out-of-memory, split in halves and retry."""
    try:
        if cfg.max_rows is not None and len(rows) > cfg.max_rows:
            raise torch.OutOfMemoryError(
                f"simulated: {len(rows)} rows exceed the budget of {cfg.max_rows}"
            )
        run = run_latent(
            model,
            prompt,
            rows=rows,
            patch=patch,
            targets=targets,
            max_new_tokens=cfg.max_new_tokens,
        )
    except torch.OutOfMemoryError:
        if len(rows) == 1:
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(rows) // 2
        log.info("out of memory on %d rows; retrying as %d + %d", len(rows), half, len(rows) - half)
        parts = []
        for sl in (slice(0, half), slice(half, None)):
            sub = ThoughtPatch(patch.values[sl], patch.mask[sl], patch.layer)
            parts.append(
                _run_rows(model, prompt, rows[sl], sub, (targets[0][sl], targets[1][sl]), cfg)
            )
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
def _clean_pass(
    model: CodiModel, chunk: Sequence[Problem], cfg: RunConfig
) -> dict[str, np.ndarray]:
    site = parse_site(cfg.site, model.n_layers)
    prompt = build_prompt(model, [p.question for p in chunk])
    capture = [] if isinstance(site, EmbeddingSite) else [site.layer]
    run = run_latent(
        model,
        prompt,
        attention_layers=range(model.n_layers),
        capture_layers=capture,
        generate=False,
    )
    values = run.thoughts if not capture else run.block_outputs[capture[0]]
    assert run.attentions is not None
    return {
        "site_values": values.float().cpu().numpy(),
        "attention": run.attentions.cpu().numpy(),
        "q_len": run.q_lens.cpu().numpy(),
    }


def _ablation_pass(
    model: CodiModel,
    chunk: Sequence[Problem],
    offset: int,
    conditions: Sequence[Ablation],
    ref: AblationRef,
    cfg: RunConfig,
) -> dict[str, np.ndarray]:
    prompt = build_prompt(model, [p.question for p in chunk])
    per = 1 + len(conditions)
    rows = torch.arange(len(chunk)).repeat_interleave(per)
    ablations: list[Ablation | None] = [None, *conditions] * len(chunk)
    problems = [offset + int(r) for r in rows]
    patch = build_patch(ablations, problems, ref)
    golds = [format_number(chunk[int(r)].answer) for r in rows]
    out = _run_rows(model, prompt, rows, patch, answer_targets(model, golds), cfg)
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


def compute_study(
    model: CodiModel,
    problems: Sequence[Problem],
    cfg: RunConfig,
    cache_dir: Path,
) -> StudyResults:
    """The study's results for (model, problems, cfg): read from cache or computed once."""
    if not problems:
        raise ConfigError("the problem set is empty; nothing to run")
    conditions = conditions_for(cfg, model)
    if any(a.kind == "resample" for a in conditions) and len(problems) < 2:
        raise ConfigError("resample ablation needs at least 2 problems; drop it with --kinds")
    key = study_fingerprint(model, problems, cfg)
    final = cache_dir / f"study-{key}.npz"
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = _load_verified(final)
    if cached is not None:
        return cached
    with FileLock(str(final) + ".lock"):
        cached = _load_verified(final)
        if cached is not None:
            return cached
        shard_dir = cache_dir / f"study-{key}.shards"
        shard_dir.mkdir(exist_ok=True)
        return _compute(model, problems, cfg, conditions, final, shard_dir)


def _compute(
    model: CodiModel,
    problems: Sequence[Problem],
    cfg: RunConfig,
    conditions: Sequence[Ablation],
    final: Path,
    shard_dir: Path,
) -> StudyResults:
    start = time.monotonic()
    size = max(1, cfg.batch_rows // (1 + len(conditions)))  # problems per ablation chunk
    chunks = [list(problems[i : i + size]) for i in range(0, len(problems), size)]
    offsets = [i * size for i in range(len(chunks))]
    clean_size = max(1, cfg.batch_rows)  # one row per problem in the clean pass
    clean_chunks = [list(problems[i : i + clean_size]) for i in range(0, len(problems), clean_size)]
    with torch.no_grad():
        clean = _claim_shards(
            len(clean_chunks),
            lambda i: shard_dir / f"clean-{i:05d}.npz",
            lambda i: _clean_pass(model, clean_chunks[i], cfg),
            "clean runs + attention",
        )
        ref = AblationRef.from_values(
            torch.from_numpy(np.concatenate([s["site_values"] for s in clean])), seed=cfg.seed
        )
        ablated = _claim_shards(
            len(chunks),
            lambda i: shard_dir / f"ablate-{i:05d}.npz",
            lambda i: _ablation_pass(model, chunks[i], offsets[i], conditions, ref, cfg),
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
    )
    _save_verified(final, results)
    shutil.rmtree(shard_dir, ignore_errors=True)
    return results


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
