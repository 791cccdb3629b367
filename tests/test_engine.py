"""The latent engine on tiny LLaMA and GPT-2 CODI models: indexing, batching, patching, hooks.

The reference for indexing is an independent re-implementation of the latent
loop without KV cache, batching or padding: every step is one full forward
over the literal sequence ``question, <bot>, thought 0..t, ...``, and positions
come from :mod:`codi_fixtures.model.architecture` (``thought_position`` /
``eot_position``), never from the engine's own bookkeeping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codi_fixtures.engine import (
    KnockoutMask,
    LatentRun,
    Prompt,
    ThoughtPatch,
    _BranchPlan,
    answer_targets,
    build_prompt,
    run_latent,
)
from codi_fixtures.model.architecture import eot_position, thought_position, unwrap_peft
from codi_fixtures.model.codi import CodiModel
from codi_fixtures.model.hooks import block_output_hook, count_forward_hooks
from codi_fixtures.testing import tiny_codi

ATOL = 1e-5
MAX_NEW = 6
DIFFERENT = 1e-4  # a changed value differs by more than this somewhere in its d entries


# --- an independent reference: one full, un-cached, un-padded forward per step --------------
@dataclass(frozen=True)
class Reference:
    """The latent loop recomputed from scratch for one question."""

    q_len: int
    thoughts: torch.Tensor  # (T, d) input embeddings at positions Q+1+t
    first_logits: torch.Tensor  # (V,) at <eot>
    attentions: torch.Tensor  # (layers, heads, T) <eot> query -> thought keys
    blocks: torch.Tensor  # (layers, T, d) block outputs at the thought positions


def _question_ids(model: CodiModel, question: str) -> list[int]:
    ids = list(model.tokenizer(question)["input_ids"])
    return [*ids, model.eos_id] if model.spec.eos_before_bot else ids


@contextmanager
def _forward_hook(model: CodiModel, layer: int, hook: Callable[..., object]) -> Iterator[None]:
    handle = model.layers[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _full_forward(model: CodiModel, seq: torch.Tensor) -> Any:
    """One forward over the whole (S, d) sequence: no cache, explicit mask and positions."""
    length = seq.shape[0]
    with torch.no_grad():
        return unwrap_peft(model.codi)(
            inputs_embeds=seq[None],
            attention_mask=torch.ones((1, length), dtype=torch.long),
            position_ids=torch.arange(length)[None],
            output_attentions=True,
            output_hidden_states=True,
            use_cache=False,
        )


def reference_latent(
    model: CodiModel,
    question: str,
    *,
    zero_thought: int | None = None,
    residual: tuple[int, int, torch.Tensor] | None = None,
) -> Reference:
    """Recompute CODI inference for ``question`` with optional ablations, step by step.

    ``zero_thought=t`` zeroes thought t's input embedding; ``residual=(L, t, v)``
    sets block L's output at position Q+1+t to ``v`` (in every forward that has it).
    """
    ids = _question_ids(model, question)
    q, n = len(ids), model.spec.n_thoughts
    seq = model.embed(torch.tensor([*ids, model.bot_id]))
    thoughts: list[torch.Tensor] = []
    captured: list[torch.Tensor] = []
    with ExitStack() as stack:
        if residual is not None:
            layer, thought, value = residual
            position = thought_position(thought, q)

            def override(_m: object, _i: object, output: object) -> object:
                out = _block_output(output)
                if out.shape[1] <= position:
                    return None
                out = out.clone()
                out[:, position] = value
                return (out, *output[1:]) if isinstance(output, tuple) else out

            stack.enter_context(_forward_hook(model, layer, override))
        out = _full_forward(model, seq)
        for t in range(n):
            source = q if t == 0 else thought_position(t - 1, q)  # <bot>, then thought t-1
            z = model.project(out.hidden_states[-1][0, source])
            if zero_thought == t:
                z = torch.zeros_like(z)
            thoughts.append(z)
            seq = torch.cat([seq, z[None]])
            assert seq.shape[0] - 1 == thought_position(t, q)
            out = _full_forward(model, seq)
        seq = torch.cat([seq, model.embed(torch.tensor([model.eot_id]))])
        assert seq.shape[0] - 1 == eot_position(q, n)
        for layer in range(model.n_layers):  # registered last: sees the overridden output
            stack.enter_context(
                _forward_hook(model, layer, lambda _m, _i, o: captured.append(_block_output(o)[0]))
            )
        out = _full_forward(model, seq)
    eot = eot_position(q, n)
    columns = [thought_position(t, q) for t in range(n)]
    return Reference(
        q_len=q,
        thoughts=torch.stack(thoughts),
        first_logits=out.logits[0, eot, : model.base_vocab_size],
        attentions=torch.stack([a[0, :, eot, columns] for a in out.attentions]),
        blocks=torch.stack([c[columns] for c in captured]),
    )


def _block_output(output: object) -> torch.Tensor:
    """A decoder block's hidden output: a tensor (transformers >= 5.x late) or a tuple's first."""
    hidden = output[0] if isinstance(output, tuple) else output
    assert isinstance(hidden, torch.Tensor)
    return hidden


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def _vocab(model: CodiModel) -> int:
    return model.base_vocab_size


def _all_layers(model: CodiModel) -> list[int]:
    return list(range(model.n_layers))


# --- prompt layout -------------------------------------------------------------------------
def test_prompt_layout(tiny_model: CodiModel, questions: list[str]) -> None:
    """Left padding puts every row's <bot> in column P-1, after its Q question tokens."""
    prompt = build_prompt(tiny_model, questions[:4])
    width = prompt.width
    assert len({len(_question_ids(tiny_model, q)) for q in questions[:4]}) > 1  # padding happens
    for row, question in enumerate(questions[:4]):
        ids = _question_ids(tiny_model, question)
        q = int(prompt.q_lens[row])
        assert q == len(ids)
        assert prompt.input_ids[row, width - 1] == tiny_model.bot_id
        assert prompt.input_ids[row, width - 1 - q : width - 1].tolist() == ids
        assert prompt.attention_mask[row].tolist() == [0] * (width - 1 - q) + [1] * (q + 1)
        assert (prompt.input_ids[row, : width - 1 - q] == tiny_model.pad_id).all()


def test_tokenizer_bos_follows_architecture(tiny_llama: CodiModel, tiny_gpt2: CodiModel) -> None:
    """The tiny LLaMA tokenizer adds BOS (counted in Q); the GPT-2 one adds nothing."""
    llama = tiny_llama.tokenizer("Tom has 3 apples.")["input_ids"]
    gpt2 = tiny_gpt2.tokenizer("Tom has 3 apples.")["input_ids"]
    assert llama[0] == tiny_llama.tokenizer.bos_token_id
    assert gpt2[0] != tiny_gpt2.tokenizer.bos_token_id
    assert llama[1:] == gpt2


def test_eos_before_bot_layout(questions: list[str]) -> None:
    """With ``eos_before_bot`` (remove_eos=False) the eos is part of Q, right before <bot>."""
    model = tiny_codi("gpt2")
    model.spec = replace(model.spec, eos_before_bot=True)
    chosen = questions[:3]
    prompt = build_prompt(model, chosen)
    run = run_latent(model, prompt, attention_layers=_all_layers(model), generate=False)
    assert run.attentions is not None
    for row, question in enumerate(chosen):
        plain = model.tokenizer(question)["input_ids"]
        assert int(prompt.q_lens[row]) == len(plain) + 1
        assert prompt.input_ids[row, prompt.width - 2 :].tolist() == [model.eos_id, model.bot_id]
        ref = reference_latent(model, question)
        assert ref.q_len == len(plain) + 1
        _close(run.thoughts[row], ref.thoughts)
        _close(run.first_logits[row, : _vocab(model)], ref.first_logits)
        _close(run.attentions[row], ref.attentions)


# --- indexing, pinned by independent recomputation ----------------------------------------
def test_one_full_forward_reproduces_engine(tiny_model: CodiModel, questions: list[str]) -> None:
    """Thought t is position Q+1+t: one un-cached forward gives the engine's <eot> outputs.

    The forward runs over question, <bot>, the recorded thoughts and <eot>.
    """
    model, chosen = tiny_model, questions[2:6]
    run = run_latent(
        model, build_prompt(model, chosen), attention_layers=_all_layers(model), generate=False
    )
    assert run.attentions is not None
    n = model.spec.n_thoughts
    for row, question in enumerate(chosen):
        ids = _question_ids(model, question)
        q = len(ids)
        assert int(run.q_lens[row]) == q
        seq = torch.cat(
            [
                model.embed(torch.tensor([*ids, model.bot_id])),
                run.thoughts[row],
                model.embed(torch.tensor([model.eot_id])),
            ]
        )
        out = _full_forward(model, seq)
        eot = eot_position(q, n)
        _close(run.first_logits[row, : _vocab(model)], out.logits[0, eot, : _vocab(model)])
        columns = [thought_position(t, q) for t in range(n)]
        expected = torch.stack([a[0, :, eot, columns] for a in out.attentions])
        _close(run.attentions[row], expected)
        # The recurrence: thought 0 comes from <bot> (position Q), thought t+1 from thought t.
        last = out.hidden_states[-1][0]
        _close(run.thoughts[row, 0], model.project(last[q]))
        for t in range(n - 1):
            _close(run.thoughts[row, t + 1], model.project(last[thought_position(t, q)]))


def test_padded_columns(tiny_model: CodiModel, questions: list[str]) -> None:
    """In the padded batch, thought t is column P+t and <eot> column P+T for every row."""
    model = tiny_model
    prompt = build_prompt(model, questions[:5])
    run = run_latent(model, prompt, attention_layers=_all_layers(model), generate=False)
    assert run.attentions is not None
    width, n, batch = prompt.width, model.spec.n_thoughts, len(prompt)
    embeds = torch.cat(
        [
            model.embed(prompt.input_ids),
            run.thoughts,
            model.embed(torch.full((batch, 1), model.eot_id)),
        ],
        dim=1,
    )
    mask = torch.cat([prompt.attention_mask, torch.ones((batch, n + 1), dtype=torch.long)], dim=1)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    with torch.no_grad():
        out = unwrap_peft(model.codi)(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            output_attentions=True,
            use_cache=False,
        )
    _close(run.first_logits[:, : _vocab(model)], out.logits[:, -1, : _vocab(model)])
    expected = torch.stack([a[:, :, -1, width : width + n] for a in out.attentions], dim=1)
    _close(run.attentions, expected)


@pytest.mark.parametrize(
    "ablation",
    ["clean", "embedding-t0", "embedding-t3", "embedding-t5", "block0-t1", "blocklast-t4"],
)
def test_engine_matches_reference_loop(
    tiny_model: CodiModel, questions: list[str], ablation: str
) -> None:
    """Clean and ablated runs equal the step-by-step recomputation (padded batch of 3)."""
    model, chosen = tiny_model, [questions[0], questions[7], questions[11]]
    n = model.spec.n_thoughts
    d = model.hidden_size
    rows = len(chosen)
    patch, zero, residual = None, None, None
    if ablation.startswith("embedding"):
        zero = int(ablation.rsplit("t", 1)[1])
        mask = torch.zeros((rows, n), dtype=torch.bool)
        mask[:, zero] = True
        patch = ThoughtPatch(values=torch.zeros((rows, n, d)), mask=mask)
    elif ablation.startswith("block"):
        layer = 0 if ablation.startswith("block0") else model.n_layers - 1
        thought = int(ablation.rsplit("t", 1)[1])
        value = torch.randn(d, generator=torch.Generator().manual_seed(3))
        mask = torch.zeros((rows, n), dtype=torch.bool)
        mask[:, thought] = True
        values = torch.zeros((rows, n, d))
        values[:, thought] = value
        patch = ThoughtPatch(values=values, mask=mask, layer=layer)
        residual = (layer, thought, value)
    run = run_latent(
        model,
        build_prompt(model, chosen),
        patch=patch,
        capture_layers=_all_layers(model),
        attention_layers=_all_layers(model),
        generate=False,
    )
    assert run.attentions is not None
    for row, question in enumerate(chosen):
        ref = reference_latent(model, question, zero_thought=zero, residual=residual)
        assert int(run.q_lens[row]) == ref.q_len
        _close(run.thoughts[row], ref.thoughts)
        _close(run.first_logits[row, : _vocab(model)], ref.first_logits)
        _close(run.attentions[row], ref.attentions)
        for layer in _all_layers(model):
            _close(run.block_outputs[layer][row], ref.blocks[layer])


@pytest.mark.parametrize("t", [0, 2, 5])
def test_attention_index_is_ablation_index(
    tiny_model: CodiModel, questions: list[str], t: int
) -> None:
    """Attention index t and ablation index t are the same column, P+t.

    The engine's attention for thought t is paid to the key of the embedding that
    ablating thought t replaces.
    """
    model = tiny_model
    prompt = build_prompt(model, questions[3:6])
    n, d, batch = model.spec.n_thoughts, model.hidden_size, len(prompt)
    mask = torch.zeros((batch, n), dtype=torch.bool)
    mask[:, t] = True
    run = run_latent(
        model,
        prompt,
        patch=ThoughtPatch(values=torch.zeros((batch, n, d)), mask=mask),
        attention_layers=_all_layers(model),
        generate=False,
    )
    assert run.attentions is not None
    assert torch.equal(run.thoughts[:, t], torch.zeros((batch, d)))
    embeds = torch.cat(
        [
            model.embed(prompt.input_ids),
            run.thoughts,
            model.embed(torch.full((batch, 1), model.eot_id)),
        ],
        dim=1,
    )
    column = prompt.width + t
    assert torch.equal(embeds[:, column], torch.zeros((batch, d)))  # the ablated key's input
    mask_all = torch.cat([prompt.attention_mask, torch.ones((batch, n + 1), dtype=torch.long)], 1)
    with torch.no_grad():
        out = unwrap_peft(model.codi)(
            inputs_embeds=embeds,
            attention_mask=mask_all,
            position_ids=(mask_all.cumsum(1) - 1).clamp(min=0),
            output_attentions=True,
            use_cache=False,
        )
    for layer, attn in enumerate(out.attentions):
        _close(run.attentions[:, layer, :, t], attn[:, :, -1, column])
    # ... and differs from the neighbouring columns, so an off-by-one would be caught.
    for other in (column - 1, column + 1):
        assert not torch.allclose(out.attentions[0][:, :, -1, other], run.attentions[:, 0, :, t])


# --- batching -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def single_runs() -> dict[tuple[str, int], LatentRun]:
    """Batch-of-one runs, computed on first use (keyed by architecture and question)."""
    return {}


def _run_all(
    model: CodiModel, prompt: Prompt, golds: Sequence[str], rows: torch.Tensor | None = None
) -> LatentRun:
    return run_latent(
        model,
        prompt,
        rows=rows,
        attention_layers=_all_layers(model),
        targets=answer_targets(model, golds),
        max_new_tokens=MAX_NEW,
    )


N_QUESTIONS = 12  # len(questions): the organism eval split with 3 per difficulty bin


@st.composite
def _batches(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """(questions for the prompt: a subset in any order, run rows into it: repeats allowed)."""
    chosen = draw(st.lists(st.integers(0, N_QUESTIONS - 1), min_size=1, max_size=4, unique=True))
    rows = draw(st.lists(st.integers(0, len(chosen) - 1), min_size=1, max_size=5))
    return chosen, rows


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=_batches())
def test_batched_equals_batch_of_one(
    request: pytest.FixtureRequest, arch: str, batch: tuple[list[int], list[int]]
) -> None:
    """Any subset and order of questions, with repeated rows, gives each row its solo result."""
    # Fixtures are fetched here, not taken as arguments: hypothesis reprs its arguments
    # when it reports a failure, and a dict of runs is too big for that.
    model: CodiModel = request.getfixturevalue(f"tiny_{arch}")
    questions: list[str] = request.getfixturevalue("questions")
    single_runs: dict[tuple[str, int], LatentRun] = request.getfixturevalue("single_runs")
    chosen, rows = batch
    assert len(questions) == N_QUESTIONS
    golds = [str(3 + 7 * i) for i in range(len(questions))]
    for index in chosen:
        if (arch, index) not in single_runs:
            single_runs[arch, index] = _run_all(
                model, build_prompt(model, [questions[index]]), [golds[index]]
            )
    prompt = build_prompt(model, [questions[i] for i in chosen])
    batched = _run_all(model, prompt, [golds[chosen[r]] for r in rows], torch.tensor(rows))
    assert batched.attentions is not None and batched.target_logp is not None
    for r, row in enumerate(rows):
        solo = single_runs[arch, chosen[row]]
        assert solo.attentions is not None and solo.target_logp is not None
        _close(batched.first_logits[r, : _vocab(model)], solo.first_logits[0, : _vocab(model)])
        _close(batched.thoughts[r], solo.thoughts[0])
        _close(batched.attentions[r], solo.attentions[0])
        _close(batched.target_logp[r], solo.target_logp[0])
        assert batched.answer_ids[r] == solo.answer_ids[0]
        assert int(batched.q_lens[r]) == int(solo.q_lens[0])


# --- patching invariants -----------------------------------------------------------------
ROWS = torch.tensor([0, 0, 1, 1, 2, 2])  # clean and ablated copy of three questions
CLEAN, ABLATED = ROWS.new_tensor([0, 2, 4]), ROWS.new_tensor([1, 3, 5])


def _assert_runs_equal(a: LatentRun, b: LatentRun) -> None:
    assert torch.equal(a.thoughts, b.thoughts)
    assert torch.equal(a.first_logits, b.first_logits)
    assert a.answer_ids == b.answer_ids
    assert torch.equal(a.nonfinite, b.nonfinite)
    assert a.block_outputs.keys() == b.block_outputs.keys()
    for layer in a.block_outputs:
        assert torch.equal(a.block_outputs[layer], b.block_outputs[layer])
    for x, y in ((a.attentions, b.attentions), (a.target_logp, b.target_logp)):
        assert (x is None) == (y is None)
        if x is not None:
            assert torch.equal(x, y)


def _differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Every vector along the last dim differs somewhere by more than DIFFERENT."""
    return bool(((a - b).abs().amax(dim=-1) > DIFFERENT).all())


@pytest.mark.parametrize("layer", [None, 0, -1], ids=["embedding", "block0", "blocklast"])
def test_clean_patch_is_identity(
    tiny_model: CodiModel, questions: list[str], layer: int | None
) -> None:
    """Patching the clean values back in reproduces the clean run bit for bit."""
    model = tiny_model
    layer = None if layer is None else layer % model.n_layers
    prompt = build_prompt(model, questions[4:7])
    kwargs = {
        "rows": ROWS,
        "capture_layers": _all_layers(model),
        "attention_layers": _all_layers(model),
        "targets": answer_targets(model, ["4", "12", "7", "4", "12", "7"]),
        "max_new_tokens": MAX_NEW,
    }
    clean = run_latent(model, prompt, **kwargs)
    values = clean.thoughts if layer is None else clean.block_outputs[layer]
    mask = torch.ones(values.shape[:2], dtype=torch.bool)
    patched = run_latent(model, prompt, patch=ThoughtPatch(values, mask, layer=layer), **kwargs)
    _assert_runs_equal(patched, clean)


@pytest.mark.parametrize("t", [0, 2, 5])
@pytest.mark.parametrize("layer", [None, 0, 2], ids=["embedding", "block0", "block2"])
def test_ablation_leaves_earlier_positions_unchanged(
    tiny_model: CodiModel, questions: list[str], layer: int | None, t: int
) -> None:
    """Ablating thought t changes nothing before position Q+1+t and everything after it.

    Rows without the ablation are untouched by rows with it in the same batch.
    """
    model = tiny_model
    n, d = model.spec.n_thoughts, model.hidden_size
    prompt = build_prompt(model, questions[1:4])
    layers = _all_layers(model)
    clean_only = run_latent(model, prompt, rows=ROWS, capture_layers=layers, max_new_tokens=MAX_NEW)
    mask = torch.zeros((len(ROWS), n), dtype=torch.bool)
    mask[ABLATED, t] = True
    # As build_patch does: clean site values everywhere, the zero ablation at thought t.
    clean_site = clean_only.thoughts if layer is None else clean_only.block_outputs[layer]
    values = clean_site.clone()
    values[ABLATED, t] = 0.0
    run = run_latent(
        model,
        prompt,
        rows=ROWS,
        patch=ThoughtPatch(values, mask, layer=layer),
        capture_layers=layers,
        max_new_tokens=MAX_NEW,
    )
    # Isolation: the clean rows of the mixed batch equal the all-clean batch.
    assert torch.equal(run.thoughts[CLEAN], clean_only.thoughts[CLEAN])
    assert torch.equal(run.first_logits[CLEAN], clean_only.first_logits[CLEAN])
    for lay in layers:
        assert torch.equal(run.block_outputs[lay][CLEAN], clean_only.block_outputs[lay][CLEAN])
    # Before thought t: identical everywhere.
    th, blocks = run.thoughts, run.block_outputs
    assert torch.equal(th[ABLATED, :t], th[CLEAN, :t])
    for lay in layers:
        assert torch.equal(blocks[lay][ABLATED, :t], blocks[lay][CLEAN, :t])
    # At thought t.
    if layer is None:
        assert torch.equal(th[ABLATED, t], torch.zeros((3, d)))
        assert _differs(th[CLEAN, t], th[ABLATED, t])
        for lay in layers:
            assert _differs(blocks[lay][ABLATED, t], blocks[lay][CLEAN, t])
    else:
        assert torch.equal(th[ABLATED, t], th[CLEAN, t])  # the input is not touched
        for lay in layers:
            if lay < layer:
                assert torch.equal(blocks[lay][ABLATED, t], blocks[lay][CLEAN, t])
            elif lay == layer:
                assert torch.equal(blocks[lay][ABLATED, t], torch.zeros((3, d)))
            else:
                assert _differs(blocks[lay][ABLATED, t], blocks[lay][CLEAN, t])
    # After thought t: the change propagates (no clean value is re-patched downstream).
    assert _differs(th[ABLATED, t + 1 :], th[CLEAN, t + 1 :])
    for lay in layers:
        assert _differs(blocks[lay][ABLATED, t + 1 :], blocks[lay][CLEAN, t + 1 :])
    assert _differs(
        run.first_logits[ABLATED, : _vocab(model)], run.first_logits[CLEAN, : _vocab(model)]
    )


# --- hooks ---------------------------------------------------------------------------------
class _ExplodingPatch(ThoughtPatch):
    """A residual patch whose function raises inside the forward, at thought 2."""

    def apply(self, thought: int, value: torch.Tensor) -> torch.Tensor:
        if thought == 2:
            raise RuntimeError("boom inside the hook")
        return super().apply(thought, value)


def _patch_for(
    model: CodiModel, batch: int, layer: int, cls: type[ThoughtPatch] = ThoughtPatch
) -> ThoughtPatch:
    n, d = model.spec.n_thoughts, model.hidden_size
    mask = torch.zeros((batch, n), dtype=torch.bool)
    mask[:, 3] = True
    return cls(torch.zeros((batch, n, d)), mask, layer=layer)


def _hooks_after_warm_up(model: CodiModel, questions: list[str]) -> int:
    """Hook count once transformers has installed its own (persistent) capturing hooks.

    transformers 5 adds output-capturing forward hooks on the first forward that asks
    for attentions or hidden states and keeps them (see test_checkpoint), so counts
    are compared before/after a run that already had that first forward.
    """
    run_latent(model, build_prompt(model, questions[:1]), attention_layers=[0], generate=False)
    return count_forward_hooks(model)


def test_no_hooks_remain_after_run(tiny_model: CodiModel, questions: list[str]) -> None:
    model = tiny_model
    before = _hooks_after_warm_up(model, questions)
    prompt = build_prompt(model, questions[:2])
    run_latent(
        model,
        prompt,
        patch=_patch_for(model, 2, 1),
        capture_layers=[0, 1, 3],
        attention_layers=[2],
        max_new_tokens=MAX_NEW,
    )
    assert count_forward_hooks(model) == before


def test_no_hooks_remain_when_the_hook_raises(tiny_model: CodiModel, questions: list[str]) -> None:
    model = tiny_model
    before = _hooks_after_warm_up(model, questions)
    prompt = build_prompt(model, questions[:2])
    with pytest.raises(RuntimeError, match="boom inside the hook"):
        run_latent(
            model,
            prompt,
            patch=_patch_for(model, 2, 1, _ExplodingPatch),
            capture_layers=[0, 1, 3],
            generate=False,
        )
    assert count_forward_hooks(model) == before


def test_no_hooks_remain_when_on_thought_raises(
    tiny_model: CodiModel, questions: list[str]
) -> None:
    model = tiny_model
    before = _hooks_after_warm_up(model, questions)

    def on_thought(t: int, z: torch.Tensor) -> torch.Tensor:
        if t == 3:
            raise ValueError("stop at thought 3")
        return z

    with pytest.raises(ValueError, match="stop at thought 3"):
        run_latent(
            model,
            build_prompt(model, questions[:2]),
            patch=_patch_for(model, 2, 1),
            capture_layers=[0, 2],
            on_thought=on_thought,
            generate=False,
        )
    assert count_forward_hooks(model) == before


def test_on_thought_rewrites_the_input(tiny_model: CodiModel, questions: list[str]) -> None:
    """``on_thought`` sees each thought once, in order, and its result is what is fed."""
    model = tiny_model
    seen: list[int] = []

    def on_thought(t: int, z: torch.Tensor) -> torch.Tensor:
        seen.append(t)
        return z * 0 + t

    run = run_latent(
        model, build_prompt(model, questions[:2]), on_thought=on_thought, generate=False
    )
    assert seen == list(range(model.spec.n_thoughts))
    for t in range(model.spec.n_thoughts):
        assert torch.equal(run.thoughts[:, t], torch.full_like(run.thoughts[:, t], float(t)))


def test_block_output_hook_is_removed_when_fn_raises(tiny_model: CodiModel) -> None:
    model = tiny_model
    before = count_forward_hooks(model)

    def explode(_out: torch.Tensor) -> None:
        raise RuntimeError("fn failed")

    ids = torch.tensor([model.tokenizer("Tom has 3 apples.")["input_ids"]])
    with pytest.raises(RuntimeError, match="fn failed"), block_output_hook(model.codi, 1, explode):
        assert count_forward_hooks(model) == before + 1
        model.codi(input_ids=ids)
    assert count_forward_hooks(model) == before


def test_block_output_hook_rejects_unknown_layers(tiny_model: CodiModel) -> None:
    before = count_forward_hooks(tiny_model)
    with (
        pytest.raises(ValueError, match="layer 4 out of range: the model has 4 blocks"),
        block_output_hook(tiny_model.codi, 4, lambda out: None),
    ):
        pass
    assert count_forward_hooks(tiny_model) == before


# --- decoding and scoring ------------------------------------------------------------------
def _specials(model: CodiModel) -> set[int]:
    return {model.pad_id, model.bot_id, model.eot_id}


def test_greedy_answers_are_well_formed(tiny_model: CodiModel, questions: list[str]) -> None:
    model = tiny_model
    run = run_latent(model, build_prompt(model, questions), max_new_tokens=MAX_NEW)
    assert len(run.answer_ids) == len(questions)
    for ids in run.answer_ids:
        assert 1 <= len(ids) <= MAX_NEW
        assert not _specials(model) & set(ids)
        stops = [i for i, token in enumerate(ids) if token in model.stop_ids]
        assert stops in ([], [len(ids) - 1])  # a stop token ends the answer
        if not stops:
            assert len(ids) == MAX_NEW
    assert (run.first_logits[:, model.base_vocab_size :] == float("-inf")).all()


@contextmanager
def _steer_head(model: CodiModel, bias: Callable[[int], dict[int, float]]) -> Iterator[list[int]]:
    """Add ``bias(call)[token]`` to the LM head's logits on its ``call``-th use (1-based)."""
    calls: list[int] = []

    def hook(_module: object, _inputs: object, logits: torch.Tensor) -> torch.Tensor:
        calls.append(len(calls) + 1)
        logits = logits.clone()
        for token, value in bias(len(calls)).items():
            logits[..., token] += value
        return logits

    handle = model.codi.get_output_embeddings().register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def test_specials_are_never_generated(tiny_model: CodiModel, questions: list[str]) -> None:
    """Even when pad, <bot> and <eot> dominate the logits, decoding never emits them."""
    model = tiny_model
    with _steer_head(model, lambda _call: dict.fromkeys(_specials(model), 1e4)):
        run = run_latent(model, build_prompt(model, questions[:3]), max_new_tokens=MAX_NEW)
    for ids in run.answer_ids:
        assert ids and not _specials(model) & set(ids)


def test_decoding_stops_at_eos(tiny_model: CodiModel, questions: list[str]) -> None:
    """A head that forbids eos for two tokens, then forces it, yields 3-token answers."""
    model = tiny_model
    eos = model.eos_id
    with _steer_head(model, lambda call: {eos: -1e4 if call < 3 else 1e4}) as calls:
        run = run_latent(model, build_prompt(model, questions[:3]), max_new_tokens=MAX_NEW)
    assert calls == [1, 2, 3]  # <eot>, then two decoding steps: no step after every row stopped
    for ids in run.answer_ids:
        assert len(ids) == 3
        assert ids[-1] == eos
        assert eos not in ids[:-1]


def test_finished_rows_leave_the_batch_without_changing_answers(
    tiny_model: CodiModel, questions: list[str]
) -> None:
    """Rows that stopped are dropped from decoding; the others' answers are unaffected."""
    model = tiny_model
    eos = model.eos_id
    prompt = build_prompt(model, questions[:4])
    rows_seen: list[int] = []

    def bias(call: int) -> dict[int, float]:
        return {eos: -1e4}  # nobody stops on their own

    with _steer_head(model, bias):
        free = run_latent(model, prompt, max_new_tokens=6)

    def stop_first_three(_module: object, _inputs: object, logits: torch.Tensor) -> torch.Tensor:
        rows_seen.append(logits.shape[0])
        logits = logits.clone()
        logits[..., eos] = -1e4
        if len(rows_seen) == 2:  # first decoding step: rows 0-2 emit eos
            logits[:3, -1, eos] = 1e4
        return logits

    handle = model.codi.get_output_embeddings().register_forward_hook(stop_first_three)
    try:
        run = run_latent(model, prompt, max_new_tokens=6)
    finally:
        handle.remove()
    assert rows_seen[:2] == [4, 4] and set(rows_seen[2:]) == {1}  # compacted to the live row
    assert run.answer_ids[3] == free.answer_ids[3]
    assert [len(ids) for ids in run.answer_ids[:3]] == [2, 2, 2]


def test_an_answer_cut_off_before_the_answer_prompt_has_no_answer(
    tiny_model: CodiModel, questions: list[str]
) -> None:
    """A truncated explicit chain of thought is not parsed as its last number."""
    model = tiny_model
    digit = model.tokenizer.convert_tokens_to_ids("7")
    with _steer_head(model, lambda _call: {digit: 1e4}):
        run = run_latent(model, build_prompt(model, questions[:2]), max_new_tokens=3)
    assert all(text.replace(" ", "") == "777" for text in run.answer_text)
    assert run.answers == [None, None]


def test_decoding_stops_at_extra_stop_token(questions: list[str]) -> None:
    """``spec.stop_token_ids`` end an answer like eos (the Instruct LLaMA's <|eot_id|>)."""
    model = tiny_codi("gpt2")
    stop = 5
    model.spec = replace(model.spec, stop_token_ids=(stop,))
    eos = model.eos_id
    with _steer_head(model, lambda call: {stop: 1e4} if call == 2 else {stop: -1e4, eos: -1e4}):
        run = run_latent(model, build_prompt(model, questions[:2]), max_new_tokens=MAX_NEW)
    assert all(len(ids) == 2 and ids[-1] == stop for ids in run.answer_ids)


def test_answer_targets_score_only_the_answer(tiny_model: CodiModel, questions: list[str]) -> None:
    """Targets are "<prompt> <gold>" + eos; only the tokens after the prompt are scored."""
    model = tiny_model
    golds = ["18", "7", "105"]
    targets, n_prompt = answer_targets(model, golds)
    prompt_ids = model.tokenizer(model.spec.answer_prompt, add_special_tokens=False)["input_ids"]
    assert n_prompt == [len(prompt_ids)] * len(golds)
    for seq, skip, gold in zip(targets, n_prompt, golds, strict=True):
        assert seq[:skip] == prompt_ids
        assert seq[-1] == model.eos_id
        assert model.tokenizer.decode(seq[skip:-1]).strip() == gold
        assert len(seq) - skip == len(gold) + 1  # one token per digit, then eos

    chosen = questions[5:8]
    run = run_latent(
        model, build_prompt(model, chosen), targets=(targets, n_prompt), generate=False
    )
    assert run.target_logp is not None
    vocab = _vocab(model)
    for row, question in enumerate(chosen):
        ref = reference_latent(model, question)
        seq = targets[row]
        q = ref.q_len
        embeds = torch.cat(
            [
                model.embed(torch.tensor([*_question_ids(model, question), model.bot_id])),
                ref.thoughts,
                model.embed(torch.tensor([model.eot_id, *seq[:-1]])),
            ]
        )
        out = _full_forward(model, embeds)
        eot = eot_position(q, model.spec.n_thoughts)
        logp = torch.log_softmax(out.logits[0, eot:, :vocab], dim=-1)  # row i predicts seq[i]
        token_logp = logp[torch.arange(len(seq)), torch.tensor(seq)]
        skip = n_prompt[row]
        _close(run.target_logp[row], token_logp[skip:].sum())
        assert not torch.allclose(run.target_logp[row], token_logp.sum(), atol=1e-3)


# --- non-finite values ---------------------------------------------------------------------
@pytest.mark.parametrize("layer", [None, 1], ids=["embedding", "block1"])
def test_nan_patch_flags_only_its_row(
    tiny_model: CodiModel, questions: list[str], layer: int | None
) -> None:
    model = tiny_model
    n, d = model.spec.n_thoughts, model.hidden_size
    prompt = build_prompt(model, questions[:3])
    clean = run_latent(model, prompt, max_new_tokens=MAX_NEW)
    assert not clean.nonfinite.any()
    mask = torch.zeros((3, n), dtype=torch.bool)
    mask[1, 2] = True
    values = torch.full((3, n, d), float("nan"))
    run = run_latent(
        model, prompt, patch=ThoughtPatch(values, mask, layer=layer), max_new_tokens=MAX_NEW
    )
    assert run.nonfinite.tolist() == [False, True, False]
    assert torch.isfinite(run.first_logits[[0, 2], : _vocab(model)]).all()
    assert torch.equal(run.first_logits[[0, 2]], clean.first_logits[[0, 2]])


def test_verified_targets_skip_decoding_without_changing_answers(
    tiny_model: CodiModel, questions: list[str]
) -> None:
    """Rows whose greedy path equals their target get it without decoding; others decode."""
    model = tiny_model
    prompt = build_prompt(model, questions[:4])
    free = run_latent(model, prompt, max_new_tokens=MAX_NEW)
    own = free.answer_ids  # the model's own greedy paths (some cut off at MAX_NEW)
    targets = ([*own[:2], [7, 7, model.eos_id], [8, model.eos_id]], [0, 0, 0, 0])
    checked = run_latent(model, prompt, targets=targets, max_new_tokens=MAX_NEW)
    assert checked.answer_ids == free.answer_ids
    assert checked.answer_text == free.answer_text
    assert checked.answers == free.answers


@pytest.mark.parametrize("layer", [None, 1])
@pytest.mark.parametrize("clean_rows", ["every question", "not question 2", "last, one twice"])
def test_rows_joining_the_loop_late_equal_rows_that_ran_it_all(
    tiny_model: CodiModel, questions: list[str], layer: int | None, clean_rows: str
) -> None:
    """Rows branch from their question's trunk where their patch starts: same results.

    The plan (rows sorted by first patched thought, joining a shared trunk) is switched off
    by an ``on_thought`` that changes nothing, which needs every row to run every step.
    With a never-patched row for every question, those rows are the trunks (also when they
    come last, in another question order, and one question has two); without, the trunks
    are extra rows.
    """
    model = tiny_model
    n = model.spec.n_thoughts
    prompt = build_prompt(model, questions[:3])
    rows = torch.tensor([0, 1, 2] * (n + 2))  # clean, every single thought, all thoughts
    first = [n] * 3 + [t for t in range(n) for _ in range(3)] + [0] * 3
    mask = torch.zeros((len(rows), n), dtype=torch.bool)
    for r, f in enumerate(first):
        if r >= len(rows) - 3:
            mask[r] = True
        elif f < n:
            mask[r, f] = True
    values = torch.randn(
        (len(rows), n, model.codi.config.hidden_size), generator=torch.Generator().manual_seed(0)
    )
    patch = ThoughtPatch(values, mask, layer)
    heads = int(unwrap_peft(model.codi).config.num_attention_heads)
    blocked = torch.zeros((len(rows), model.n_layers, heads, n), dtype=torch.bool)
    blocked[1, :, :, 2] = True  # a knockout on a clean row: joins after the loop
    knockout = KnockoutMask(blocked, torch.ones(len(rows), dtype=torch.bool))
    targets = answer_targets(model, ["12", "3", "45"] * (n + 2))
    picks = {
        "every question": list(range(len(rows))),
        "not question 2": [r for r in range(len(rows)) if r != 2],
        "last, one twice": [*reversed(range(len(rows))), 0],
    }[clean_rows]
    if clean_rows != "every question":
        keep = torch.tensor(picks)
        rows, patch = rows[keep], ThoughtPatch(values[keep], mask[keep], layer)
        knockout = KnockoutMask(blocked[keep], knockout.answer_queries[keep])
        targets = ([targets[0][r] for r in keep], [targets[1][r] for r in keep])
    plan = _BranchPlan.of(rows, patch, n)
    assert plan is not None and plan.extra == (3 if clean_rows == "not question 2" else 0)
    kwargs: dict[str, Any] = dict(
        rows=rows, patch=patch, knockout=knockout, targets=targets, max_new_tokens=MAX_NEW
    )
    late = run_latent(model, prompt, attention_layers=_all_layers(model), **kwargs)
    every = run_latent(
        model, prompt, attention_layers=_all_layers(model), on_thought=lambda t, z: z, **kwargs
    )
    assert late.answer_ids == every.answer_ids and late.answers == every.answers
    for name in ("thoughts", "first_logits", "attentions", "target_logp", "answer_logits"):
        _close(getattr(late, name), getattr(every, name))
    assert torch.equal(late.nonfinite, every.nonfinite)
    assert torch.equal(late.q_lens, every.q_lens)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_finite_rows_equals_isfinite_all(dtype: torch.dtype) -> None:
    """The one-pass check flags exactly the rows holding a NaN, +inf or -inf (any dtype)."""
    from codi_fixtures.engine import finite_rows

    values = torch.randn(6, 3, 50, generator=torch.Generator().manual_seed(0)).to(dtype)
    values[1, 0, 7] = float("nan")
    values[2, 2, 0] = float("inf")
    values[4, 1, 49] = float("-inf")
    values[5, 0, :] = float("nan")
    expected = torch.isfinite(values).all(dim=-1)
    assert torch.equal(finite_rows(values), expected)
    assert torch.equal(finite_rows(values[..., :20]), torch.isfinite(values[..., :20]).all(-1))
    assert int((~expected).sum()) == 4


def test_chunked_target_logp_is_bit_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scoring a few rows per log_softmax call gives exactly the one-call values."""
    import codi_fixtures.engine as engine

    logits = 8 * torch.randn(7, 4, 301, generator=torch.Generator().manual_seed(1))
    logits[..., 298:] = float("-inf")  # masked specials, as in scoring
    ids = torch.randint(0, 298, (7, 4), generator=torch.Generator().manual_seed(2))
    whole = torch.log_softmax(logits, dim=-1).gather(2, ids[:, :, None])[:, :, 0]
    for chunk in (1, 4 * 301, 3 * 4 * 301, 10**9):  # one row, one, three, all rows per call
        monkeypatch.setattr(engine, "_LOG_SOFTMAX_CHUNK", chunk)
        assert torch.equal(engine._target_logp(logits, ids), whole)
