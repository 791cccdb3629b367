"""The synthetic task, its tokenizer, the CODI training recipe and the bundled checkpoint."""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from codi_fixtures.config import BUNDLED_CHECKPOINT, ModelConfig
from codi_fixtures.organism import train as train_mod
from codi_fixtures.organism.task import (
    MAX_VALUE,
    STEP_COUNTS,
    generate_problem,
    make_splits,
    render,
)
from codi_fixtures.organism.tokenizer import build_tokenizer
from codi_fixtures.organism.train import (
    TrainConfig,
    build_model,
    codi_loss,
    distill_scale,
    make_batch,
    teacher_loss,
)

EQUATION = re.compile(r"<<(\d+)([+\-*])(\d+)=(\d+)>>")


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), steps=st.sampled_from(STEP_COUNTS))
def test_ground_truth_recomputes_from_the_equations(seed, steps):
    rng = random.Random(seed)
    start, ops, name, obj = generate_problem(rng, steps)
    problem = render(start, ops, name, obj, rng, "p")
    equations = EQUATION.findall(problem.cot)
    assert len(equations) == problem.steps == steps
    value = start
    for (left, op, right, result), expected in zip(equations, problem.intermediates, strict=True):
        assert int(left) == value
        value = {"+": value + int(right), "-": value - int(right), "*": value * int(right)}[op]
        assert value == int(result) == expected
        assert 0 <= value <= MAX_VALUE
    assert problem.answer == value
    assert f"{start} {obj}" in problem.question
    assert problem.difficulty == ("5+step" if steps >= 5 else f"{steps}-step")


def test_splits_are_balanced_and_disjoint():
    train, evals = make_splits(3000, 25, seed=3)
    assert len(train) == 3000
    assert [sum(p.steps == s for p in evals) for s in STEP_COUNTS] == [25, 25, 25, 25]
    assert not {p.question for p in train} & {p.question for p in evals}
    assert make_splits(50, 5, seed=3)[1] == make_splits(50, 5, seed=3)[1]


@pytest.fixture(scope="module")
def tokenizer():
    train, evals = make_splits(500, 5)
    return build_tokenizer(f"{p.question} {p.cot} The answer is: 19" for p in train + evals)


def test_tokenizer_splits_digits_and_round_trips(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    text = "Tom has 12 apples. <<12*3=36>> The answer is: 36"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    digits = [p.lstrip("▁") for p in pieces if p.lstrip("▁").isdigit()]
    assert digits == list("121233636")  # one token per digit
    assert tokenizer.decode(ids) == text
    assert tokenizer(text)["input_ids"][0] == tokenizer.bos_token_id
    tokenizer.save_pretrained(str(tmp_path))
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]


def _tiny_config(**kw):
    base = TrainConfig(
        hidden=32,
        layers=2,
        heads=2,
        ffn=64,
        prj_dim=32,
        batch_size=16,
        n_train=300,
        n_eval_per_bin=3,
        teacher_steps=12,
        codi_steps=6,
        warmup=2,
        distill_ramp=3,
        eval_every=10_000,
        checkpoint_every=2,
    )
    return replace(base, **kw)


def test_a_few_steps_reduce_the_teacher_and_codi_losses(tokenizer):
    torch.manual_seed(0)
    cfg = _tiny_config()
    model = build_model(cfg, tokenizer).train()
    train, _ = make_splits(64, 1)
    batch = make_batch(model, train[: cfg.batch_size])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    teacher = []
    for _ in range(15):
        loss, _ = teacher_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        teacher.append(loss.item())
    assert teacher[-1] < 0.8 * teacher[0]
    codi = []
    for _ in range(15):
        loss, parts = codi_loss(model, batch, distill_weight=2.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        codi.append(loss.item())
        assert set(parts) == {"ce", "distill", "teacher_ce"}
    assert codi[-1] < codi[0]


def test_the_spread_scale_ignores_activations_every_problem_shares():
    """'spread' measures how teacher states differ between problems.

    'std' (the published divisor) grows with a constant massive activation, as a pretrained
    LM's residual stream has.
    """
    states = torch.randn((8, 32), generator=torch.Generator().manual_seed(0))
    massive = states.clone()
    massive[:, :3] += 1000.0  # three dimensions large and alike for every problem
    assert torch.allclose(distill_scale(massive, "spread"), distill_scale(states, "spread"))
    assert distill_scale(massive, "std") > 100 * distill_scale(massive, "spread")
    alike = torch.ones((8, 32))  # nothing varies (the ':' token's own embedding)
    assert distill_scale(alike * 5.0, "spread") > 0
    with pytest.raises(ValueError, match="distill"):
        TrainConfig(distill_scale="variance")


def test_the_spread_scale_changes_only_the_distillation_term(tokenizer):
    cfg = _tiny_config()
    model = build_model(cfg, tokenizer)
    train, _ = make_splits(16, 1)
    batch = make_batch(model, train[:8])
    with torch.no_grad():
        _, std_parts = codi_loss(model, batch, distill_weight=2.0)
        _, spread_parts = codi_loss(model, batch, distill_weight=2.0, scale="spread")
    assert spread_parts["ce"] == std_parts["ce"]
    assert spread_parts["teacher_ce"] == std_parts["teacher_ce"]
    assert spread_parts["distill"] != std_parts["distill"]


def test_distillation_targets_the_colon_before_the_answer_number(tokenizer):
    cfg = _tiny_config()
    model = build_model(cfg, tokenizer)
    train, _ = make_splits(8, 1)
    batch = make_batch(model, train[:4])
    for row, problem in enumerate(batch.problems):
        teacher_tokens = tokenizer.convert_ids_to_tokens(batch.teacher_ids[row].tolist())
        colon = int(batch.teacher_colon[row])
        assert teacher_tokens[colon] == ":"
        assert teacher_tokens[colon + 1].lstrip("▁") == str(int(problem.answer))[0]
        student = batch.answer_ids[row].tolist()
        assert student[0] == model.eot_id
        assert tokenizer.convert_ids_to_tokens([student[batch.answer_colon]]) == [":"]


@pytest.mark.slow
def test_training_resumes_exactly_after_an_interruption(tmp_path, monkeypatch):
    from codi_fixtures.organism.pipeline import train_organism

    cfg = _tiny_config()
    train_organism(cfg, out_dir=tmp_path / "a", work_dir=tmp_path / "wa", threads=1)

    calls = {"n": 0}
    real = train_mod.make_batch

    def interrupt_at_step_9(model, problems):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt  # a pre-empted job
        return real(model, problems)

    monkeypatch.setattr(train_mod, "make_batch", interrupt_at_step_9)
    with pytest.raises(KeyboardInterrupt):
        train_organism(cfg, out_dir=tmp_path / "b", work_dir=tmp_path / "wb", threads=1)
    monkeypatch.setattr(train_mod, "make_batch", real)
    state = torch.load(tmp_path / "wb" / "state.pt", weights_only=True)
    assert json.loads(state["state"])["step"] == 8  # saved every 2 steps
    train_organism(cfg, out_dir=tmp_path / "b", work_dir=tmp_path / "wb", threads=1)

    from safetensors.torch import load_file

    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


bundled = pytest.mark.skipif(
    not (BUNDLED_CHECKPOINT / "model.safetensors").exists(), reason="bundled model not built"
)


@bundled
def test_bundled_checkpoint_loads_with_no_options_and_is_the_published_layout():
    from safetensors import safe_open

    from codi_fixtures.model.codi import load_codi

    model = load_codi(ModelConfig(device="cpu"))
    assert model.spec.task == "organism"
    assert model.n_layers == 6
    assert model.spec.n_thoughts == 6
    with safe_open(str(BUNDLED_CHECKPOINT / "model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    assert all(k.startswith(("codi.", "prj.")) for k in keys)
    assert {"prj.1.weight", "prj.3.weight", "prj.ln.weight"} <= set(keys)
    size = sum(p.stat().st_size for p in BUNDLED_CHECKPOINT.rglob("*") if p.is_file())
    assert size <= 20 * 2**20


@bundled
@pytest.mark.slow
def test_bundled_checkpoint_reproduces_its_recorded_accuracy():
    from codi_fixtures.model.codi import load_codi
    from codi_fixtures.organism.evaluate import accuracy_by_bin, latent_answers
    from codi_fixtures.study.data import load_problem_jsonl

    model = load_codi(ModelConfig(device="cpu", dtype="float32"))
    problems = load_problem_jsonl(BUNDLED_CHECKPOINT / "eval.jsonl")
    recorded = model.spec.extra["heldout_accuracy"]["codi"]
    assert accuracy_by_bin(problems, latent_answers(model, problems)) == recorded
