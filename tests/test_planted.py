"""The planted organism: the CODI recipe plus a loss that makes thought t carry step t+1."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from codi_fixtures.config import ModelConfig
from codi_fixtures.organism import train as train_mod
from codi_fixtures.organism.task import make_splits
from codi_fixtures.organism.tokenizer import build_tokenizer
from codi_fixtures.organism.train import (
    InterchangePair,
    TrainConfig,
    build_model,
    codi_loss,
    interchange_loss,
    interchange_pairs,
    make_batch,
    planted_targets,
)
from codi_fixtures.study.interchange import counterfactual_answer

PLANTED_CHECKPOINT = Path(__file__).resolve().parents[1] / "codi_fixtures" / "planted"


@pytest.fixture(scope="module")
def tokenizer():
    train, evals = make_splits(500, 5)
    return build_tokenizer(f"{p.question} {p.cot} The answer is: 19" for p in train + evals)


def _tiny(tokenizer, **kw):
    cfg = replace(
        TrainConfig(hidden=32, layers=2, heads=2, ffn=64, prj_dim=32, batch_size=16), **kw
    )
    torch.manual_seed(0)
    return cfg, build_model(cfg, tokenizer).train()


def test_planted_targets_put_step_t_plus_1_on_thought_t(tokenizer):
    _, model = _tiny(tokenizer)
    train, _ = make_splits(40, 1)
    problems = [p for p in train if p.steps in (2, 5)][:6]
    targets, mask = planted_targets(model, problems, n_thoughts=6)
    assert targets.shape == (len(problems), 6, model.embeddings.weight.shape[0])
    for row, problem in enumerate(problems):
        assert mask[row].tolist() == [t < problem.steps for t in range(6)]
        for t, value in enumerate(problem.intermediates):
            ids = tokenizer(str(int(value)), add_special_tokens=False)["input_ids"]
            expected = torch.zeros(targets.shape[-1])
            for token, w in zip(ids, [2 / 3, 1 / 3] if len(ids) == 2 else [1.0], strict=True):
                expected[token] += w
            assert torch.allclose(targets[row, t], expected)
            assert int(targets[row, t].argmax()) == ids[0]  # the lens reads the first token
        assert not targets[row, problem.steps :].any()


def test_a_few_steps_with_planted_weight_reduce_the_planted_loss(tokenizer):
    _, model = _tiny(tokenizer)
    train, _ = make_splits(64, 1)
    batch = make_batch(model, train[:16])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    planted = []
    for _ in range(12):
        loss, parts = codi_loss(model, batch, distill_weight=2.0, planted_weight=1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        planted.append(parts["planted"])
        assert set(parts) == {"ce", "distill", "teacher_ce", "planted"}
        assert loss.item() == pytest.approx(
            parts["ce"] + 2.0 * parts["distill"] + parts["teacher_ce"] + parts["planted"], rel=1e-5
        )
    assert planted[-1] < 0.7 * planted[0]


def test_planted_weight_zero_leaves_the_codi_loss_unchanged(tokenizer, monkeypatch):
    assert TrainConfig().planted_weight == 0.0

    def never(*args, **kwargs):
        raise AssertionError("planted_loss computed at planted_weight 0")

    monkeypatch.setattr(train_mod, "planted_loss", never)
    runs = []
    for kwargs in ({}, {"planted_weight": 0.0}):
        _, model = _tiny(tokenizer)
        batch = make_batch(model, make_splits(32, 1)[0][:16])
        loss, parts = codi_loss(model, batch, 2.0, **kwargs)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        runs.append((loss.detach(), parts, grads))
    (loss_a, parts_a, grads_a), (loss_b, parts_b, grads_b) = runs
    assert set(parts_a) == {"ce", "distill", "teacher_ce"}
    assert parts_a == parts_b
    assert torch.equal(loss_a, loss_b)
    assert loss_a.item() == pytest.approx(
        parts_a["ce"] + 2.0 * parts_a["distill"] + parts_a["teacher_ce"], rel=1e-6
    )
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))


def test_cli_passes_planted_and_interchange_weights(monkeypatch, tmp_path):
    from codi_fixtures.organism import __main__ as cli

    seen = {}
    monkeypatch.setattr(cli, "train_organism", lambda cfg, **kw: seen.update(cfg=cfg))
    cli.main(["--out", str(tmp_path / "o"), "--planted-weight", "0.5"])
    assert seen["cfg"].planted_weight == 0.5
    assert seen["cfg"].interchange_weight == 0.0
    cli.main(["--out", str(tmp_path / "o"), "--planted-weight", "1", "--interchange-weight", "2"])
    assert seen["cfg"].interchange_weight == 2.0
    cli.main(["--out", str(tmp_path / "o")])
    assert seen["cfg"].planted_weight == 0.0
    seen.clear()
    with pytest.raises(SystemExit):  # interchange training needs the planted map
        cli.main(["--out", str(tmp_path / "o"), "--interchange-weight", "1"])
    assert not seen


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--thoughts", "-1"], "--thoughts must be at least 0, got -1"),
        (["--layers", "0"], "--layers must be at least 1, got 0"),
        (["--teacher-from", "no_such/teacher.pt"], "--teacher-from no_such/teacher.pt does not"),
    ],
)
def test_cli_refuses_bad_options_before_training(monkeypatch, tmp_path, capsys, args, message):
    from codi_fixtures.organism import __main__ as cli

    seen = {}
    monkeypatch.setattr(cli, "train_organism", lambda cfg, **kw: seen.update(cfg=cfg))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--out", str(tmp_path / "o"), *args])
    assert exit_.value.code == 2 and not seen
    assert message in capsys.readouterr().err


def test_interchange_pairs_pick_a_different_value_donor_and_its_counterfactual():
    import random

    problems, _ = make_splits(200, 1)
    batch = problems[:64]
    pairs = interchange_pairs(batch, 6, random.Random(3), limit=40, value_max=19)
    assert 35 <= len(pairs) <= 40
    assert len({p.recipient for p in pairs}) == len(pairs)
    for p in pairs:
        rec, don = batch[p.recipient], batch[p.donor]
        assert p.donor != p.recipient
        assert 0 <= p.thought < rec.steps  # thought t carries step t+1
        assert don.intermediates[p.thought] != rec.intermediates[p.thought]
        expected = counterfactual_answer(
            rec, p.thought + 1, don.intermediates[p.thought], literal_operands=True
        )
        assert p.counterfactual == expected != rec.answer
        assert 0 <= p.counterfactual <= 19
    again = interchange_pairs(batch, 6, random.Random(3), limit=40, value_max=19)
    assert again == pairs  # seeded: a resumed run draws the same pairs
    assert len({p.thought for p in pairs}) >= 4  # every planted thought gets examples


def test_interchange_with_the_recipients_own_thought_is_the_clean_student_loss(tokenizer):
    """An identity interchange reproduces the clean student cross-entropy.

    Patching thought t with the recipient's own thought and targeting its own answer is the
    clean run.
    """
    _, model = _tiny(tokenizer)
    model.eval()
    problems = make_splits(64, 1)[0][:8]
    batch = make_batch(model, problems)
    with torch.no_grad():
        _, parts = codi_loss(model, batch, 1.0)
        from codi_fixtures.engine import build_prompt, encode_prompt, run_thoughts

        state, bot = encode_prompt(model, build_prompt(model, [p.question for p in problems]))
        thoughts, _, _ = run_thoughts(model, state, bot, n_thoughts=6)
        own = [InterchangePair(i, i, i % p.steps, p.answer) for i, p in enumerate(problems)]
        loss = interchange_loss(model, thoughts, problems, own)
    assert loss.item() == pytest.approx(parts["ce"], rel=1e-5)


def test_interchange_loss_is_added_and_learned(tokenizer, monkeypatch):
    import random

    _, model = _tiny(tokenizer)
    problems = make_splits(64, 1)[0][:16]
    batch = make_batch(model, problems)
    pairs = interchange_pairs(problems, 6, random.Random(0), limit=16, value_max=19)
    assert pairs
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    swapped = []
    for _ in range(12):
        loss, parts = codi_loss(model, batch, 2.0, 1.0, interchange_weight=0.5, interchange=pairs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert set(parts) == {"ce", "distill", "teacher_ce", "planted", "interchange"}
        assert loss.item() == pytest.approx(
            parts["ce"]
            + 2.0 * parts["distill"]
            + parts["teacher_ce"]
            + parts["planted"]
            + 0.5 * parts["interchange"],
            rel=1e-5,
        )
        swapped.append(parts["interchange"])
    assert swapped[-1] < 0.7 * swapped[0]

    def never(*args, **kwargs):
        raise AssertionError("interchange_loss computed at interchange_weight 0")

    monkeypatch.setattr(train_mod, "interchange_loss", never)
    _, parts = codi_loss(model, batch, 2.0, 1.0, interchange_weight=0.0, interchange=pairs)
    assert "interchange" not in parts


planted_built = pytest.mark.skipif(
    not (PLANTED_CHECKPOINT / "model.safetensors").exists(), reason="planted model not built"
)


@planted_built
def test_planted_checkpoint_records_its_map_and_is_small():
    extra = json.loads((PLANTED_CHECKPOINT / "codi.json").read_text())["extra"]
    assert extra["planted"]["organism"] == "planted"
    assert extra["planted"]["thought_to_step"] == [1, 2, 3, 4, 5, None]
    assert extra["planted"]["site"] == "input embedding"
    assert extra["recipe"]["planted_weight"] == extra["planted"]["weight"] > 0
    assert extra["recipe"]["interchange_weight"] == extra["planted"]["interchange_weight"] > 0
    size = sum(p.stat().st_size for p in PLANTED_CHECKPOINT.rglob("*") if p.is_file())
    assert size < 2 * 2**20


@planted_built
def test_planted_checkpoint_reproduces_its_recorded_accuracy_and_lens_rates():
    from codi_fixtures.model.codi import load_codi
    from codi_fixtures.organism.evaluate import (
        accuracy_by_bin,
        latent_answers,
        planted_interchange_rates,
        planted_lens_rates,
    )
    from codi_fixtures.study.data import load_problem_jsonl

    model = load_codi(ModelConfig(ckpt=PLANTED_CHECKPOINT, device="cpu", dtype="float32"))
    assert model.spec.task == "organism"
    assert model.spec.n_thoughts == 6
    problems = load_problem_jsonl(PLANTED_CHECKPOINT / "eval.jsonl")
    recorded = model.spec.extra["heldout_accuracy"]
    assert accuracy_by_bin(problems, latent_answers(model, problems)) == recorded["codi"]
    assert planted_lens_rates(model, problems) == recorded["planted_lens"]
    # the causal map check (interchange training): reproduced exactly, and far above chance
    assert planted_interchange_rates(model, problems) == recorded["planted_interchange"]
    for t, rates in recorded["planted_interchange"].items():
        assert rates["iia"] >= 2 * rates["random"] + 10, t


def test_retrain_command_names_every_option_that_differs_from_the_defaults(monkeypatch):
    from codi_fixtures.organism import __main__ as cli
    from codi_fixtures.organism.train import retrain_command

    assert (
        retrain_command(TrainConfig())
        == "python -m codi_fixtures.organism --out <dir> --thoughts 6"
    )
    cfg = TrainConfig(
        planted_weight=1.0,
        interchange_weight=0.5,
        codi_steps=3600,
        seed=2,
        distill_scale="spread",
    )
    command = retrain_command(cfg)
    assert command.endswith(
        "--codi-steps 3600 --seed 2 --planted-weight 1 --interchange-weight 0.5"
        " --distill-scale spread"
    )
    seen = {}
    monkeypatch.setattr(cli, "train_organism", lambda c, **kw: seen.update(cfg=c))
    cli.main(command.split()[3:])  # the command's own options give the same recipe
    assert seen["cfg"] == cfg
