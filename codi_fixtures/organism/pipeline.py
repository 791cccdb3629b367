"""The whole organism recipe: data, tokenizer, teacher phase, CODI phase, evaluation, export."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from codi_fixtures.atomic import atomic_write_text
from codi_fixtures.model import N_SPECIAL, CodiModel
from codi_fixtures.model.checkpoint import write_checkpoint
from codi_fixtures.organism.evaluate import (
    accuracy_by_bin,
    cot_answers,
    latent_answers,
    mean_ablation_answers,
    planted_interchange_rates,
    planted_lens_rates,
)
from codi_fixtures.organism.report import rewrite_record, write_training_report
from codi_fixtures.organism.task import STEP_COUNTS, make_splits
from codi_fixtures.organism.tokenizer import build_tokenizer
from codi_fixtures.organism.train import (
    ANSWER_PROMPT,
    PLANTED_SITE,
    TrainConfig,
    TrainState,
    build_model,
    load_train_state,
    retrain_command,
    run_phase,
    save_train_state,
)
from codi_fixtures.study.data import load_problem_jsonl, write_problem_jsonl
from codi_fixtures.study.problems import Problem

__all__ = [
    "EVAL_FILE",
    "evaluate_organism",
    "planted_record",
    "recheck_planted_map",
    "train_organism",
]

log = logging.getLogger(__name__)
EVAL_FILE = "eval.jsonl"


def _optimizer(model: CodiModel, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)


def evaluate_organism(
    model: CodiModel, problems: list[Problem], *, planted: bool = False
) -> dict[str, object]:
    """Accuracy by bin in latent and explicit-CoT mode, and under mean ablations.

    ``planted`` adds ``planted_lens`` (how often each thought's logit lens names step t+1)
    and ``planted_interchange`` (how often patching thought t with a donor's gives the
    counterfactual answer of step t+1, and with a random donor's).
    """
    clean = latent_answers(model, problems)
    metrics: dict[str, object] = {
        "codi": accuracy_by_bin(problems, clean),
        "explicit_cot": accuracy_by_bin(problems, cot_answers(model, problems)),
    }
    n = model.spec.n_thoughts
    if n:
        metrics["mean_ablate_all"] = accuracy_by_bin(
            problems, mean_ablation_answers(model, problems, range(n))
        )
        singles = {}
        for t in range(n):
            answers = mean_ablation_answers(model, problems, [t])
            changed = sum(a != c for a, c in zip(answers, clean, strict=True)) / len(problems)
            singles[f"t{t}"] = {
                "accuracy": accuracy_by_bin(problems, answers)["all"],
                "answers_changed": 100.0 * changed,
            }
        metrics["mean_ablate_one"] = singles
    if planted and n:
        metrics["planted_lens"] = planted_lens_rates(model, problems)
        metrics["planted_interchange"] = planted_interchange_rates(model, problems)
    return metrics


def recheck_planted_map(model_dir: Path) -> dict[str, dict[str, float]]:
    """Re-run the causal planted-map check on a trained organism; rewrite its record.

    For a change of the check's rule (e.g. which donors qualify): the weights are the same,
    so only ``planted_interchange`` in codi.json and the training report change.
    """
    from codi_fixtures.config import ModelConfig
    from codi_fixtures.model.codi import load_codi

    model = load_codi(ModelConfig(ckpt=model_dir, device="cpu", dtype="float32"))
    rates = planted_interchange_rates(model, load_problem_jsonl(model_dir / EVAL_FILE))
    rewrite_record(model_dir, {"planted_interchange": rates})
    log.info("planted map's causal check of %s: %s", model_dir, json.dumps(rates))
    return rates


def train_organism(
    cfg: TrainConfig,
    *,
    out_dir: Path,
    work_dir: Path,
    teacher_from: Path | None = None,
    threads: int = 2,
) -> dict[str, object]:
    """Train (resuming from ``work_dir`` when possible) and write the checkpoint to ``out_dir``."""
    torch.set_num_threads(threads)
    work_dir.mkdir(parents=True, exist_ok=True)
    train, evals = make_splits(cfg.n_train, cfg.n_eval_per_bin, cfg.seed)
    monitor_set = [p for i, p in enumerate(evals) if i % 2 == 0]  # 50 per bin
    texts = [f"{p.question} {p.cot} {ANSWER_PROMPT} {int(p.answer)}" for p in train + evals]
    stage = work_dir / "checkpoint"
    tokenizer = build_tokenizer(texts, stage)
    model = build_model(cfg, tokenizer)
    state_path = work_dir / "state.pt"
    optimizer = _optimizer(model, cfg.teacher_lr)
    if state_path.exists():
        state = load_train_state(state_path, model, optimizer)
        log.info("resuming %s phase at step %d", state.phase, state.step)
    elif teacher_from is not None:
        teacher = load_train_state(teacher_from, model, _optimizer(model, cfg.teacher_lr))
        state = TrainState(phase="codi", history=teacher.history, wall_s=teacher.wall_s)
        optimizer = _optimizer(model, cfg.codi_lr)
        log.info("starting the CODI phase from teacher %s", teacher_from)
    else:
        state = TrainState()
    started = time.monotonic() - state.wall_s
    teacher_wall = state.wall_s if state.phase == "codi" else 0.0

    def checkpoint(current: TrainState) -> None:
        save_train_state(state_path, model, optimizer, current)

    def monitor(current_model: CodiModel, current: TrainState) -> None:
        fn = latent_answers if current.phase == "codi" else cot_answers
        acc = accuracy_by_bin(monitor_set, fn(current_model, monitor_set))
        log.info("%s step %d: monitor accuracy %s", current.phase, current.step, acc)
        current.history.append({"monitor_step": float(current.step), **acc})

    if state.phase == "teacher":
        run_phase(model, train, cfg, state, optimizer, on_checkpoint=checkpoint, monitor=monitor)
        teacher_wall = state.wall_s
        save_train_state(work_dir / "teacher.pt", model, optimizer, state)
        optimizer = _optimizer(model, cfg.codi_lr)
        state = replace(state, phase="codi", step=0)
        checkpoint(state)
    if state.step < cfg.codi_steps:
        state.wall_s = state.wall_s - teacher_wall  # per-phase clock inside run_phase
        run_phase(model, train, cfg, state, optimizer, on_checkpoint=checkpoint, monitor=monitor)
        state.wall_s += teacher_wall
        checkpoint(state)
    train_wall = time.monotonic() - started
    metrics = evaluate_organism(model, evals, planted=cfg.planted_weight > 0)
    log.info("final held-out metrics: %s", json.dumps(metrics))
    _export(model, cfg, stage, evals, metrics, state, teacher_wall, train_wall)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(stage, out_dir)
    return metrics


def planted_record(cfg: TrainConfig) -> dict[str, object]:
    """What ``codi.json``'s ``extra["planted"]`` says about a planted organism's map."""
    return {
        "organism": "planted",
        "map": "thought t <-> step t+1 (0-based thought t; its value is intermediates[t])",
        "thought_to_step": [t + 1 if t < max(STEP_COUNTS) else None for t in range(cfg.n_thoughts)],
        "site": PLANTED_SITE,
        "readout": "logit lens: final norm + lm_head (tied embeddings)",
        "target": "the value's tokens, weights halving per token (12 = 2/3 '▁1' + 1/3 '2'): "
        "argmax = the value's first token; thoughts past a problem's last step: no target",
        "loss": "cross-entropy of the readout vs the target, mean over (problem, thought) "
        "pairs that have a step; added to the CODI loss times weight",
        "weight": cfg.planted_weight,
        "interchange_weight": cfg.interchange_weight,
        "interchange": "thought t replaced by a donor's thought t (input embedding), later "
        "thoughts recomputed; cross-entropy of the counterfactual answer (the recipient's "
        "chain replayed with the donor's step t+1 value), times interchange_weight"
        if cfg.interchange_weight > 0
        else "none: the planted values need not be used for the answer",
    }


def _export(
    model: CodiModel,
    cfg: TrainConfig,
    stage: Path,
    evals: list[Problem],
    metrics: dict[str, object],
    state: TrainState,
    teacher_wall: float,
    train_wall: float,
) -> None:
    retrain = retrain_command(cfg)
    extra = {
        "recipe": cfg.to_dict(),
        "heldout_accuracy": metrics,
        "wall_time_s": {"teacher_phase": round(teacher_wall, 1), "total": round(train_wall, 1)},
        "retrain": retrain,
    }
    if cfg.planted_weight > 0:
        extra["planted"] = planted_record(cfg)
    spec = replace(model.spec, extra=extra)
    write_checkpoint(stage, model.state_dict(), spec)
    base_config = model.codi.config.__class__.from_dict(model.codi.config.to_dict())
    base_config.vocab_size = model.base_vocab_size  # the base vocabulary; +3 lives in the weights
    assert base_config.vocab_size + N_SPECIAL == model.embeddings.weight.shape[0]
    base_config.save_pretrained(str(stage))
    write_problem_jsonl(stage / EVAL_FILE, evals)
    history = [h for h in state.history if "monitor_step" in h or int(h.get("step", 0)) % 5 == 0]
    atomic_write_text(stage / "training_log.json", json.dumps(history) + "\n")
    write_training_report(stage, cfg, metrics, history, teacher_wall, train_wall)
