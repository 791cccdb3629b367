"""No deprecation warning from transformers / peft / torch is raised through the project's calls.

This is where warnings-as-errors belongs: a library release that deprecates an argument the
engine passes fails this test at the next CI run, long before the argument is removed. The
research run itself (``pytest experiments``) never turns a library warning into an error.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from codi_fixtures.config import ModelConfig, RunConfig
from codi_fixtures.engine import build_prompt, run_latent

DEPRECATIONS = (DeprecationWarning, FutureWarning, PendingDeprecationWarning)


@contextmanager
def no_deprecations() -> Iterator[None]:
    """Record every warning; fail listing the deprecations (with where they were raised)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    found = [w for w in caught if issubclass(w.category, DEPRECATIONS)]
    assert not found, "\n".join(
        f"{w.category.__name__} at {w.filename}:{w.lineno}: {w.message}" for w in found
    )


def test_the_engine_on_the_bundled_model_raises_no_deprecation(questions: list[str]) -> None:
    from codi_fixtures.model.codi import load_codi

    with no_deprecations():
        model = load_codi(ModelConfig(device="cpu"))
        run = run_latent(
            model, build_prompt(model, questions), capture_layers=[1], attention_layers=[0, 5]
        )
    assert run.answers and run.attentions is not None


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("merge", [True, False], ids=["merged", "unmerged-lora"])
def test_loading_and_running_lora_checkpoints_raises_no_deprecation(
    arch: str, merge: bool, request: pytest.FixtureRequest, questions: list[str]
) -> None:
    from codi_fixtures.model.codi import load_codi

    ckpt: Path = request.getfixturevalue(f"tiny_{arch}_dir")
    with no_deprecations():
        model = load_codi(ModelConfig(ckpt=ckpt, device="cpu", merge_lora=merge))
        run_latent(model, build_prompt(model, questions[:2]), attention_layers=[0])


def test_a_training_step_and_a_cached_study_raise_no_deprecation(tmp_path: Path) -> None:
    from codi_fixtures.model.codi import load_codi
    from codi_fixtures.organism.task import make_splits
    from codi_fixtures.organism.train import codi_loss, make_batch
    from codi_fixtures.study.runs import compute_study

    model = load_codi(ModelConfig(device="cpu"))
    _, problems = make_splits(0, 2, seed=3)
    with no_deprecations():
        compute_study(model, problems, RunConfig(kinds=("mean", "noise")), tmp_path)
        model.requires_grad_(True)
        try:
            with torch.enable_grad():
                loss, _ = codi_loss(model, make_batch(model, problems), distill_weight=1.0)
                loss.backward()
        finally:
            model.requires_grad_(False)
    assert torch.isfinite(loss)
