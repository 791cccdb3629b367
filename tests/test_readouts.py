"""RQ3 readouts through the engine, and recovery of the planted map (lens and probes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from codi_fixtures.config import ModelConfig
from codi_fixtures.engine import build_prompt, forward_step, run_latent
from codi_fixtures.model.hooks import count_forward_hooks
from codi_fixtures.organism.task import make_splits
from codi_fixtures.stats.decoding import lens_rate, probe_effects, probe_grid
from codi_fixtures.study.data import load_problem_jsonl, stratified_sample
from codi_fixtures.study.readouts import Readouts, collect_readouts, first_token_ids

ORGANISMS = Path(__file__).resolve().parents[1] / "codi_fixtures"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _load(name: str):
    from codi_fixtures.model import load_codi

    path = ORGANISMS / name
    if not (path / "model.safetensors").exists():
        pytest.skip(f"{name} model not built")
    model = load_codi(ModelConfig(ckpt=path, device="cpu", dtype="float32"))
    problems = stratified_sample(load_problem_jsonl(path / "eval.jsonl"), 200, seed=1)
    return model, problems


@pytest.fixture(scope="module")
def planted() -> tuple[object, list, Readouts]:
    model, problems = _load("planted")
    return model, problems, collect_readouts(model, problems)


@pytest.fixture(scope="module")
def bundled() -> tuple[object, list, Readouts]:
    model, problems = _load("bundled")
    return model, problems, collect_readouts(model, problems, keep_hidden=False)


def _lens(readouts: Readouts, k: int, thought: int, site: str = "emb"):
    p, s = readouts.positions.index(f"t{thought}"), readouts.sites.index(site)
    return lens_rate(readouts.lens_rank[:, p, s, k], readouts.target_tokens[:, k])


# --------------------------------------------------------------------------- mechanics


def test_readouts_are_the_engines_values_in_any_batching(tiny_model):
    problems = make_splits(10, 2)[1][:5]
    hooks = count_forward_hooks(tiny_model)
    whole = collect_readouts(tiny_model, problems, layers=[0, 1])
    split = collect_readouts(tiny_model, problems, layers=[0, 1], batch=2)
    assert count_forward_hooks(tiny_model) == hooks
    t = tiny_model.spec.n_thoughts
    assert whole.hidden is not None and split.hidden is not None
    assert whole.hidden.shape == (5, 2 + t, 3, tiny_model.hidden_size)
    assert whole.positions[:3] == ("q_last", "bot", "t0") and whole.sites == ("emb", "L0", "L1")
    assert whole.hidden.dtype == np.float16 and whole.lens_prob.dtype == np.float32
    np.testing.assert_allclose(whole.hidden, split.hidden, atol=2e-3)
    assert (whole.lens_top == split.lens_top).mean() > 0.99
    run = run_latent(
        tiny_model,
        build_prompt(tiny_model, [p.question for p in problems]),
        capture_layers=[1],
        generate=False,
    )
    np.testing.assert_allclose(whole.hidden[:, 2:, 0], run.thoughts.numpy(), atol=2e-3, rtol=1e-3)
    np.testing.assert_allclose(
        whole.hidden[:, 2:, 2], run.block_outputs[1].numpy(), atol=2e-3, rtol=1e-3
    )


def test_lens_on_the_last_block_at_bot_is_the_models_own_prediction(planted):
    model, problems, readouts = planted
    prompt = build_prompt(model, [p.question for p in problems[:20]])
    from codi_fixtures.engine import LoopState, mask_specials
    from codi_fixtures.model.kvcache import new_cache

    mask = prompt.attention_mask
    state = LoopState(new_cache(), mask[:, :0], torch.zeros(len(prompt), dtype=torch.long))
    with torch.no_grad():
        out = forward_step(model, state, input_ids=prompt.input_ids, new_mask=mask, logits=True)
    assert out.logits is not None
    own = mask_specials(model, out.logits[:, -1]).argmax(dim=-1).numpy()
    last = readouts.sites.index(f"L{model.n_layers - 1}")
    assert (readouts.lens_top[:20, readouts.positions.index("bot"), last] == own).all()


def test_first_tokens_follow_the_answer_prompt_and_flag_undecodable(planted):
    model, _, readouts = planted
    ids, ok = first_token_ids(model, [12.0, 3.0, 0.0])
    assert ok == [True, True, True]
    pieces = [model.tokenizer.decode([i]).strip() for i in ids]
    assert pieces == ["1", "3", "0"]
    _, ok = first_token_ids(model, [-2.5])  # '-' and '.' are not in the organism vocabulary
    assert ok == [False]
    assert readouts.undecodable == []  # every organism value is decodable
    assert readouts.n_targets == 6  # five steps and the answer
    assert np.array_equal(readouts.target_values[:, -1], [p.answer for p in planted[1]])


# --------------------------------------------------------------------------- planted map


@pytest.mark.parametrize("thought", range(5))
def test_lens_recovers_the_planted_map_at_the_input_embedding(planted, thought):
    """Thought t's input embedding names step t+1's value, far above the value baseline."""
    _, _, readouts = planted
    k = thought  # target column k = step k+1
    diag = _lens(readouts, k, thought)
    assert diag.rate >= 0.9
    assert diag.result.ci_low > 0.25 and diag.result.p_value < 1e-4
    rates = [_lens(readouts, k, t).rate for t in range(6)]
    assert int(np.argmax(rates)) == thought  # the right thought for the step


@pytest.mark.parametrize("thought", range(5))
def test_lens_does_not_report_the_map_on_the_bundled_control(bundled, thought):
    _, _, readouts = bundled
    diag = _lens(readouts, thought, thought)
    assert diag.result.statistic <= 0.0 and diag.result.p_value > 0.05
    for site in readouts.sites:  # at no layer either
        assert _lens(readouts, thought, thought, site).result.statistic < 0.1


def test_probes_find_the_planted_steps_above_both_baselines(planted):
    _, _, readouts = planted
    assert readouts.hidden is not None
    positions = ("q_last", "bot", "t0", "t1")
    keep = [readouts.positions.index(p) for p in positions]
    grid = probe_grid(
        readouts.hidden[:, keep],
        readouts.target_values,
        positions,
        readouts.sites,
        targets=[0, 1],
    )
    for k, thought in ((0, "t0"), (1, "t1")):
        effects = probe_effects(grid, k, thought, "emb")
        # measured 0.79 / 0.685 (20 classes; the lens reads the whole value at 88 / 84%)
        assert effects["accuracy"].statistic > 0.6
        assert effects["minus_permuted"].verdict == "supported"
        assert effects["minus_question"].verdict == "supported"
