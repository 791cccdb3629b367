"""The routing read-out (RQ6): attention from each thought's producing query to question tokens.

Checked against a naive single-problem loop on the bundled model: no padding, no KV cache, no
hooks, the whole sequence re-run for every thought with ``output_attentions``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from codi_fixtures.config import ModelConfig, RunConfig
from codi_fixtures.study.conditions import Requirements, RoutingReadout
from codi_fixtures.study.data import load_problem_jsonl
from codi_fixtures.study.roles import NUMBER, SPECIAL
from codi_fixtures.study.runs import _clean_pass

BUNDLED = Path(__file__).resolve().parents[1] / "codi_fixtures" / "bundled"


@pytest.fixture(scope="module")
def bundled():
    """The bundled model and five problems of different lengths (read-only)."""
    from codi_fixtures.model import load_codi

    torch.set_num_threads(1)
    model = load_codi(ModelConfig(ckpt=BUNDLED, device="cpu", dtype="float32"))
    problems = load_problem_jsonl(BUNDLED / "eval.jsonl")
    by_steps = {p.steps: p for p in problems}  # 2..5 steps: questions of different lengths
    return model, [*by_steps.values(), problems[1]]


@torch.no_grad()
def _naive(model, question: str) -> np.ndarray:
    """(L, T, Q) attention from the query producing thought t to the Q question tokens."""
    ids = list(model.tokenizer(question)["input_ids"])
    if model.spec.eos_before_bot:
        ids.append(model.eos_id)
    q = len(ids)
    embeds = model.embed(torch.tensor([[*ids, model.bot_id]], device=model.device))
    rows = []
    for _ in range(model.spec.n_thoughts):
        out = model.codi(inputs_embeds=embeds, output_attentions=True, output_hidden_states=True)
        rows.append(torch.stack([a[0, :, -1, :q].mean(dim=0) for a in out.attentions]))
        z = model.project(out.hidden_states[-1][:, -1])
        embeds = torch.cat([embeds, z[:, None]], dim=1)
    return torch.stack(rows, dim=1).numpy()  # (L, T, Q)


def test_readout_matches_a_naive_unpadded_loop(bundled):
    """Left padding, the KV cache and the hooks change nothing: same values, same positions."""
    model, problems = bundled
    needs = Requirements(readouts=(RoutingReadout(),))
    width = 3 + max(len(model.tokenizer(p.question)["input_ids"]) for p in problems)
    out = _clean_pass(model, problems, RunConfig(), needs, routing_width=width)
    att = out["readout__routing"].astype(np.float32)
    assert att.shape == (len(problems), model.n_layers, model.spec.n_thoughts, width)
    q_lens = out["q_len"]
    assert len(set(q_lens.tolist())) > 2  # the batch really is padded
    for row, problem in enumerate(problems):
        q = int(q_lens[row])
        naive = _naive(model, problem.question)
        np.testing.assert_allclose(att[row, :, :, :q], naive, atol=2e-3, rtol=2e-2)
        assert np.isnan(att[row, :, :, q:]).all()
        # a question token position carries attention (not all of it on <bot> / thoughts)
        assert (att[row, :, :, :q].sum(axis=-1) > 0.05).any()


def test_roles_line_up_with_the_tokens(bundled):
    """Digits are numbers, BOS is special, and step 1 reads the first number of the question."""
    model, problems = bundled
    needs = Requirements(readouts=(RoutingReadout(),))
    out = _clean_pass(model, problems, RunConfig(), needs, routing_width=64)
    roles, operands = out["readout__routing-roles"], out["readout__routing-operands"]
    tokens = out["readout__routing-tokens"]
    for row, problem in enumerate(problems):
        q = int(out["q_len"][row])
        assert roles[row, 0] == SPECIAL and (roles[row, q:] == -1).all()
        assert "".join(tokens[row, :q]).replace("<s>", "").strip() == problem.question
        digits = [i for i in range(q) if tokens[row, i].strip().isdigit()]
        assert all(roles[row, i] == NUMBER for i in digits)
        start = problem.question.split(" has ")[1].split()[0]  # "Ben has 9 eggs."
        first_number = [i for i in digits if operands[row, i] & 1]
        assert "".join(tokens[row, i] for i in first_number).startswith(f" {start}")
        assert out["readout__routing-steps"][row] == problem.steps
