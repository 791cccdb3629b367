"""RQ3 / RQ4 in the study: lens and position read-outs, interchange rows, one cached study."""

from __future__ import annotations

import numpy as np
import pytest

from codi_fixtures.config import RunConfig
from codi_fixtures.study.conditions import (
    Interchange,
    LensReadout,
    PositionReadout,
    Requirements,
    readout_positions,
)


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    """A tiny LLaMA-shaped CODI and 10 organism problems (step values known). Read-only."""
    from codi_fixtures.config import ModelConfig
    from codi_fixtures.model import load_codi
    from codi_fixtures.organism.task import make_splits

    return load_codi(ModelConfig(ckpt=tiny_llama_dir, device="cpu")), make_splits(12, 2, seed=5)[0]


def _needs(cfg, dims, steps=(1, 2)):
    from codi_fixtures.study import runs

    extra = Requirements(
        tuple(
            Interchange(t, k, d)
            for t in range(dims.n_thoughts)
            for k in steps
            for d in ("same", "different", "random")
        ),
        (LensReadout(), PositionReadout(None), PositionReadout(1)),
    )
    return runs.default_requirements(cfg, dims) | extra


def test_lens_positions_and_interchange_rows_are_computed_and_cached(tiny, tmp_path):
    from codi_fixtures.engine import build_prompt, run_latent
    from codi_fixtures.study import runs
    from codi_fixtures.study.readouts import collect_readouts

    model, problems = tiny
    cfg = RunConfig(kinds=("zero", "resample"))
    dims = runs.dimensions_of(model)
    needs = _needs(cfg, dims)
    plain = runs.compute_study(model, problems, cfg, tmp_path)
    study = runs.compute_study(model, problems, cfg, tmp_path, needs)
    n, t, d = len(problems), dims.n_thoughts, model.hidden_size
    k = max(len(p.intermediates) for p in problems) + 1
    p = len(readout_positions(t))
    assert study.readouts["lens-rank"].shape == (n, p, 1 + dims.n_layers, k)
    assert study.readouts["lens-rank"].dtype == np.int32
    assert study.readouts["positions-embedding"].shape == (n, p, d)
    assert study.readouts["positions-block1"].dtype == np.float16
    assert study.readouts["step-values"].shape == (n, k)
    np.testing.assert_array_equal(study.readouts["step-values"][:, -1], study.gold)
    assert study.readouts["interchange-donors"].shape == (n, k - 1, 3)
    # the same numbers as the validated read-out module
    direct = collect_readouts(model, problems, max_steps=k - 1)
    np.testing.assert_array_equal(study.readouts["lens-rank"], direct.lens_rank)
    assert direct.hidden is not None
    np.testing.assert_array_equal(study.readouts["positions-block1"], direct.hidden[:, :, 2])
    # the thoughts' embeddings are the clean run's fed latents
    clean = run_latent(model, build_prompt(model, [q.question for q in problems]), generate=False)
    np.testing.assert_allclose(
        study.readouts["positions-embedding"][:, 2:].astype(np.float32),
        clean.thoughts.float().numpy(),
        rtol=1e-2,
        atol=1e-2,
    )
    # RQ1's columns are unchanged by the extra rows
    np.testing.assert_allclose(study.logp[:, : len(plain.conditions)], plain.logp, atol=1e-5)
    # a same-donor row with a donor differs from clean; a row without one equals it
    donors = study.readouts["interchange-donors"]
    col = study.column("ic-t0-s1-random")
    has = donors[:, 0, 2] >= 0
    assert has.all()
    assert not np.allclose(study.logp[has, col], study.clean_logp[has], atol=1e-6)
    again = runs.compute_study(model, problems, cfg, tmp_path, needs)
    np.testing.assert_array_equal(again.readouts["lens-prob"], study.readouts["lens-prob"])
    assert again.meta["fingerprint"] == study.meta["fingerprint"] != plain.meta["fingerprint"]


def test_interchange_row_equals_the_validated_interchange_run(tiny, tmp_path):
    from codi_fixtures.study import runs
    from codi_fixtures.study.interchange import ValueDomain, choose_donors, run_interchange

    model, problems = tiny
    cfg = RunConfig(kinds=("zero",))
    dims = runs.dimensions_of(model)
    study = runs.compute_study(model, problems, cfg, tmp_path, _needs(cfg, dims, steps=(1,)))
    k = max(len(p.intermediates) for p in problems)
    donors = choose_donors(problems, max_steps=k, domain=ValueDomain.of(problems), seed=cfg.seed)
    direct = run_interchange(model, problems, donors, [(2, 1)])
    for row, (r, kind) in enumerate(zip(direct.recipient, direct.kind, strict=True)):
        col = study.column(f"ic-t2-s1-{kind}")
        assert study.logp[r, col] == pytest.approx(direct.logp[row], abs=1e-4)


def test_problems_without_step_values_get_no_interchange_patch(tiny, tmp_path):
    from dataclasses import replace

    from codi_fixtures.study import runs

    model, problems = tiny
    bare = [replace(p, intermediates=(), cot="") for p in problems]
    cfg = RunConfig(kinds=("zero",))
    dims = runs.dimensions_of(model)
    study = runs.compute_study(model, bare, cfg, tmp_path, _needs(cfg, dims, steps=(1,)))
    assert (study.readouts["interchange-donors"] < 0).all()
    col = study.column("ic-t0-s1-random")
    np.testing.assert_allclose(study.logp[:, col], study.clean_logp, atol=1e-5)
    assert study.readouts["lens-rank"].shape[-1] == 1  # the answer column only


def test_interchange_names_and_validation():
    assert Interchange(2, 3, "different").name == "ic-t2-s3-different"
    with pytest.raises(ValueError, match="donor kind"):
        Interchange(0, 1, "other")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1-based"):
        Interchange(0, 0, "same")
    assert PositionReadout(3).name == "positions-block3"
