"""Cached study runs: consistency with the engine, caching, resumption, sharing, faults."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from codi_fixtures import engine
from codi_fixtures.analyses import StudyAnalysis
from codi_fixtures.config import ModelConfig, RunConfig
from codi_fixtures.engine import ThoughtPatch, build_prompt, run_latent
from codi_fixtures.model.architecture import LayerRoles
from codi_fixtures.model.codi import load_codi
from codi_fixtures.model.devices import is_out_of_memory
from codi_fixtures.organism.task import make_splits
from codi_fixtures.study import runs

KINDS = ("zero", "mean")


@pytest.fixture(scope="module")
def model(tiny_llama_dir):
    return load_codi(ModelConfig(ckpt=tiny_llama_dir, device="cpu"))


@pytest.fixture(scope="module")
def problems():
    return make_splits(10, 2, seed=5)[1]  # 8 problems, 2 per bin


def _cfg(**kw):
    return RunConfig(kinds=KINDS, batch_rows=30, **kw)  # 30 // 15 rows -> 2 problems per chunk


def _assert_same(a: runs.StudyResults, b: runs.StudyResults) -> None:
    for name in runs.StudyResults._ARRAYS:
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-6)
    assert a.conditions == b.conditions and a.clean_text == b.clean_text


def test_results_agree_with_direct_engine_runs(model, problems, tmp_path):
    res = runs.compute_study(model, problems, _cfg(), tmp_path)
    n, t = len(problems), model.spec.n_thoughts
    assert res.answer.shape == (n, len(KINDS) * (t + 1))
    assert res.attention.shape == (n, model.n_layers, 4, t)
    assert res.conditions[: t + 1] == [f"t{i}-zero" for i in range(t)] + ["all-zero"]
    prompt = build_prompt(model, [p.question for p in problems])
    with torch.no_grad():
        clean = run_latent(model, prompt, attention_layers=range(model.n_layers))
        mask = torch.zeros(n, t, dtype=torch.bool)
        mask[:, 3] = True
        zeroed = run_latent(
            model, prompt, patch=ThoughtPatch(torch.zeros_like(clean.thoughts), mask)
        )
    assert res.clean_text == clean.answer_text
    np.testing.assert_allclose(res.attention, clean.attentions.numpy(), atol=1e-5)
    column = res.column("t3-zero")
    got = [None if np.isnan(a) else a for a in res.answer[:, column]]
    assert got == zeroed.answers
    np.testing.assert_allclose(res.delta_logp[:, column], res.clean_logp - res.logp[:, column])


def test_second_call_reads_the_cache_without_computing(model, problems, tmp_path, monkeypatch):
    first = runs.compute_study(model, problems, _cfg(), tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(runs, "_clean_pass", forbidden)
    monkeypatch.setattr(runs, "_ablation_pass", forbidden)
    _assert_same(first, runs.compute_study(model, problems, _cfg(), tmp_path))


def test_fingerprint_tracks_problems_and_config_but_not_batch_size(model, problems):
    key = runs.study_fingerprint(model, problems, _cfg())
    assert key == runs.study_fingerprint(model, problems, RunConfig(kinds=KINDS, batch_rows=7))
    assert key != runs.study_fingerprint(model, problems[:-1], _cfg())
    assert key != runs.study_fingerprint(model, problems, _cfg(seed=1))
    assert key != runs.study_fingerprint(model, problems, _cfg(site="block1"))


@pytest.mark.parametrize(
    "change",
    [
        "dtype",
        "merge_lora",
        "base",
        "tokenizer",
        "attention",
        "torch_version",
        "transformers_version",
    ],
)
def test_the_cache_key_covers_everything_that_changes_numbers(
    change, model, problems, tiny_llama_dir, tmp_path, monkeypatch
):
    """Any change that alters the numbers (dtype, LoRA merge, base, attention...) misses."""
    import shutil

    import transformers

    cfg = ModelConfig(ckpt=tiny_llama_dir, device="cpu")
    if change == "dtype":
        cfg = ModelConfig(ckpt=tiny_llama_dir, device="cpu", dtype="bfloat16")
    elif change == "merge_lora":
        cfg = ModelConfig(ckpt=tiny_llama_dir, device="cpu", merge_lora=False)
    elif change in ("base", "tokenizer"):
        base = tmp_path / "base"
        shutil.copytree(tiny_llama_dir, base)
        if change == "tokenizer":  # same weights and config, another eos id
            config = base / "tokenizer_config.json"
            config.write_text(
                config.read_text().replace('"eos_token": "</s>"', '"eos_token": "<s>"')
            )
        cfg = ModelConfig(ckpt=tiny_llama_dir, base=str(base), device="cpu")
    else:  # another attention or library release: the same load's fingerprint must change
        from codi_fixtures.model.attention import GROUPED_EAGER
        from codi_fixtures.model.codi import _numerics

        def numerics(attention: str = "eager") -> dict[str, object]:
            return _numerics(
                cfg,
                str(tiny_llama_dir),
                model.codi.config,
                model.tokenizer,
                torch.float32,
                "cpu",
                attention,
            )

        before = numerics()
        if change == "attention":
            assert numerics(GROUPED_EAGER) != before
            return
        library = torch if change == "torch_version" else transformers
        monkeypatch.setattr(library, "__version__", "9.9.9")
        assert numerics() != before
        return
    other = load_codi(cfg)
    assert runs.study_fingerprint(other, problems, _cfg()) != runs.study_fingerprint(
        model, problems, _cfg()
    )


def test_an_interrupted_run_resumes_without_recomputing_finished_chunks(
    model, problems, tmp_path, monkeypatch
):
    reference = runs.compute_study(model, problems, _cfg(), tmp_path / "reference")
    real_ablation = runs._ablation_pass
    calls = {"clean": 0, "ablate": 0}

    def interrupted(*args, **kwargs):
        calls["ablate"] += 1
        if calls["ablate"] == 3:
            raise KeyboardInterrupt  # pre-empted after two finished chunks
        return real_ablation(*args, **kwargs)

    monkeypatch.setattr(runs, "_ablation_pass", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runs.compute_study(model, problems, _cfg(), tmp_path / "cache")

    real_clean = runs._clean_pass

    def counting_clean(*args, **kwargs):
        calls["clean"] += 1
        return real_clean(*args, **kwargs)

    def counting_ablation(*args, **kwargs):
        calls["ablate"] += 1
        return real_ablation(*args, **kwargs)

    calls.update(clean=0, ablate=0)
    monkeypatch.setattr(runs, "_clean_pass", counting_clean)
    monkeypatch.setattr(runs, "_ablation_pass", counting_ablation)
    resumed = runs.compute_study(model, problems, _cfg(), tmp_path / "cache")
    assert calls == {"clean": 0, "ablate": 2}  # 4 chunks: 2 were done, 2 remain
    _assert_same(reference, resumed)


def test_a_corrupted_cache_file_is_never_read_as_valid(model, problems, tmp_path, monkeypatch):
    first = runs.compute_study(model, problems, _cfg(), tmp_path)
    final = next(tmp_path.glob("study-*.npz"))
    final.write_bytes(final.read_bytes()[:-100])  # torn write / disk trouble
    again = runs.compute_study(model, problems, _cfg(), tmp_path)
    _assert_same(first, again)
    assert runs.load_cached_study(tmp_path, final.stem.removeprefix("study-")) is not None


def test_a_truncated_shard_is_recomputed(model, problems, tmp_path, monkeypatch):
    real = runs._ablation_pass

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "_ablation_pass", stop)
    with pytest.raises(KeyboardInterrupt):
        runs.compute_study(model, problems, _cfg(), tmp_path)
    shard = sorted(tmp_path.glob("*.shards/clean-*.npz"))[0]
    shard.write_bytes(shard.read_bytes()[:50])
    monkeypatch.setattr(runs, "_ablation_pass", real)
    reference = runs.compute_study(model, problems, _cfg(), tmp_path / "ref")
    _assert_same(reference, runs.compute_study(model, problems, _cfg(), tmp_path))


def test_out_of_memory_batches_are_split_and_give_identical_results(model, problems, tmp_path):
    whole = runs.compute_study(model, problems, _cfg(), tmp_path / "a")
    split = runs.compute_study(model, problems, _cfg(max_rows=4), tmp_path / "b")
    _assert_same(whole, split)


def test_a_host_allocation_failure_counts_as_out_of_memory():
    with pytest.raises(RuntimeError) as failed:
        torch.empty(2**62, dtype=torch.uint8)  # the CPU allocator's own error
    assert is_out_of_memory(failed.value)
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_a_genuine_memory_limit_splits_batches_and_keeps_the_results(tmp_path):
    """Under a real address-space cap the batches fail to allocate, are split, and agree."""
    script = textwrap.dedent(
        """
        import json, logging, resource, sys
        from pathlib import Path
        import numpy as np
        from codi_fixtures.config import BUNDLED_CHECKPOINT, ModelConfig, RunConfig
        from codi_fixtures.model.codi import load_codi
        from codi_fixtures.study import runs
        from codi_fixtures.study.data import load_problems

        def vm(field):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024

        out = Path(sys.argv[1])
        model = load_codi(ModelConfig(ckpt=BUNDLED_CHECKPOINT, device="cpu"))
        problems = load_problems(BUNDLED_CHECKPOINT / "eval.jsonl")[:40]
        cfg = RunConfig(kinds=("zero", "mean"), batch_rows=10**6)  # one batch, unless split
        before = vm("VmSize")
        whole = runs.compute_study(model, problems, cfg, out / "whole")
        growth = vm("VmPeak") - before
        splits = []
        handler = logging.Handler()
        handler.emit = lambda record: splits.append(record.getMessage())
        runner_log = logging.getLogger("codi_fixtures.study.runs")
        runner_log.addHandler(handler)
        runner_log.setLevel(logging.INFO)
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (vm("VmSize") + growth // 4, hard))
        try:
            capped = runs.compute_study(model, problems, cfg, out / "capped")
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        arrays = {
            name: [np.asarray(getattr(s, name), float).tolist() for s in (whole, capped)]
            for name in runs.StudyResults._ARRAYS
        }
        print(json.dumps({
            "splits": [m for m in splits if m.startswith("out of memory")],
            "texts": [whole.clean_text == capped.clean_text],
            "arrays": arrays,
        }))
        """
    )
    # glibc serves large blocks by mmap and returns them on free, so the cap is what the
    # computation itself may use (not what an earlier run left in malloc's arenas).
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["splits"], "the cap was never hit: nothing was split"
    assert report["texts"] == [True]
    for name, (whole, capped) in report["arrays"].items():
        whole_a, capped_a = np.array(whole, dtype=float), np.array(capped, dtype=float)
        if name in {"logp", "clean_logp", "logp_first", "clean_logp_first", "kl"}:
            # smaller batches take other GEMM blockings: float32 rounding, nothing more
            np.testing.assert_allclose(capped_a, whole_a, rtol=1e-5, atol=1e-4, err_msg=name)
        else:
            np.testing.assert_array_equal(capped_a, whole_a, err_msg=name)


def test_a_single_row_over_budget_is_a_real_error(model, problems, tmp_path):
    with pytest.raises(torch.OutOfMemoryError, match="exceed the budget"):
        runs.compute_study(model, problems[:2], _cfg(max_rows=0), tmp_path)


def test_non_finite_values_are_reported_per_problem(model, problems, tmp_path, monkeypatch):
    real = runs.AblationRef.from_values

    def poisoned(values, seed=0):
        ref = real(values, seed)
        ref.values[2] = float("inf")  # problem 2's site values blow up (as fp16 overflow would)
        return ref

    monkeypatch.setattr(runs.AblationRef, "from_values", staticmethod(poisoned))
    res = runs.compute_study(
        model, problems, RunConfig(kinds=("resample",), batch_rows=30), tmp_path
    )
    donor_rows = np.flatnonzero(res.nonfinite.any(axis=1))
    assert len(donor_rows) == 1 and not res.clean_nonfinite.any()
    analysis = StudyAnalysis(
        res, LayerRoles(0, 1, 2), importance_kind="resample", n_boot=50, n_perm=50
    )
    assert analysis.excluded_problems() == [res.problem_ids[donor_rows[0]]]
    assert np.isnan(analysis.importance()[donor_rows[0]]).all()
    assert not np.isnan(np.delete(analysis.importance(), donor_rows[0], axis=0)).any()


@pytest.mark.slow
def test_two_processes_on_an_empty_cache_compute_each_chunk_once(
    tiny_llama_dir: Path, problems, tmp_path
):
    script = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from codi_fixtures.study import runs
        from codi_fixtures.config import ModelConfig, RunConfig
        from codi_fixtures.model.codi import load_codi
        from codi_fixtures.organism.task import make_splits

        log = Path(sys.argv[1])
        for name in ("_clean_pass", "_ablation_pass"):
            real = getattr(runs, name)
            def wrapped(model, chunk, *args, _real=real, _name=name):
                with log.open("a") as handle:
                    handle.write(f"{{_name}} {{chunk[0].id}} {{os.getpid()}}\\n")
                return _real(model, chunk, *args)
            setattr(runs, name, wrapped)
        model = load_codi(ModelConfig(ckpt=Path({str(tiny_llama_dir)!r}), device="cpu"))
        problems = make_splits(10, 2, seed=5)[1]
        res = runs.compute_study(model, problems, RunConfig(kinds=("zero", "mean"), batch_rows=30),
                                 Path({str(tmp_path / "cache")!r}))
        print(res.answer.sum(), res.logp.sum())
        """
    )
    log = tmp_path / "calls.log"
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(log)], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outputs[0] == outputs[1]
    lines = log.read_text().split()
    calls = [tuple(lines[i : i + 2]) for i in range(0, len(lines), 3)]
    assert len(calls) == len(set(calls)) == 5  # 1 clean + 4 ablation chunks, each once
    assert len(list((tmp_path / "cache").glob("study-*.npz"))) == 1


def test_a_narrower_run_reuses_a_cached_superset_exactly(model, problems, tmp_path, monkeypatch):
    """RQ1's study cut from a cached RQ1-RQ6 study equals RQ1's study computed alone."""
    from codi_fixtures.analyses import BUILTIN_ANALYSES, requirements_of
    from codi_fixtures.config import Settings

    settings = Settings(model=ModelConfig(ckpt=None), run=_cfg())
    dims = runs.dimensions_of(model)
    union = requirements_of(BUILTIN_ANALYSES, settings, dims)
    only_rq1 = requirements_of(BUILTIN_ANALYSES[:1], settings, dims)
    assert set(only_rq1.conditions) < set(union.conditions)
    fresh = runs.compute_study(model, problems, settings.run, tmp_path / "fresh", only_rq1)
    runs.compute_study(model, problems, settings.run, tmp_path / "shared", union)

    def no_compute(*args, **kwargs):
        raise AssertionError("the narrower study was recomputed")

    monkeypatch.setattr(runs, "_compute", no_compute)
    reused = runs.compute_study(model, problems, settings.run, tmp_path / "shared", only_rq1)
    _assert_same(reused, fresh)
    assert reused.readouts.keys() == fresh.readouts.keys()
    assert reused.meta["fingerprint"] == fresh.meta["fingerprint"]
    # ... and it is now cached under its own key: the report reads the same file.
    again = runs.load_cached_study(tmp_path / "shared", fresh.meta["fingerprint"])
    assert again is not None and again.conditions == fresh.conditions
    # A study of another config is never taken for a superset.
    with pytest.raises(AssertionError, match="recomputed"):
        runs.compute_study(model, problems, _cfg(seed=1), tmp_path / "shared", only_rq1)


def test_a_resumed_run_that_chunks_differently_never_mixes_shards(
    model, problems, tmp_path, monkeypatch
):
    """Shards are named by chunk size: another --batch-rows recomputes, never misreads."""
    real = runs._ablation_pass
    calls = []

    def stop_after_one(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(runs, "_ablation_pass", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        runs.compute_study(model, problems, _cfg(), tmp_path)  # 2 problems per chunk
    monkeypatch.setattr(runs, "_ablation_pass", real)
    resumed = runs.compute_study(
        model, problems, RunConfig(kinds=KINDS, batch_rows=45), tmp_path
    )  # 3 problems per chunk
    _assert_same(runs.compute_study(model, problems, _cfg(), tmp_path / "fresh"), resumed)


def test_auto_batch_rows_follow_the_memory_budget(model, problems, monkeypatch):
    from codi_fixtures.model import budget
    from codi_fixtures.study import batching

    shape = budget.shape_of(model)
    weights = budget.weights_bytes(shape, 4)
    monkeypatch.setattr(batching, "memory_budget_bytes", lambda device: weights + 10**12)
    assert batching.auto_batch_rows(model, problems, 24) == batching.AUTO_MAX_ROWS
    monkeypatch.setattr(batching, "memory_budget_bytes", lambda device: weights)
    assert batching.auto_batch_rows(model, problems, 24) == batching.AUTO_MIN_ROWS
    tok = model.tokenizer
    question = max(len(tok(p.question)["input_ids"]) for p in problems)
    study = budget.StudyShape(question_tokens=question + 1, answer_tokens=24)
    per_row = budget.per_row_bytes(shape, study.seq_len, 4, scored_tokens=study.scored_tokens)
    monkeypatch.setattr(batching, "memory_budget_bytes", lambda device: weights + 300 * per_row)
    assert batching.auto_batch_rows(model, problems, 24) == 300
    assert batching.resolve_batch_rows(7, model, problems, 24) == 7


def test_reports_name_the_problem_set_a_run_used(tmp_path: Path) -> None:
    """A run without --problems names its checkpoint's own held-out set, not the bundled one."""
    from codi_fixtures.config import Settings

    assert Settings().problems_label == "bundled held-out set (eval.jsonl)"
    smol = Settings(model=ModelConfig(ckpt=tmp_path / "smol_organism"))
    assert smol.problems_label == "smol_organism held-out set (eval.jsonl)"
    gsm8k = tmp_path / "test.jsonl"
    assert Settings(model=smol.model, problems=gsm8k).problems_label == str(gsm8k)


def _assert_identical(a: runs.StudyResults, b: runs.StudyResults) -> None:
    for name in runs.StudyResults._ARRAYS:
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name
    assert a.clean_text == b.clean_text
    assert a.readouts.keys() == b.readouts.keys()
    for name in a.readouts:
        assert np.array_equal(a.readouts[name], b.readouts[name], equal_nan=True), name


def test_one_chunk_encodes_its_questions_once_with_the_same_numbers(
    model, problems, tmp_path, monkeypatch
):
    """A study in one chunk per pass encodes the questions once, not once per pass.

    Bit for bit the same as the same study without sharing, and as a run resumed after its
    clean pass (whose ablation pass encodes the questions itself).
    """
    cfg = RunConfig(kinds=KINDS, batch_rows=10_000)  # every problem in one chunk per pass
    encoded: list[int] = []
    real_encode = runs.encode_prompt

    def counting(model_, prompt):
        encoded.append(len(prompt))
        return real_encode(model_, prompt)

    monkeypatch.setattr(runs, "encode_prompt", counting)
    monkeypatch.setattr(engine, "encode_prompt", counting)  # run_latent's own encodings
    shared = runs.compute_study(model, problems, cfg, tmp_path / "shared")
    assert encoded == [len(problems)]

    with monkeypatch.context() as patch:
        patch.setattr(runs, "_encode_for_sharing", lambda model_, prompt: None)
        encoded.clear()
        _assert_identical(shared, runs.compute_study(model, problems, cfg, tmp_path / "own"))
        assert encoded == [len(problems)] * 2

    real_ablation = runs._ablation_pass

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "_ablation_pass", stop)
    with pytest.raises(KeyboardInterrupt):
        runs.compute_study(model, problems, cfg, tmp_path / "resumed")
    monkeypatch.setattr(runs, "_ablation_pass", real_ablation)
    encoded.clear()
    resumed = runs.compute_study(model, problems, cfg, tmp_path / "resumed")
    assert encoded == [len(problems)]  # the clean pass came from its shard
    _assert_identical(shared, resumed)


@pytest.mark.parametrize("where", ["_clean_rows", "_ablation_rows"])
def test_out_of_memory_on_the_shared_encoding_drops_it_and_keeps_the_numbers(
    model, problems, tmp_path, monkeypatch, where
):
    """Halving cannot shrink a prefix that holds every problem: it is dropped instead."""
    cfg = RunConfig(kinds=KINDS, batch_rows=10_000)
    reference = runs.compute_study(model, problems, cfg, tmp_path / "reference")
    real = getattr(runs, where)
    calls: list[bool] = []

    def short_of_memory(*args, **kwargs):
        shared = args[-1]  # both passes give the encoding (or None) last
        calls.append(shared is not None)
        if shared is not None:
            raise torch.OutOfMemoryError("simulated: the shared prefix does not fit")
        return real(*args, **kwargs)

    monkeypatch.setattr(runs, where, short_of_memory)
    _assert_identical(reference, runs.compute_study(model, problems, cfg, tmp_path / "oom"))
    assert calls[0] and not any(calls[1:]) and len(calls) >= 2
