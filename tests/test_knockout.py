"""RQ6 mechanism: attention knockout in the engine, and as study conditions via the runner."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from codi_fixtures.answers import format_number
from codi_fixtures.config import BUNDLED_CHECKPOINT, ModelConfig, RunConfig
from codi_fixtures.engine import (
    KnockoutMask,
    LatentRun,
    Prompt,
    ThoughtPatch,
    answer_targets,
    build_prompt,
    encode_prompt,
    forward_step,
    run_latent,
    run_thoughts,
)
from codi_fixtures.model.architecture import attention_modules
from codi_fixtures.model.codi import CodiModel
from codi_fixtures.study.conditions import Knockout, Requirements
from codi_fixtures.study.data import load_problems
from codi_fixtures.study.problems import Problem
from codi_fixtures.study.runs import compute_study, default_requirements, dimensions_of
from codi_fixtures.study.runs import knockout_mask as build_knockout_mask

N_PROBLEMS = 6


@pytest.fixture(scope="module")
def bundled() -> CodiModel:
    """The bundled organism (read-only)."""
    from codi_fixtures.model import load_codi

    return load_codi(ModelConfig(ckpt=None, device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    """A few held-out organism problems (varied lengths: left padding is exercised)."""
    return load_problems(BUNDLED_CHECKPOINT / "eval.jsonl")[:: 400 // N_PROBLEMS][:N_PROBLEMS]


def _inputs(
    model: CodiModel, problems: Sequence[Problem]
) -> tuple[Prompt, tuple[list[list[int]], list[int]]]:
    prompt = build_prompt(model, [p.question for p in problems])
    return prompt, answer_targets(model, [format_number(p.answer) for p in problems])


def _run(
    model: CodiModel,
    prompt: Prompt,
    targets: tuple[list[list[int]], list[int]],
    knockouts: Sequence[Knockout | None] | None = None,
    *,
    rows: torch.Tensor | None = None,
    patch: ThoughtPatch | None = None,
) -> LatentRun:
    mask = None if knockouts is None else build_knockout_mask(model, knockouts)
    return run_latent(
        model,
        prompt,
        rows=rows,
        patch=patch,
        targets=targets,
        max_new_tokens=8,
        attention_layers=range(model.n_layers),
        knockout=mask,
    )


def _model(request: pytest.FixtureRequest, name: str) -> CodiModel:
    return request.getfixturevalue(name if name == "bundled" else f"tiny_{name}")


MODELS = ("llama", "gpt2", "bundled")


@pytest.mark.parametrize("name", MODELS)
def test_knockout_of_nothing_is_bitwise_the_clean_run(
    request: pytest.FixtureRequest, name: str, problems: list[Problem]
) -> None:
    """An empty knockout (mechanism active, nothing blocked) changes no bit of any output."""
    model = _model(request, name)
    prompt, targets = _inputs(model, problems)
    clean = _run(model, prompt, targets)
    same = _run(model, prompt, targets, [None] * len(problems))
    for field in ("thoughts", "first_logits", "target_logp", "answer_logits", "attentions"):
        assert torch.equal(getattr(clean, field), getattr(same, field)), field
    assert clean.answers == same.answers and clean.answer_ids == same.answer_ids


@pytest.mark.parametrize("name", MODELS)
def test_knocked_edge_gets_zero_attention_and_nothing_upstream_changes(
    request: pytest.FixtureRequest, name: str, problems: list[Problem]
) -> None:
    """Layer L, thought t: that <eot> -> t weight is 0 at L; thoughts and layers < L unchanged."""
    model = _model(request, name)
    prompt, targets = _inputs(model, problems)
    clean = _run(model, prompt, targets)
    layer, thought = model.n_layers // 2, 2
    ko = _run(
        model, prompt, targets, [Knockout((thought,), (layer,), queries="eot")] * len(problems)
    )
    assert clean.attentions is not None and ko.attentions is not None
    assert torch.equal(
        ko.attentions[:, layer, :, thought], torch.zeros_like(ko.attentions[:, 0, :, 0])
    )
    assert bool((clean.attentions[:, layer, :, thought] > 0).all())
    # Upstream of the edit: thoughts (their own computation) and every layer below L.
    assert torch.equal(clean.thoughts, ko.thoughts)
    assert torch.equal(clean.attentions[:, :layer], ko.attentions[:, :layer])
    # The other keys of that query renormalise: still a distribution over the prefix.
    assert not torch.equal(clean.first_logits, ko.first_logits)


def test_per_head_knockout_blocks_only_that_head(
    tiny_llama: CodiModel, problems: list[Problem]
) -> None:
    """heads=(h,): only query head h loses the edge (grouped-query attention model)."""
    prompt, targets = _inputs(tiny_llama, problems)
    clean = _run(tiny_llama, prompt, targets)
    ko = _run(tiny_llama, prompt, targets, [Knockout((1,), (0,), head=3)] * len(problems))
    assert clean.attentions is not None and ko.attentions is not None
    assert bool((ko.attentions[:, 0, 3, 1] == 0).all())
    assert torch.equal(ko.attentions[:, 0, :3], clean.attentions[:, 0, :3])


@pytest.mark.parametrize("name", MODELS)
def test_all_layer_answer_knockout_makes_the_answer_independent_of_the_thought(
    request: pytest.FixtureRequest, name: str, problems: list[Problem]
) -> None:
    """Hiding thoughts t..T-1 from the answer queries at all layers cuts thought t off.

    Every path from thought t to the answer is cut: patching t's input changes later
    thoughts, not the answer.
    """
    model = _model(request, name)
    prompt, targets = _inputs(model, problems)
    n, t = model.spec.n_thoughts, 3
    batch, d = len(problems), model.hidden_size
    values = torch.randn((batch, n, d), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros((batch, n), dtype=torch.bool)
    mask[:, t] = True
    patch = ThoughtPatch(values.to(model.dtype), mask)
    cut = [Knockout(tuple(range(t, n)), None, queries="answer")] * batch
    base = _run(model, prompt, targets, cut)
    patched = _run(model, prompt, targets, cut, patch=patch)
    assert torch.equal(base.first_logits, patched.first_logits)
    assert torch.equal(base.target_logp, patched.target_logp)  # type: ignore[arg-type]
    assert base.answers == patched.answers
    # Downstream thoughts still see thought t ...
    assert not torch.allclose(base.thoughts[:, t + 1 :], patched.thoughts[:, t + 1 :])
    # ... and without the knockout the same patch does reach the answer.
    free = _run(model, prompt, targets)
    free_patched = _run(model, prompt, targets, patch=patch)
    assert not torch.allclose(free.target_logp, free_patched.target_logp)  # type: ignore[arg-type]


def test_mixed_rows_with_decoding_equal_each_condition_alone(
    bundled: CodiModel, problems: list[Problem]
) -> None:
    """Per-row knockouts survive the engine dropping finished rows while decoding."""
    conditions: list[Knockout | None] = [
        None,
        Knockout((5,), None, queries="answer"),
        Knockout((0, 1, 2, 3, 4, 5), None, queries="answer"),
        Knockout((2,), (1,), queries="answer"),
        Knockout((4,), (3,), queries="eot"),
    ]
    prompt, _ = _inputs(bundled, problems)
    per = len(conditions)
    rows = torch.arange(len(problems)).repeat_interleave(per)
    golds = [format_number(problems[int(r)].answer) for r in rows]
    targets = answer_targets(bundled, golds)
    mixed = _run(bundled, prompt, targets, conditions * len(problems), rows=rows)
    right = [a == float(g) for a, g in zip(mixed.answers, golds, strict=True)]
    # Some rows leave the greedy gold path and decode on in a sub-batch, some do not:
    # the engine's row dropping is exercised.
    assert any(right) and not all(right)
    for c, ko in enumerate(conditions):
        sub = torch.arange(len(problems)) * per + c
        alone = _run(
            bundled,
            prompt,
            answer_targets(bundled, [golds[int(i)] for i in sub]),
            [ko] * len(problems),
        )
        assert [mixed.answers[int(i)] for i in sub] == alone.answers
        torch.testing.assert_close(mixed.target_logp[sub], alone.target_logp, atol=1e-5, rtol=0)  # type: ignore[index]


@pytest.mark.parametrize("name", ("llama", "gpt2"))
def test_row_masks_follow_rows_when_the_engine_drops_and_reorders_them(
    request: pytest.FixtureRequest, name: str
) -> None:
    """After ``LoopState.select`` (a branch; ``keep`` drops rows), each row keeps its knockout."""
    from codi_fixtures.engine import _ActiveKnockout

    model = _model(request, name)
    questions = ["Tom has 3 apples .", "Ann has 5 pears and 2 more .", "Bob has 7 ."]
    prompt = build_prompt(model, questions * 2)
    n = model.spec.n_thoughts
    knockouts = [Knockout((r % n,), None, queries="answer") for r in range(len(prompt))]
    mask = build_knockout_mask(model, knockouts)
    token = torch.full((len(prompt), 1), model.eos_id)
    pick = torch.tensor([4, 1, 5])  # a subset, out of order
    with torch.no_grad():
        state, bot = encode_prompt(model, prompt)
        run_thoughts(model, state, bot, n_thoughts=n)
        state.knockout = _ActiveKnockout(mask, prompt.width, prompt.width + n)
        eot = model.embed(torch.full((len(prompt), 1), model.eot_id))
        forward_step(model, state, embeds=eot)
        sub = state.select(pick)
        assert sub.rows().tolist() == pick.tolist()
        full_logits = forward_step(model, state, input_ids=token, logits=True).logits
        sub_logits = forward_step(model, sub, input_ids=token[pick], logits=True).logits
    assert full_logits is not None and sub_logits is not None
    torch.testing.assert_close(sub_logits, full_logits[pick], atol=1e-5, rtol=1e-5)
    # Rows 1 and 4 ask the same question with different knockouts: they differ.
    assert not torch.allclose(full_logits[1], full_logits[4], atol=1e-4)


def test_no_hook_is_left_behind(tiny_gpt2: CodiModel) -> None:
    """The hooks live for one forward: none remains after a run, also after an error."""
    modules = attention_modules(tiny_gpt2.codi)
    before = [len(m._forward_pre_hooks) for m in modules]
    prompt = build_prompt(tiny_gpt2, ["Tom has 3 apples ."])
    mask = build_knockout_mask(tiny_gpt2, [Knockout((0,))])
    run_latent(tiny_gpt2, prompt, knockout=mask, max_new_tokens=4)
    assert [len(m._forward_pre_hooks) for m in modules] == before
    bad = KnockoutMask(mask.blocked[:, :, :, :2], mask.answer_queries)
    with pytest.raises(ValueError, match="thoughts"):
        run_latent(tiny_gpt2, prompt, knockout=bad, max_new_tokens=4)
    assert [len(m._forward_pre_hooks) for m in modules] == before


def test_a_mask_that_does_not_match_the_rows_raises(tiny_llama: CodiModel) -> None:
    """A mask for 3 rows on a 2-row run fails loudly instead of mis-assigning rows."""
    prompt = build_prompt(tiny_llama, ["Tom has 3 apples .", "Ann has 5 pears ."])
    mask = build_knockout_mask(tiny_llama, [Knockout((0,))] * 3)
    with pytest.raises(ValueError, match="3 rows"):
        run_latent(tiny_llama, prompt, knockout=mask, generate=False)


def test_specs_are_validated(tiny_llama: CodiModel) -> None:
    """Unknown scopes, bad indices and malformed masks are errors with the reason."""
    with pytest.raises(ValueError, match="query scope"):
        Knockout((0,), queries="question")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bool tensor"):
        KnockoutMask(torch.zeros((1, 2, 3)), torch.zeros(1, dtype=torch.bool))
    with pytest.raises(ValueError, match="layer 9 out of range"):
        Knockout((0,), (9,)).check(6, 4)
    assert Knockout((3,), (2,)).name == "ko-t3-L2-answer"
    assert Knockout((3,), None, queries="eot").name == "ko-t3-Lall-eot"
    assert Knockout((1, 2), (0,), head=1).name == "ko-t1,2-L0-h1-answer"
    assert Knockout(()).name == "ko-tnone-Lall-answer"


# --- through the runner ---------------------------------------------------------------------
@pytest.mark.parametrize("arch", ("llama", "gpt2"))
def test_a_knockout_of_nothing_through_the_runner_is_the_clean_run_exactly(
    request: pytest.FixtureRequest, arch: str, tmp_path
) -> None:
    """Study rows: knocking out no edge gives the clean row's numbers bit for bit."""
    from codi_fixtures.organism.task import make_splits

    model = request.getfixturevalue(f"tiny_{arch}")
    problems = make_splits(10, 2, seed=5)[1]
    cfg = RunConfig(kinds=("mean",))
    base = default_requirements(cfg, dimensions_of(model))
    extra = Requirements((Knockout(()), Knockout((), queries="eot"), Knockout((0,), (1,))))
    res = compute_study(model, problems, cfg, tmp_path, base | extra)
    for name in ("ko-tnone-Lall-answer", "ko-tnone-Lall-eot"):
        col = res.column(name)
        np.testing.assert_array_equal(res.logp[:, col], res.clean_logp)
        np.testing.assert_array_equal(res.logp_first[:, col], res.clean_logp_first)
        np.testing.assert_array_equal(res.correct[:, col], res.clean_correct)
        np.testing.assert_array_equal(res.kl[:, col], 0.0)
    plain = compute_study(model, problems, cfg, tmp_path)
    np.testing.assert_array_equal(plain.logp, res.logp[:, : len(plain.conditions)])
