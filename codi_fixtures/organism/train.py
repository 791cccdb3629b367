"""Train the bundled CODI organism: an explicit-CoT teacher phase, then the CODI phase.

CODI (Shen et al. 2025) trains one model as teacher and student:

- teacher: ``question cot The answer is: N</s>``, cross-entropy on cot + answer;
- student: ``question <bot>`` -> T latent steps (last hidden -> prj -> next input
  embedding, KV cache) -> ``<eot> The answer is: N</s>``, cross-entropy on the answer;
- distillation: SmoothL1 between student and teacher hidden states at the token
  before the answer number (``:``), every layer, each divided by the teacher's
  std, averaged over layers, times a factor ramped 1 -> 20.

Deliberate choices (see ORGANISM_NOTES.md): the teacher keeps *all* CoT steps
(the official ``include_last_cot`` option; dropping the last step left the tiny
teacher nothing to distil), and the CODI phase fine-tunes all parameters.
The student's latent loop is the engine's ``run_thoughts`` with gradients on.

The *planted* organism adds one loss (``TrainConfig.planted_weight`` > 0, see
:func:`planted_loss`): thought t's input embedding, read through the logit lens,
must name step t+1's value, so where each step is stored is known by construction.
A second, optional loss (``TrainConfig.interchange_weight`` > 0, see
:func:`interchange_loss`; interchange intervention training, Geiger et al. 2022) makes the
planted value *used*: thought t is replaced by another problem's thought t, and the model is
trained to give the counterfactual answer (the recipient's chain replayed with the donor's
step t+1 value). Without it the planted values are readable but recomputed downstream.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from codi_fixtures.atomic import atomic_write_bytes
from codi_fixtures.engine import (
    ThoughtPatch,
    build_prompt,
    encode_prompt,
    forward_step,
    run_thoughts,
)
from codi_fixtures.model import N_SPECIAL, CodiModel, build_projection
from codi_fixtures.model.architecture import unwrap_peft
from codi_fixtures.model.checkpoint import CodiSpec
from codi_fixtures.organism.task import MAX_VALUE
from codi_fixtures.study.interchange import counterfactual_answer
from codi_fixtures.study.problems import Problem

__all__ = [
    "PLANTED_SITE",
    "Batch",
    "InterchangePair",
    "TrainConfig",
    "build_model",
    "codi_loss",
    "distill_scale",
    "interchange_loss",
    "interchange_pairs",
    "make_batch",
    "planted_loss",
    "planted_targets",
    "retrain_command",
    "teacher_loss",
    "thought_lens_logits",
    "value_target",
]

log = logging.getLogger(__name__)
ANSWER_PROMPT = "The answer is:"
IGNORE = -100
DISTILL_SCALES = ("std", "spread")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of the organism; defaults are the shipped recipe."""

    n_thoughts: int = 6
    """Continuous thoughts in the CODI phase (0 trains the no-thought control)."""
    hidden: int = 64
    """Residual width d."""
    layers: int = 6
    """Decoder blocks. Six, not 16: a 16-layer model learned to solve the task inside the
    question pass (all thoughts mean-ablated still 72% correct), so its thoughts carried
    little; six blocks cannot compose five steps in one pass, so the thoughts must."""
    heads: int = 4
    """Attention heads."""
    ffn: int = 128
    """MLP width."""
    prj_dim: int = 128
    """Projection hidden width."""
    n_train: int = 60_000
    """Training problems generated."""
    n_eval_per_bin: int = 100
    """Held-out problems per difficulty bin."""
    batch_size: int = 64
    """Problems per optimisation step."""
    teacher_steps: int = 1500
    """Explicit-CoT steps before the CODI phase."""
    teacher_lr: float = 1e-3
    """Peak learning rate of the teacher phase."""
    codi_steps: int = 1800
    """CODI-phase steps."""
    codi_lr: float = 1e-3
    """Peak learning rate of the CODI phase (cosine decay to ``min_lr``)."""
    min_lr: float = 5e-5
    """Final learning rate of both cosine schedules."""
    warmup: int = 100
    """Linear warm-up steps of each phase."""
    distill_factor: float = 20.0
    """Final weight of the distillation loss."""
    distill_ramp: int = 200
    """Steps over which the distillation weight ramps from 1 to ``distill_factor``."""
    eval_every: int = 300
    """Monitor accuracy on 200 held-out problems every this many steps."""
    checkpoint_every: int = 100
    """Save the resumable training state every this many steps."""
    seed: int = 0
    """Seed for data, initialisation and batch order."""
    planted_weight: float = 0.0
    """Weight of the planted-map loss (:func:`planted_loss`): thought t's input embedding,
    read through the logit lens, must name step t+1's value. 0 (the bundled recipe) adds
    nothing and leaves training bit-for-bit unchanged; > 0 trains the *planted* organism,
    whose storage map is known by construction, to test interpretability methods against."""
    interchange_weight: float = 0.0
    """Weight of the interchange-intervention loss (:func:`interchange_loss`): with thought t
    replaced by a donor problem's thought t, the answer must be the counterfactual one (the
    recipient's chain replayed with the donor's step t+1 value). 0 adds nothing; > 0 makes
    the planted values *used* for the answer, not only readable."""
    interchange_rows: int = 32
    """Recipients per step for the interchange loss (the first rows of the batch that have a
    donor in the batch)."""
    value_max: int = MAX_VALUE
    """Largest value a counterfactual answer may take (the task's range: its answers are
    never larger, and the model has never seen one)."""
    distill_scale: str = "std"
    """What each layer's distillation loss is divided by (:func:`distill_scale`): ``std``, the
    teacher states' standard deviation (the published recipe), or ``spread``, their variation
    across the batch's problems (for a pretrained base whose constant massive activations
    inflate the std; see :func:`distill_scale`)."""

    def __post_init__(self) -> None:
        if self.distill_scale not in DISTILL_SCALES:
            raise ValueError(
                f"distill_scale must be one of {', '.join(DISTILL_SCALES)}, "
                f"got {self.distill_scale!r}"
            )

    def to_dict(self) -> dict[str, object]:
        """Plain-JSON view."""
        return asdict(self)


def retrain_command(cfg: TrainConfig) -> str:
    """The command that trains ``cfg`` (its options that differ from the defaults)."""
    default = TrainConfig()
    command = f"python -m codi_fixtures.organism --out <dir> --thoughts {cfg.n_thoughts}"
    for flag, value, usual in (
        ("--teacher-steps", cfg.teacher_steps, default.teacher_steps),
        ("--codi-steps", cfg.codi_steps, default.codi_steps),
        ("--layers", cfg.layers, default.layers),
        ("--hidden", cfg.hidden, default.hidden),
        ("--seed", cfg.seed, default.seed),
        ("--planted-weight", cfg.planted_weight, default.planted_weight),
        ("--interchange-weight", cfg.interchange_weight, default.interchange_weight),
    ):
        if value != usual:
            command += f" {flag} {value:g}"
    if cfg.distill_scale != default.distill_scale:
        command += f" --distill-scale {cfg.distill_scale}"
    return command


def build_model(cfg: TrainConfig, tokenizer: object) -> CodiModel:
    """A fresh LLaMA-shaped CODI model with the tokenizer's vocabulary + 3 specials."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    vocab = len(tokenizer)  # type: ignore[arg-type]
    config = LlamaConfig(
        vocab_size=vocab + N_SPECIAL,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.ffn,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,  # type: ignore[attr-defined]
        eos_token_id=tokenizer.eos_token_id,  # type: ignore[attr-defined]
    )
    config._attn_implementation = "eager"  # output_attentions needs eager attention
    backbone = LlamaForCausalLM(config)
    spec = CodiSpec(
        n_thoughts=cfg.n_thoughts, prj_dim=cfg.prj_dim, answer_prompt=ANSWER_PROMPT, task="organism"
    )
    return CodiModel(backbone, build_projection(cfg.hidden, cfg.prj_dim), spec, tokenizer)


@dataclass
class Batch:
    """Tensors for one step; B problems."""

    problems: list[Problem]
    teacher_ids: torch.Tensor  # (B, Lt) right-padded
    teacher_mask: torch.Tensor  # (B, Lt)
    teacher_labels: torch.Tensor  # (B, Lt), IGNORE on question and padding
    teacher_colon: torch.Tensor  # (B,) index of ':' before the answer number
    answer_ids: torch.Tensor  # (B, La) <eot> The answer is: N </s>, right-padded
    answer_mask: torch.Tensor  # (B, La)
    answer_colon: int = field(default=0)  # index of ':' inside answer_ids (same for all rows)


def _ids(tokenizer: object, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])  # type: ignore[operator]


def _right_pad(seqs: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return ids, mask


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _answer_ids(model: CodiModel, value: float) -> list[int]:
    """``<eot> The answer is: N </s>``: what the student is trained to emit after its thoughts."""
    return [
        model.eot_id,
        *_ids(model.tokenizer, f"{ANSWER_PROMPT} {_number_text(value)}", special=False),
        model.eos_id,
    ]


def make_batch(model: CodiModel, problems: list[Problem]) -> Batch:
    """Tokenize teacher sequences and student answer parts for ``problems``."""
    tok = model.tokenizer
    teacher, labels, colons, answers = [], [], [], []
    prompt_ids = _ids(tok, ANSWER_PROMPT, special=False)
    for p in problems:
        number = _number_text(p.answer)
        question = _ids(tok, p.question, special=True)
        up_to_colon = _ids(tok, f"{p.question} {p.cot} {ANSWER_PROMPT}", special=True)
        full = _ids(tok, f"{p.question} {p.cot} {ANSWER_PROMPT} {number}", special=True)
        full.append(model.eos_id)
        teacher.append(full)
        labels.append([IGNORE] * len(question) + full[len(question) :])
        colons.append(len(up_to_colon) - 1)
        answers.append(_answer_ids(model, p.answer))
    device = model.device
    teacher_ids, teacher_mask = _right_pad(teacher, model.pad_id)
    label_ids, _ = _right_pad(labels, IGNORE)
    answer_ids, answer_mask = _right_pad(answers, model.pad_id)
    return Batch(
        problems=problems,
        teacher_ids=teacher_ids.to(device),
        teacher_mask=teacher_mask.to(device),
        teacher_labels=label_ids.to(device),
        teacher_colon=torch.tensor(colons, device=device),
        answer_ids=answer_ids.to(device),
        answer_mask=answer_mask.to(device),
        answer_colon=len(prompt_ids),  # [<eot>, The, answer, is, :] -> ':' at len(prompt)
    )


def _ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE
    )


def teacher_loss(model: CodiModel, batch: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Explicit-CoT cross-entropy and the teacher's hidden states (all layers)."""
    out = model.codi(
        input_ids=batch.teacher_ids,
        attention_mask=batch.teacher_mask,
        output_hidden_states=True,
    )
    loss = _ce(out.logits[:, :-1], batch.teacher_labels[:, 1:])
    return loss, out.hidden_states


PLANTED_SITE = "input embedding"
"""Where the planted map lives: thought t's input embedding (position Q+1+t), the suite's
default ablation and patch site. Block outputs at that position are not constrained."""


def thought_lens_logits(model: CodiModel, vectors: torch.Tensor) -> torch.Tensor:
    """The logit lens: the final norm, then the LM head (tied to the embeddings), on (..., d)."""
    decoder: Any = unwrap_peft(model.codi).base_model  # LlamaModel: the organism is LLaMA
    return model.codi.get_output_embeddings()(decoder.norm(vectors))


def value_target(model: CodiModel, value: float) -> dict[int, float]:
    """The planted target distribution for ``value``: its tokens, weights halving per token.

    The organism tokenizer has one token per digit, so 12 is ``[▁1, 2]`` and gets
    2/3 on ``▁1`` and 1/3 on ``2``: the argmax is the value's *first* token (what a logit
    lens reads) and the two largest probabilities spell the whole value. A one-digit value
    is one-hot on its token.
    """
    ids = _ids(model.tokenizer, str(int(value)), special=False)
    weights = [2.0**-i for i in range(len(ids))]
    target: dict[int, float] = {}
    for token, w in zip(ids, weights, strict=True):
        target[token] = target.get(token, 0.0) + w / sum(weights)
    return target


def planted_targets(
    model: CodiModel, problems: Sequence[Problem], n_thoughts: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft targets (B, T, V+3) and a mask (B, T): thought t <-> ``intermediates[t]``.

    ``intermediates[t]`` is step t+1's value (0-based thought t, 1-based step t+1). A
    problem with k steps has targets for thoughts 0..k-1; later thoughts get none.
    """
    vocab = model.embeddings.weight.shape[0]
    targets = torch.zeros((len(problems), n_thoughts, vocab))
    mask = torch.zeros((len(problems), n_thoughts), dtype=torch.bool)
    for row, problem in enumerate(problems):
        for t, value in enumerate(problem.intermediates[:n_thoughts]):
            for token, w in value_target(model, value).items():
                targets[row, t, token] = w
            mask[row, t] = True
    return targets, mask


def planted_loss(
    model: CodiModel, thoughts: torch.Tensor, problems: Sequence[Problem]
) -> torch.Tensor:
    """Cross-entropy of the logit lens on each thought's input embedding vs. step t+1's value.

    Why: a trained CODI model stores intermediate results wherever training happened
    to put them, so a method that "finds" step k in thought t cannot be checked. This
    loss plants the map -- thought t (its input embedding ``thoughts[:, t]``, read as
    final norm + LM head) names step t+1's value (:func:`value_target`) -- so the
    storage map is known by construction. Averaged over (problem, thought) pairs that
    have a step; thoughts beyond a problem's last step are unconstrained.
    """
    targets, mask = planted_targets(model, problems, thoughts.shape[1])
    if not bool(mask.any()):
        return thoughts.new_zeros(())
    logp = F.log_softmax(thought_lens_logits(model, thoughts).float(), dim=-1)
    nll = -(targets.to(logp.device) * logp).sum(dim=-1)  # (B, T)
    return nll[mask.to(nll.device)].mean()


@dataclass(frozen=True)
class InterchangePair:
    """One interchange-training example: recipient row, donor row, thought, target answer."""

    recipient: int
    donor: int
    thought: int  # 0-based; carries step thought + 1
    counterfactual: float


def interchange_pairs(
    problems: Sequence[Problem],
    n_thoughts: int,
    rng: random.Random,
    *,
    limit: int,
    value_max: float,
) -> list[InterchangePair]:
    """Up to ``limit`` (recipient, donor, thought) triples drawn inside one batch.

    Per recipient: a thought t uniform over those that carry a step (t < its step count),
    then the first donor (in a seeded random order) whose step t+1 value differs and whose
    counterfactual answer exists, differs from the recipient's and lies in 0..``value_max``.
    Recipients with no such donor are skipped.
    """
    pairs: list[InterchangePair] = []
    order = list(range(len(problems)))
    for r, rec in enumerate(problems):
        if len(pairs) >= limit:
            break
        steps = min(len(rec.intermediates), n_thoughts)
        if steps == 0:
            continue
        t = rng.randrange(steps)
        rng.shuffle(order)
        for d in order:
            donor = problems[d]
            if d == r or len(donor.intermediates) <= t:
                continue
            value = donor.intermediates[t]
            if value == rec.intermediates[t]:
                continue
            # The generator's own chains: every operand after the first is a given.
            answer = counterfactual_answer(rec, t + 1, value, literal_operands=True)
            if answer is None or answer == rec.answer or not 0 <= answer <= value_max:
                continue
            pairs.append(InterchangePair(r, d, t, answer))
            break
    return pairs


def interchange_loss(
    model: CodiModel,
    thoughts: torch.Tensor,
    problems: Sequence[Problem],
    pairs: Sequence[InterchangePair],
) -> torch.Tensor:
    """Cross-entropy of the counterfactual answer after an interchange intervention.

    Each recipient's question is encoded again and its latent loop run with thought t's
    input embedding replaced by the donor's (from ``thoughts``, the clean run of the same
    batch, detached: the loss teaches *reading* the thought; :func:`planted_loss` teaches
    writing it); later thoughts are recomputed, as in the suite's RQ4 interchange. The
    target is ``<eot> The answer is: N </s>`` with N the counterfactual answer.
    """
    if not pairs:
        return thoughts.new_zeros(())
    recipients = [p.recipient for p in pairs]
    prompt = build_prompt(model, [problems[r].question for r in recipients])
    state, bot_hidden = encode_prompt(model, prompt)
    donors = torch.tensor([p.donor for p in pairs], device=thoughts.device)
    mask = torch.zeros((len(pairs), thoughts.shape[1]), dtype=torch.bool)
    mask[torch.arange(len(pairs)), torch.tensor([p.thought for p in pairs])] = True
    patch = ThoughtPatch(thoughts.detach().index_select(0, donors), mask.to(thoughts.device))
    run_thoughts(model, state, bot_hidden, n_thoughts=thoughts.shape[1], patch=patch)
    answer_ids, answer_mask = _right_pad(
        [_answer_ids(model, p.counterfactual) for p in pairs], model.pad_id
    )
    answer_ids, answer_mask = answer_ids.to(model.device), answer_mask.to(model.device)
    out = forward_step(model, state, input_ids=answer_ids, new_mask=answer_mask, logits=True)
    assert out.logits is not None
    targets = answer_ids[:, 1:].masked_fill(answer_mask[:, 1:] == 0, IGNORE)
    return _ce(out.logits[:, :-1], targets)


def distill_scale(target: torch.Tensor, how: str = "std") -> torch.Tensor:
    """The divisor of one layer's distillation loss, from the teacher states ``target`` (B, d).

    ``std``: their standard deviation over batch and width, as the published recipe. ``spread``:
    the root-mean-square of their deviation from the batch mean, i.e. how much the state at the
    answer's ``:`` differs between problems. In a pretrained LM's residual stream a few
    dimensions carry large activations that are the same for every input (SmolLM2-135M at the
    ``:``: std 1,600-1,850 at layers 19-29, spread 3.6-5.0), so dividing by the std made the
    distillation ~400x weaker than the differences it is meant to remove. Floored at 1e-3 std
    (a layer that hardly varies, e.g. the embedding of ``:`` itself); a batch of one problem
    has no spread and gets the std.
    """
    if how not in DISTILL_SCALES:
        raise ValueError(f"distill scale must be one of {', '.join(DISTILL_SCALES)}, got {how!r}")
    std = target.std().clamp_min(1e-6)
    if how == "std" or target.shape[0] < 2:  # one problem has no spread
        return std
    spread = (target - target.mean(dim=0)).pow(2).mean().sqrt()
    return torch.maximum(spread, 1e-3 * std)


def codi_loss(
    model: CodiModel,
    batch: Batch,
    distill_weight: float,
    planted_weight: float = 0.0,
    *,
    interchange_weight: float = 0.0,
    interchange: Sequence[InterchangePair] = (),
    scale: str = "std",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Student CE + weighted distillation + teacher CE (the CODI objective).

    ``planted_weight`` > 0 adds ``planted_weight * planted_loss`` (reported as
    ``planted``); ``interchange_weight`` > 0 adds that times :func:`interchange_loss` over
    ``interchange`` (reported as ``interchange``). At 0 nothing is computed and the
    objective is exactly CODI's. ``scale`` is what each layer's distillation term is divided
    by (:func:`distill_scale`).
    """
    ref_ce, ref_hidden = teacher_loss(model, batch)
    prompt = build_prompt(model, [p.question for p in batch.problems])
    state, bot_hidden = encode_prompt(model, prompt)
    thoughts, _, _ = run_thoughts(model, state, bot_hidden, n_thoughts=model.spec.n_thoughts)
    out = forward_step(
        model,
        state,
        input_ids=batch.answer_ids,
        new_mask=batch.answer_mask,
        logits=True,
        hidden_states=True,
    )
    assert out.logits is not None and out.hidden_states is not None
    targets = batch.answer_ids[:, 1:].masked_fill(batch.answer_mask[:, 1:] == 0, IGNORE)
    ce = _ce(out.logits[:, :-1], targets)
    rows = torch.arange(len(batch.problems), device=out.logits.device)
    distill = torch.zeros((), device=out.logits.device)
    for student, teacher in zip(out.hidden_states, ref_hidden, strict=True):
        target = teacher[rows, batch.teacher_colon].detach()
        pred = student[:, batch.answer_colon]
        distill = distill + F.smooth_l1_loss(pred, target) / distill_scale(target, scale)
    distill = distill / len(out.hidden_states)
    loss = ce + distill_weight * distill + ref_ce
    parts = {"ce": ce.item(), "distill": distill.item(), "teacher_ce": ref_ce.item()}
    if planted_weight > 0:
        planted = planted_loss(model, thoughts, batch.problems)
        loss = loss + planted_weight * planted
        parts["planted"] = planted.item()
    if interchange_weight > 0 and interchange:
        swapped = interchange_loss(model, thoughts, batch.problems, interchange)
        loss = loss + interchange_weight * swapped
        parts["interchange"] = swapped.item()
    return loss, parts


def lr_at(step: int, total: int, peak: float, floor: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay from ``peak`` to ``floor``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


@dataclass
class TrainState:
    """Resumable progress of a training run."""

    phase: str = "teacher"
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    wall_s: float = 0.0


def _batch_problems(
    train: Sequence[Problem], cfg: TrainConfig, phase: str, step: int
) -> list[Problem]:
    # Seeded by (seed, phase, step): a resumed run sees exactly the batches it would have seen.
    rng = random.Random(f"{cfg.seed}-{phase}-{step}")
    return rng.sample(list(train), cfg.batch_size) if len(train) > cfg.batch_size else list(train)


def run_phase(
    model: CodiModel,
    train: Sequence[Problem],
    cfg: TrainConfig,
    state: TrainState,
    optimizer: torch.optim.Optimizer,
    *,
    on_checkpoint: object = None,
    monitor: object = None,
    loss_context: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> None:
    """Run the current phase (``teacher`` or ``codi``) from ``state.step`` to its end.

    ``loss_context`` wraps each step's forward + loss only (e.g. a bfloat16 autocast): the
    backward, the gradient clipping and the optimiser step stay outside it (an autocast
    around AdamW's step stopped a LoRA run from learning at all).
    """
    codi = state.phase == "codi"
    total = cfg.codi_steps if codi else cfg.teacher_steps
    peak = cfg.codi_lr if codi else cfg.teacher_lr
    model.train()
    start = time.monotonic() - state.wall_s
    bar = tqdm(
        range(state.step, total), desc=f"{state.phase} phase", initial=state.step, total=total
    )
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total, peak, cfg.min_lr, cfg.warmup)
        batch = make_batch(model, _batch_problems(train, cfg, state.phase, step))
        with loss_context():
            if codi:
                ramp = min(1.0, step / max(1, cfg.distill_ramp))
                weight = 1.0 + (cfg.distill_factor - 1.0) * ramp
                pairs: list[InterchangePair] = []
                if cfg.interchange_weight > 0:
                    pairs = interchange_pairs(
                        batch.problems,
                        cfg.n_thoughts,
                        random.Random(f"{cfg.seed}-interchange-{step}"),
                        limit=cfg.interchange_rows,
                        value_max=cfg.value_max,
                    )
                loss, parts = codi_loss(
                    model,
                    batch,
                    weight,
                    cfg.planted_weight,
                    interchange_weight=cfg.interchange_weight,
                    interchange=pairs,
                    scale=cfg.distill_scale,
                )
            else:
                loss, _ = teacher_loss(model, batch)
                parts = {"teacher_ce": loss.item()}
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        state.step = step + 1
        state.wall_s = time.monotonic() - start
        record = {"phase": 1.0 if codi else 0.0, "step": float(step), "loss": loss.item(), **parts}
        state.history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}")
        if monitor is not None and state.step % cfg.eval_every == 0:
            model.eval()
            monitor(model, state)  # type: ignore[operator]
            model.train()
        if on_checkpoint is not None and state.step % cfg.checkpoint_every == 0:
            on_checkpoint(state)  # type: ignore[operator]
    model.eval()


def save_train_state(
    path: Path, model: CodiModel, optimizer: torch.optim.Optimizer, state: TrainState
) -> None:
    """Atomically save everything needed to resume (tensors + plain data, weights-only safe)."""
    import io

    buffer = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "state": json.dumps(asdict(state)),
        },
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())


def load_train_state(path: Path, model: CodiModel, optimizer: torch.optim.Optimizer) -> TrainState:
    """Restore a run saved by :func:`save_train_state` (``weights_only`` loading)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(blob["model"])
    optimizer.load_state_dict(blob["optimizer"])
    return TrainState(**json.loads(blob["state"]))
