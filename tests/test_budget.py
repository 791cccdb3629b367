"""The analytic cost model: formulas by hand, monotonicity, and the KV estimate vs a real cache."""

from __future__ import annotations

import itertools

import pytest
import torch

from codi_fixtures.engine import build_prompt, encode_prompt
from codi_fixtures.model import budget
from codi_fixtures.model.budget import ModelShape, StudyShape
from codi_fixtures.model.codi import CodiModel, build_projection

TOY = ModelShape(
    name="toy",
    n_layers=2,
    hidden=4,
    n_heads=2,
    n_kv_heads=1,
    head_dim=2,
    ffn=8,
    vocab=10,
    n_params=100,
)
TOY_STUDY = StudyShape(
    question_tokens=3, answer_tokens=2, scored_tokens=2, n_thoughts=2, conditions=1
)


def test_toy_shape_by_hand() -> None:
    assert TOY.body_params == 100 - 10 * 4
    assert budget.weights_bytes(TOY, 2) == 200
    # 2 (k, v) * 2 layers * 1 kv head * 2 head dim * 5 positions * 2 bytes * 3 rows
    assert budget.kv_cache_bytes(TOY, seq_len=5, dtype_bytes=2, rows=3) == 240
    # 4 * 2 layers * 2 heads * 2 head dim * 5 keys
    assert budget.attention_flops_per_token(TOY, 5) == 160
    assert budget.token_flops(TOY, 5, logits=False) == 2 * 60 + 160
    assert budget.token_flops(TOY, 5, logits=True) == 2 * 60 + 2 * 10 * 4 + 160


def test_study_flops_by_hand() -> None:
    assert (TOY_STUDY.rows, TOY_STUDY.prefix_len, TOY_STUDY.seq_len) == (2, 4, 4 + 2 + 1 + 2)
    est = budget.study_flops(TOY, TOY_STUDY)
    # prefix: 2 passes x 4 tokens x (120 + 4*2*2*2*4 keys)
    assert est.prefix == 2 * 4 * (120 + 128)
    # latent: (2 rows + 1 clean-pass row) x 2 thoughts x (120 + 32 * 9 keys)
    assert est.latent == 3 * 2 * (120 + 288)
    # with logits: 2 rows x (<eot> + 2 answer + 2 scored) + the clean pass's <eot>
    assert est.answer == (2 * 5 + 1) * (120 + 80 + 288)
    assert est.total == est.prefix + est.latent + est.answer == 9800
    assert budget.study_seconds(est.total, throughput=9800.0) == 1.0


def test_memory_by_hand() -> None:
    # KV twice (decoding compacts rows by copying) + logits 10 x 2 x (2 + 12) + activations
    kv = 2 * budget.kv_cache_bytes(TOY, 9, 2)
    assert kv == 288
    assert budget.logits_bytes_per_row(TOY, 2, 2) == 280
    assert budget.logits_bytes_per_row(TOY, 0, 2) == 10 * 4  # at least one float32 row
    act = (4 * 4 + 3 * 8 + 2 * 9) * 2
    per_row = budget.per_row_bytes(TOY, 9, 2, scored_tokens=2)
    assert per_row == kv + 280 + act == 684
    # (0.8 * 10000 - 200 weights) / 684 per row = 11.4
    assert budget.suggest_batch_rows(TOY, 10_000, 9, 2, scored_tokens=2) == 11
    mem = budget.memory_estimate(TOY, 11, 9, 2, scored_tokens=2)
    assert mem.weights == 200 and mem.kv_cache == 11 * kv
    assert mem.total == 200 + 11 * per_row <= 0.8 * 10_000


def test_sequential_steps_by_hand() -> None:
    # clean pass: prefix, 2 thoughts, <eot>; ablation pass: + score forward + 1 more decode step
    assert budget.sequential_steps(TOY_STUDY) == (1 + 2 + 1) + (1 + 2 + 1 + 1 + 1)


@pytest.mark.parametrize("shape", [budget.LLAMA_3_2_1B, budget.GPT2_SMALL], ids=lambda s: s.name)
def test_more_memory_more_rows(shape: ModelShape) -> None:
    rows = [
        budget.suggest_batch_rows(shape, gb * 1e9, 116, 2) for gb in (8, 12, 16, 24, 40, 80, 141)
    ]
    assert rows == sorted(rows)
    assert all(a < b for a, b in itertools.pairwise(rows))
    longer = budget.suggest_batch_rows(shape, 80e9, 1000, 2)
    assert longer < budget.suggest_batch_rows(shape, 80e9, 116, 2)
    fp32 = budget.suggest_batch_rows(shape, 80e9, 116, 4)
    assert fp32 < rows[-2]


def test_budget_below_weights_is_a_clear_error() -> None:
    weights = budget.weights_bytes(budget.LLAMA_3_2_1B, 2)
    with pytest.raises(ValueError, match=r"weights take 2\.\d+ GiB"):
        budget.suggest_batch_rows(budget.LLAMA_3_2_1B, weights, 116, 2)
    with pytest.raises(ValueError, match="less than one row"):
        budget.suggest_batch_rows(TOY, 1000, 9, 2, scored_tokens=2)
    with pytest.raises(ValueError, match="safety"):
        budget.suggest_batch_rows(TOY, 1000, 9, 2, safety=0.0)


@pytest.mark.parametrize("n_questions", [1, 3])
def test_kv_estimate_matches_engine_cache(tiny_model: CodiModel, n_questions: int) -> None:
    questions = [
        "Tom has 3 apples. Then Tom gets 2 more. How many apples does Tom have?",
        "Ana has 5 coins.",
        "Ben has 9 eggs. Then Ben loses 2. Then Ben doubles the eggs. How many eggs?",
    ][:n_questions]
    prompt = build_prompt(tiny_model, questions)
    with torch.no_grad():
        state, _ = encode_prompt(tiny_model, prompt)
    actual = 0
    for layer in state.cache.layers:
        keys, values = layer.keys, layer.values  # type: ignore[union-attr]
        assert keys is not None and values is not None
        actual += keys.nbytes + values.nbytes
    shape = budget.shape_of(tiny_model)
    dtype_bytes = tiny_model.dtype.itemsize
    assert actual == budget.kv_cache_bytes(shape, prompt.width, dtype_bytes, rows=n_questions)


def test_shape_of_tiny_llama(tiny_llama: CodiModel) -> None:
    shape = budget.shape_of(tiny_llama)
    assert (shape.n_layers, shape.hidden, shape.n_heads, shape.n_kv_heads) == (4, 32, 4, 2)
    assert (shape.head_dim, shape.ffn) == (8, 64)
    assert shape.vocab == tiny_llama.base_vocab_size + 3
    assert shape.tied_embeddings
    assert shape.n_params == sum(p.numel() for p in tiny_llama.parameters())


def _meta_codi(config: object, prj_dim: int) -> CodiModel:
    """A weightless (meta-device) CODI module with a published model's shape."""
    from transformers import AutoModelForCausalLM

    from codi_fixtures.model.checkpoint import CodiSpec

    with torch.device("meta"):
        backbone = AutoModelForCausalLM.from_config(config)
        prj = build_projection(backbone.config.hidden_size, prj_dim)
    return CodiModel(backbone, prj, CodiSpec(prj_dim=prj_dim), tokenizer=None)


def test_builtin_shapes_match_the_published_architectures() -> None:
    from transformers import GPT2Config, LlamaConfig

    llama = LlamaConfig(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256 + 3,
        tie_word_embeddings=True,
    )
    gpt2 = GPT2Config(n_embd=768, n_layer=12, n_head=12, vocab_size=50257 + 3)
    for config, prj_dim, expected in (
        (llama, 2048, budget.LLAMA_3_2_1B),
        (gpt2, 768, budget.GPT2_SMALL),
    ):
        shape = budget.shape_of(_meta_codi(config, prj_dim))
        assert {**vars(shape), "name": ""} == {**vars(expected), "name": ""}
    assert budget.LLAMA_3_2_1B.n_params == pytest.approx(1.24e9, rel=0.01)
    assert budget.GPT2_SMALL.n_params == pytest.approx(124e6, rel=0.02)


def test_shape_of_rejects_other_objects() -> None:
    with pytest.raises(TypeError, match="CodiModel"):
        budget.shape_of(object())


def test_published_table_mentions_assumptions() -> None:
    text = budget.format_published_estimates()
    assert "ASSUMES" in text and "lower bound" in text
    assert text.count("LLaMA-3.2-1B CODI") == 2 and text.count("GPT-2 small CODI") == 2


def test_the_cli_estimates_any_number_of_conditions(capsys):
    """``--conditions 175`` (RQ1, RQ2, RQ5, RQ6) prints 176 rows per problem."""
    from codi_fixtures.model.budget import main

    main(["--conditions", "175"])
    assert "176 rows/problem (clean + 175 conditions)" in capsys.readouterr().out
