"""Benchmark: the seed project's per-condition algorithm against the batched engine.

The *reference* below re-implements the seed's algorithm with plain Hugging Face
calls on ``model.codi`` (batch 1, a fresh ``DynamicCache`` per pass, nothing
shared between passes; it never calls ``codi_fixtures.engine``):

1. per problem, a clean greedy generation (question [+BOS] + ``<bot>``, six
   thoughts at positions Q+1+t, ``<eot>``, then answer tokens until a stop id,
   at most ``--max-new-tokens``, 200 by default as in the seed), and six passes
   (one per thought) that re-encode the question and rerun the latent loop to
   cache the clean activations;
2. the ablation value per thought (``zero``, or ``mean``: the per-thought mean
   of the cached clean thought input embeddings over the N problems);
3. per problem and thought, a full re-encode + latent loop + generation with
   that one thought's input embedding replaced;
4. per problem, one more pass with ``output_attentions`` for the attention from
   the ``<eot>`` query to the six thoughts at the three role layers.

The seed interleaved steps 1 and 3 per problem; the mean needs every problem's
activations first, so the loops are split. The work done is the same.

The *engine* side is ``codi_fixtures.study.runs.compute_study`` with one ablation kind
(it also runs the all-thoughts condition, teacher-forced scoring and attention at
every layer: extra work on its side). Each phase runs in a fresh ``spawn`` child
process, one after the other, so its peak RSS (``ru_maxrss``) is its own.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/seed_vs_engine.py --n 100
    python benchmarks/seed_vs_engine.py --n 20 --ckpt /tmp/orgtest/out --max-new-tokens 8
    python benchmarks/seed_vs_engine.py --scaling --json reports/bench.json

Exit status: 0 when every clean and single-thought answer agrees and the attention
agrees within ``--atol``; 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import multiprocessing
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from transformers import DynamicCache

from codi_fixtures.answers import format_number, parse_answer
from codi_fixtures.config import (
    ABLATION_KINDS,
    BUNDLED_CHECKPOINT,
    ModelConfig,
    RunConfig,
    parse_batch_rows,
)
from codi_fixtures.model import budget
from codi_fixtures.model.architecture import layer_roles, unwrap_peft
from codi_fixtures.model.checkpoint import CodiSpec
from codi_fixtures.model.codi import CodiModel
from codi_fixtures.model.kvcache import cache_kwargs
from codi_fixtures.models import load_model
from codi_fixtures.study.data import load_problems, stratified_sample
from codi_fixtures.study.problems import DIFFICULTY_BINS, Problem

log = logging.getLogger("seed_vs_engine")

SEED_MAX_NEW_TOKENS = 200  # the seed project's generation cap
ENGINE_MAX_NEW_TOKENS = RunConfig().max_new_tokens
EXTRA_PROBLEM_SEED = 7_000_001  # make_splits seed for problems beyond the checkpoint's eval set
SCALING_NS = (10, 100, 1000)
KL_ATOL, KL_RTOL = 1e-6, 1e-3  # float32 noise in KL is ~1e-8 here; an off-by-one ablation is not


# --- the seed's algorithm, re-implemented -------------------------------------------------
class SeedReference:
    """Per-condition, batch-1 CODI inference with plain Hugging Face calls."""

    def __init__(self, model: CodiModel, max_new_tokens: int, layers: Sequence[int]) -> None:
        self.model = model
        self.lm = model.codi
        self.n_thoughts = model.spec.n_thoughts
        self.vocab = model.base_vocab_size  # greedy never emits pad, <bot> or <eot>
        self.stops = set(model.stop_ids)
        self.max_new_tokens = max_new_tokens
        self.layers = list(layers)
        self.device = model.device

    def _forward(
        self,
        cache: DynamicCache,
        *,
        ids: list[int] | None = None,
        embeds: torch.Tensor | None = None,
        attentions: bool = False,
    ) -> Any:
        input_ids = None if ids is None else torch.tensor([ids], device=self.device)
        return self.lm(
            input_ids=input_ids,
            inputs_embeds=embeds,
            **cache_kwargs(self.lm, cache),
            use_cache=True,
            output_hidden_states=True,
            output_attentions=attentions,
        )

    def question_ids(self, question: str) -> list[int]:
        """Positions 0..Q-1: the question (BOS as the tokenizer adds it) [+ eos]."""
        ids = list(self.model.tokenizer(question)["input_ids"])
        return [*ids, self.model.eos_id] if self.model.spec.eos_before_bot else ids

    def latent(
        self,
        question: str,
        replace: tuple[int, torch.Tensor] | None = None,
        *,
        eot: bool = True,
        attentions: bool = False,
    ) -> tuple[DynamicCache, torch.Tensor, Any, int]:
        """Encode question + ``<bot>``, feed the thoughts, then ``<eot>`` (when ``eot``).

        ``replace`` (t, value) swaps thought t's input embedding for ``value``.
        Returns (cache, thought inputs (T, d), the ``<eot>`` output or None, Q).
        """
        q_ids = self.question_ids(question)
        cache = DynamicCache()
        out = self._forward(cache, ids=[*q_ids, self.model.bot_id], attentions=attentions)
        z = self.model.project(out.hidden_states[-1][:, -1])  # thought 0, from <bot>
        fed = []
        for t in range(self.n_thoughts):
            if replace is not None and replace[0] == t:
                z = replace[1].to(device=z.device, dtype=z.dtype)[None]
            fed.append(z[0])
            out = self._forward(cache, embeds=z[:, None], attentions=attentions)
            z = self.model.project(out.hidden_states[-1][:, -1])
        eot_out = None
        if eot:
            eot_embed = self.model.embed(torch.tensor([[self.model.eot_id]], device=self.device))
            eot_out = self._forward(cache, embeds=eot_embed, attentions=attentions)
        return cache, torch.stack(fed), eot_out, len(q_ids)

    def generate(
        self, question: str, replace: tuple[int, torch.Tensor] | None = None
    ) -> tuple[str, torch.Tensor]:
        """Greedy answer text, first token from ``<eot>``, stop at a stop id or the cap.

        Also returns the ``<eot>`` logits over the generatable vocabulary (float32).
        """
        cache, _, out, _ = self.latent(question, replace)
        first = out.logits[0, -1, : self.vocab].float()
        ids: list[int] = []
        for step in range(self.max_new_tokens):
            token = int(out.logits[0, -1, : self.vocab].argmax())
            ids.append(token)
            if token in self.stops or step == self.max_new_tokens - 1:
                break
            out = self._forward(cache, ids=[token])
        return str(self.model.tokenizer.decode(ids, skip_special_tokens=True)), first

    def cache_activations(self, question: str) -> torch.Tensor:
        """A fresh encode + latent loop; the clean thought input embeddings (T, d)."""
        return self.latent(question, eot=False)[1].float()

    def attention(self, question: str) -> torch.Tensor:
        """(layers, heads, T): ``<eot>`` query -> thought keys at ``self.layers``."""
        _, _, out, q_len = self.latent(question, attentions=True)
        start = q_len + 1  # thought 0
        stop = start + self.n_thoughts
        return torch.stack([out.attentions[i][0, :, -1, start:stop] for i in self.layers]).float()

    def run(self, problems: Sequence[Problem], kind: str) -> dict[str, Any]:
        """The whole study, seed-style. Answers are parsed numbers (NaN when none)."""
        prompt = self.model.spec.answer_prompt
        n, n_thoughts = len(problems), self.n_thoughts
        clean = np.full(n, np.nan)
        texts: list[str] = []
        cached, clean_logits = [], []
        for i, problem in enumerate(tqdm(problems, desc="reference: clean + caching", unit="pb")):
            text, logits = self.generate(problem.question)
            texts.append(text)
            clean_logits.append(logits)
            clean[i] = _number(parse_answer(text, prompt))
            per_thought = [self.cache_activations(problem.question) for _ in range(n_thoughts)]
            cached.append(per_thought[0])
        values = torch.stack(cached)  # (N, T, d)
        if kind == "zero":
            ablate = torch.zeros_like(values)
        elif kind == "mean":  # leave-one-out, as the engine's DESIGN defines it
            ablate = (values.sum(dim=0, keepdim=True) - values) / max(len(values) - 1, 1)
        else:
            raise ValueError(f"the reference implements zero and mean ablation, not {kind!r}")
        ablated = np.full((n, n_thoughts), np.nan)
        kl = np.full((n, n_thoughts), np.nan)
        for i, problem in enumerate(tqdm(problems, desc="reference: ablations", unit="pb")):
            for t in range(n_thoughts):
                text, logits = self.generate(problem.question, (t, ablate[i, t]))
                ablated[i, t] = _number(parse_answer(text, prompt))
                kl[i, t] = _kl(clean_logits[i], logits)
        attn = [
            self.attention(p.question)
            for p in tqdm(problems, desc="reference: attention", unit="pb")
        ]
        return {
            "clean": clean,
            "ablated": ablated,
            "kl": kl,
            "clean_text": texts,
            "attention": torch.stack(attn).numpy(),
        }


def _kl(clean: torch.Tensor, ablated: torch.Tensor) -> float:
    """KL(clean || ablated) of the first answer token, in float64."""
    lp_c = torch.log_softmax(clean.double(), dim=-1)
    lp_a = torch.log_softmax(ablated.double(), dim=-1)
    return float((lp_c.exp() * (lp_c - lp_a)).sum())


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


# --- the engine ------------------------------------------------------------------------------
def run_engine(
    model: CodiModel, problems: Sequence[Problem], kinds: tuple[str, ...], cfg: dict[str, Any]
) -> dict[str, Any]:
    """``compute_study`` into a fresh cache directory; per-problem outputs for comparison."""
    from codi_fixtures.study.runs import compute_study

    run_cfg = RunConfig(
        kinds=kinds, batch_rows=cfg["batch_rows"], max_new_tokens=cfg["engine_max_new_tokens"]
    )
    with tempfile.TemporaryDirectory(prefix="codi-bench-") as tmp:
        study = compute_study(model, problems, run_cfg, Path(tmp))
    kind = kinds[0]
    columns = [study.column(f"t{t}-{kind}") for t in range(model.spec.n_thoughts)]
    return {
        "clean": study.clean_answer.astype(float),
        "ablated": study.answer[:, columns].astype(float),
        "kl": study.kl[:, columns].astype(float),
        "clean_text": list(study.clean_text),
        "attention": study.attention[:, cfg["layers"]],
        "conditions": len(study.conditions),
    }


# --- one phase in a child process ------------------------------------------------------------
def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class _CallCounter:
    """Counts decoder forward calls and the token rows (batch x new tokens) they process."""

    def __init__(self) -> None:
        self.calls = 0
        self.token_rows = 0

    def __call__(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.calls += 1
        ids = kwargs.get("input_ids")
        embeds = kwargs.get("inputs_embeds")
        x = ids if ids is not None else embeds if embeds is not None else args[0]
        self.token_rows += int(x.shape[0] * x.shape[1])


def run_phase(job: dict[str, Any]) -> dict[str, Any]:
    """Load the model, run one phase, report results, wall time and memory (child process)."""
    logging.basicConfig(level=job["log_level"], format="%(levelname)s %(name)s: %(message)s")
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    model = load_model(ModelConfig(ckpt=job["ckpt"], device=job["device"], dtype=job["dtype"]))
    counter = _CallCounter()
    decoder = unwrap_peft(model.codi).base_model
    handle = decoder.register_forward_pre_hook(counter, with_kwargs=True)
    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_loaded = _peak_rss_bytes()

    def run(problems: Sequence[Problem]) -> dict[str, Any]:
        with torch.no_grad():
            if job["phase"] == "reference":
                ref = SeedReference(model, job["reference_max_new_tokens"], job["layers"])
                result: dict[str, Any] = ref.run(problems, job["kinds"][0])
            else:
                result = run_engine(model, problems, tuple(job["kinds"]), job)
        if cuda:
            torch.cuda.synchronize()
        return result

    warmup_wall = None
    if job["warmup"]:  # first-call costs (lazy initialisation, allocator) outside the timing
        start = time.perf_counter()
        run(job["problems"][: job["warmup"]])
        warmup_wall = time.perf_counter() - start
        counter.calls = counter.token_rows = 0
    start = time.perf_counter()
    out = run(job["problems"])
    wall = time.perf_counter() - start
    handle.remove()
    out.update(
        wall_s=wall,
        warmup_wall_s=warmup_wall,
        peak_rss_bytes=_peak_rss_bytes(),
        rss_after_load_bytes=rss_loaded,
        gpu_peak_bytes=int(torch.cuda.max_memory_allocated()) if cuda else None,
        decoder_calls=counter.calls,
        token_rows=counter.token_rows,
        threads=torch.get_num_threads(),
        max_new_tokens=job[f"{job['phase']}_max_new_tokens"],
        model_fingerprint=model.fingerprint,
        shape=dataclasses.asdict(budget.shape_of(model)),
    )
    return out


def in_child(job: dict[str, Any], same_process: bool) -> dict[str, Any]:
    """Run ``run_phase`` in a fresh spawn child (or here, with ``same_process``)."""
    if same_process:
        return run_phase(job)
    pool = multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1)
    try:
        result: dict[str, Any] = pool.apply(run_phase, (job,))
    finally:
        pool.close()  # let the child exit normally (terminate() would leak its semaphores)
        pool.join()
    return result


# --- problems --------------------------------------------------------------------------------
def select_problems(path: Path, n: int, spec: CodiSpec, seed: int = 0) -> tuple[list[Problem], str]:
    """A stratified sample of ``n`` problems; organism problems are generated beyond the file.

    Generated problems are held-out style: a distinct ``make_splits`` seed, no question of
    the file and, when the checkpoint records its training recipe, none of its training set.
    """
    pool = load_problems(path)
    if n <= len(pool):
        return stratified_sample(pool, n, seed=seed), (
            f"stratified sample of {n} from {len(pool)} problems in {path}"
        )
    if spec.task != "organism":
        raise SystemExit(
            f"--n {n} exceeds the {len(pool)} problems in {path}, and only the organism task "
            "can generate more; pass --problems with a larger file"
        )
    from codi_fixtures.organism.task import make_splits

    seen = {p.question for p in pool}
    recipe = spec.extra.get("recipe")
    excluded = "no training-set check (the checkpoint records no recipe)"
    if isinstance(recipe, dict) and {"n_train", "n_eval_per_bin", "seed"} <= recipe.keys():
        train, _ = make_splits(recipe["n_train"], recipe["n_eval_per_bin"], recipe["seed"])
        seen |= {p.question for p in train}
        excluded = f"none of the {len(train)} training questions"
    # Only each bin's shortfall is generated: every problem of the file stays in the sample.
    base, extra_one = divmod(n, len(DIFFICULTY_BINS))
    fresh: list[Problem] = []
    _, candidates = make_splits(0, base + 1, seed=EXTRA_PROBLEM_SEED)
    for index, name in enumerate(DIFFICULTY_BINS):
        quota = base + (1 if index < extra_one else 0)
        short = quota - sum(p.difficulty == name for p in pool)
        new = [p for p in candidates if p.difficulty == name and p.question not in seen]
        if len(new) < short:  # duplicates ate the margin: draw a larger batch
            _, more = make_splits(0, 2 * quota, seed=EXTRA_PROBLEM_SEED)
            new = [p for p in more if p.difficulty == name and p.question not in seen]
        fresh += new[: max(0, short)]
    fresh = [dataclasses.replace(p, id=f"organism-bench-{i}") for i, p in enumerate(fresh)]
    sample = stratified_sample(pool + fresh, n, seed=seed)
    note = (
        f"{n} problems: all {len(pool)} from {path} plus {len(fresh)} GENERATED held-out-style "
        f"organism problems (make_splits seed {EXTRA_PROBLEM_SEED}; {excluded})"
    )
    return sample, note


# --- comparison and output -------------------------------------------------------------------
def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def compare(
    ref: dict[str, Any], eng: dict[str, Any], problems: Sequence[Problem], atol: float
) -> dict[str, Any]:
    """Answer agreement (clean + each single-thought ablation) and attention difference."""
    disagreements = []
    total = same = 0
    for i, problem in enumerate(problems):
        pairs = [("clean", ref["clean"][i], eng["clean"][i])]
        pairs += [
            (f"t{t}", ref["ablated"][i, t], eng["ablated"][i, t])
            for t in range(ref["ablated"].shape[1])
        ]
        for condition, a, b in pairs:
            total += 1
            if _same(float(a), float(b)):
                same += 1
            else:
                entry = {
                    "problem": problem.id,
                    "condition": condition,
                    "reference": None if math.isnan(a) else float(a),
                    "engine": None if math.isnan(b) else float(b),
                }
                if condition == "clean":
                    entry["reference_text"] = ref["clean_text"][i]
                    entry["engine_text"] = eng["clean_text"][i]
                disagreements.append(entry)
    diff = np.abs(ref["attention"].astype(np.float64) - eng["attention"].astype(np.float64))
    kl_diff = np.abs(ref["kl"] - eng["kl"])
    caps_equal = ref["max_new_tokens"] == eng["max_new_tokens"]
    texts = zip(ref["clean_text"], eng["clean_text"], strict=True)
    return {
        "clean_text_identical": sum(a == b for a, b in texts),
        "clean_text_compared": caps_equal,
        "kl_max_abs_diff": float(np.nanmax(kl_diff)) if kl_diff.size else 0.0,
        "kl_allclose": bool(np.allclose(ref["kl"], eng["kl"], atol=KL_ATOL, rtol=KL_RTOL)),
        "answers_identical": same,
        "answers_total": total,
        "disagreements": disagreements,
        "attention_max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "attention_allclose": bool(
            np.allclose(ref["attention"], eng["attention"], atol=atol, rtol=0.0)
        ),
        "attention_atol": atol,
    }


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f} MiB"


def _warmup(phase: dict[str, Any]) -> str:
    warm = phase.get("warmup_wall_s")
    return "none (cold)" if warm is None else f"{warm:.2f} s"


def format_table(
    ref: dict[str, Any], eng: dict[str, Any], cmp: dict[str, Any], layers: Sequence[int]
) -> str:
    """The comparison table printed at the end of a run."""
    rows = [
        ("", "seed reference", "engine"),
        ("wall time", f"{ref['wall_s']:.2f} s", f"{eng['wall_s']:.2f} s"),
        ("warm-up run (untimed)", *(_warmup(x) for x in (ref, eng))),
        ("peak RSS", _mib(ref["peak_rss_bytes"]), _mib(eng["peak_rss_bytes"])),
        ("  of which model load", *(_mib(x["rss_after_load_bytes"]) for x in (ref, eng))),
        ("peak GPU memory", _mib(ref["gpu_peak_bytes"]), _mib(eng["gpu_peak_bytes"])),
        ("decoder forward calls", f"{ref['decoder_calls']:,}", f"{eng['decoder_calls']:,}"),
        ("token rows processed", f"{ref['token_rows']:,}", f"{eng['token_rows']:,}"),
        ("clean accuracy", ref.get("accuracy", "-"), eng.get("accuracy", "-")),
    ]
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{a:<{width}}{b:>18}{c:>18}" for a, b, c in rows]
    speedup = ref["wall_s"] / eng["wall_s"] if eng["wall_s"] > 0 else math.inf
    ok = "" if cmp["answers_identical"] == cmp["answers_total"] else "   <-- DISAGREE"
    text_note = "" if cmp["clean_text_compared"] else " (caps differ: informational)"
    attn_ok = "ok" if cmp["attention_allclose"] else f"EXCEEDS atol {cmp['attention_atol']:g}"
    lines += [
        f"{'answers identical':<{width}}{cmp['answers_identical']}/{cmp['answers_total']}"
        f" (clean + each single-thought ablation, parsed numbers){ok}",
        f"{'clean answer texts':<{width}}{cmp['clean_text_identical']}/{len(ref['clean_text'])}"
        f" identical{text_note}",
        f"{'KL':<{width}}not compared: the engine takes it at the answer number's first "
        'token (teacher-forced), the seed at the token after <eot> ("The")',
        f"{'max |attention diff|':<{width}}{cmp['attention_max_abs_diff']:.2e} at layers "
        f"{', '.join(map(str, layers))} ({attn_ok})",
        f"{'speed-up':<{width}}{speedup:.1f}x (reference wall / engine wall)",
    ]
    return "\n".join(lines)


def _accuracy(answers: np.ndarray, problems: Sequence[Problem]) -> str:
    gold = np.array([p.answer for p in problems])
    right = int(np.sum(np.abs(np.nan_to_num(answers, nan=np.inf) - gold) <= 1e-6))
    return f"{right}/{len(problems)}"


def run_scaling(args: argparse.Namespace, base_job: dict[str, Any], spec: CodiSpec) -> list[dict]:
    """Engine-only timings at several N (one kind) and with 1..4 kinds (at N = --n)."""
    kinds_order = [args.kind] + [k for k in ABLATION_KINDS if k != args.kind]
    plan = [(n, (args.kind,)) for n in args.scaling_n]
    plan += [(args.n, tuple(kinds_order[:k])) for k in range(2, len(kinds_order) + 1)]
    rows = []
    for n, kinds in plan:
        problems, note = select_problems(args.problems, n, spec)
        log.info("scaling: N=%d kinds=%s (%s)", n, ",".join(kinds), note)
        job = {**base_job, "phase": "engine", "problems": problems, "kinds": kinds}
        out = in_child(job, args.same_process)
        rows.append(
            {
                "n": n,
                "kinds": list(kinds),
                "rows_per_problem": 1 + out["conditions"],
                "wall_s": out["wall_s"],
                "s_per_problem": out["wall_s"] / n,
                "peak_rss_bytes": out["peak_rss_bytes"],
                "gpu_peak_bytes": out["gpu_peak_bytes"],
                "decoder_calls": out["decoder_calls"],
                "problems": note,
            }
        )
    return rows


def format_scaling(rows: Sequence[dict[str, Any]]) -> str:
    """The engine scaling table."""
    lines = [
        f"{'N':>6} {'kinds':<24} {'rows/pb':>7} {'wall s':>9} {'ms/pb':>8} "
        f"{'peak RSS':>11} {'GPU peak':>11} {'calls':>7}"
    ]
    for r in rows:
        lines.append(
            f"{r['n']:>6} {','.join(r['kinds']):<24} {r['rows_per_problem']:>7} "
            f"{r['wall_s']:>9.2f} {1000 * r['s_per_problem']:>8.1f} "
            f"{_mib(r['peak_rss_bytes']):>11} {_mib(r['gpu_peak_bytes']):>11} "
            f"{r['decoder_calls']:>7}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100, help="problems (default 100)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16, ... (default float32)")
    p.add_argument(
        "--batch-rows",
        type=parse_batch_rows,
        default=None,
        help="engine rows per batch (default auto, as a research run)",
    )
    p.add_argument("--kind", choices=("zero", "mean"), default="mean", help="ablation kind")
    p.add_argument(
        "--ckpt", type=Path, default=BUNDLED_CHECKPOINT, help="checkpoint or adapter directory"
    )
    p.add_argument(
        "--problems", type=Path, default=None, help="problem file (default <ckpt>/eval.jsonl)"
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help=f"answer-token cap for BOTH implementations (default: reference "
        f"{SEED_MAX_NEW_TOKENS} as the seed, engine {ENGINE_MAX_NEW_TOKENS})",
    )
    p.add_argument(
        "--scaling", action="store_true", help="also time the engine at several N and 1..4 kinds"
    )
    p.add_argument(
        "--scaling-n",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        default=SCALING_NS,
        help="problem counts for --scaling (default 10,100,1000)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="each phase first runs its own algorithm on this many problems, untimed, so that "
        "first-call costs are not timed (default 0: a cold first run)",
    )
    p.add_argument("--atol", type=float, default=1e-4, help="attention tolerance (1e-4)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per phase (0: default)")
    p.add_argument("--json", type=Path, default=None, help="write results to this JSON file")
    p.add_argument(
        "--same-process",
        action="store_true",
        help="run phases in this process (peak RSS is then cumulative; for debugging)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    if args.problems is None:
        args.problems = args.ckpt / "eval.jsonl"
    if args.n < 1:
        p.error("--n must be >= 1")
    if not 0 <= args.warmup <= args.n:
        p.error("--warmup must be between 0 and --n")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run both phases, compare, print the table; 1 when they disagree."""
    args = parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    probe = load_model(ModelConfig(ckpt=args.ckpt, device="cpu", dtype="float32"))
    spec, tok, shape = probe.spec, probe.tokenizer, budget.shape_of(probe)
    roles = layer_roles(probe.n_layers)
    del probe  # the phases load their own copy
    layers = [roles.early, roles.middle, roles.late]
    problems, note = select_problems(args.problems, args.n, spec)
    q_tokens = [len(tok(p.question)["input_ids"]) for p in problems]
    log.info("%s", note)
    ref_cap = args.max_new_tokens or SEED_MAX_NEW_TOKENS
    eng_cap = args.max_new_tokens or ENGINE_MAX_NEW_TOKENS
    job = {
        "ckpt": args.ckpt,
        "device": args.device,
        "dtype": args.dtype,
        "threads": args.threads,
        "log_level": level,
        "layers": layers,
        "kinds": (args.kind,),
        "problems": problems,
        "batch_rows": args.batch_rows,
        "reference_max_new_tokens": ref_cap,
        "engine_max_new_tokens": eng_cap,
        "warmup": args.warmup,
    }
    log.info("phase 1/2: seed reference (batch 1, %d answer tokens max)", ref_cap)
    ref = in_child({**job, "phase": "reference"}, args.same_process)
    rows_text = "auto" if args.batch_rows is None else str(args.batch_rows)
    log.info("phase 2/2: engine (batch rows %s, %d answer tokens max)", rows_text, eng_cap)
    eng = in_child({**job, "phase": "engine"}, args.same_process)
    ref["accuracy"] = _accuracy(ref["clean"], problems)
    eng["accuracy"] = _accuracy(eng["clean"], problems)
    cmp = compare(ref, eng, problems, args.atol)
    for d in cmp["disagreements"][:20]:
        log.warning("disagreement: %s", d)

    out = sys.stdout
    out.write(
        f"\nseed reference vs engine: {args.n} problems, kind={args.kind}, device={args.device}, "
        f"dtype={args.dtype}, threads={ref['threads']}, checkpoint {args.ckpt}\n"
        f"problems: {note}\n"
        f"answer-token cap: reference {ref_cap}, engine {eng_cap}; engine batch rows "
        f"{rows_text} ({1 + eng['conditions']} rows per problem: clean + "
        f"{eng['conditions']} conditions, incl. all-thoughts)\n\n"
    )
    out.write(format_table(ref, eng, cmp, layers) + "\n")
    scaling = run_scaling(args, job, spec) if args.scaling else []
    if scaling:
        where = "this process" if args.same_process else "a fresh process each"
        out.write(f"\nengine scaling ({where}, fresh cache each):\n")
        out.write(format_scaling(scaling) + "\n")
        for r in scaling:
            if "GENERATED" in r["problems"]:
                out.write(f"  N={r['n']}: {r['problems']}\n")

    def n_tokens(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"]) + 1  # + eos

    a_tokens = [n_tokens(t) for t in eng["clean_text"]]
    targets = [n_tokens(f"{spec.answer_prompt} {format_number(p.answer)}") for p in problems]
    study = budget.StudyShape(
        question_tokens=round(float(np.mean(q_tokens))),
        answer_tokens=min(eng_cap, max(a_tokens)),  # the batch decodes until its longest answer
        scored_tokens=max(targets),
        n_thoughts=spec.n_thoughts,
        conditions=eng["conditions"],
    )
    per_problem = budget.study_flops(shape, study).total
    out.write(
        f"\ncost model for this run ({shape.name}, Q={study.question_tokens}, "
        f"A={study.answer_tokens}, K={study.scored_tokens}): ~{per_problem:.3g} FLOP per problem, "
        f"~{per_problem * args.n / eng['wall_s'] / 1e9:.2f} GFLOP/s achieved by the engine "
        "(estimate)\n\n"
    )
    out.write(budget.format_published_estimates() + "\n")
    if args.json:
        payload = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "problems": note,
            "layers": layers,
            "platform": platform.platform(),
            "torch": torch.__version__,
            "reference": _summary(ref),
            "engine": _summary(eng),
            "speedup": ref["wall_s"] / eng["wall_s"],
            "comparison": cmp,
            "scaling": scaling,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        log.info("wrote %s", args.json)
    agree = cmp["answers_identical"] == cmp["answers_total"] and cmp["attention_allclose"]
    return 0 if agree else 1


def _summary(phase: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "wall_s warmup_wall_s peak_rss_bytes rss_after_load_bytes gpu_peak_bytes decoder_calls "
        "token_rows threads accuracy model_fingerprint"
    ).split()
    return {k: phase.get(k) for k in keep}


if __name__ == "__main__":
    sys.exit(main())
