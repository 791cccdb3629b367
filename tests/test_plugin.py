"""The codi pytest plugin, end to end through pytester (real pytest runs, real model)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file  # not torch: pytester unloads it after a test

from codi_fixtures.config import BUNDLED_CHECKPOINT

pytestmark = pytest.mark.skipif(
    not (BUNDLED_CHECKPOINT / "model.safetensors").exists(), reason="bundled model not built"
)

REPO = Path(__file__).resolve().parents[1]
SHARED_GSM8K = REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl"

FAKE_CLAIMS = '''
from codi_fixtures.stats import StatResult


def _result(p, verdict, n=50):
    return StatResult(statistic=0.3, p_value=p, ci_low=0.1, ci_high=0.5, n=n,
                      method="planted", alternative="greater", p_corrected=p, ci_level=0.9,
                      sesoi=0.1, verdict=verdict, verdict_reason=f"planted {verdict}")


def test_supported(analysis, claim, tier):
    """A planted supported result passes."""
    claim.judge("supported", _result(0.001, "supported"))


def test_unsupported(analysis, claim, tier):
    """A planted refuted result fails, with its numbers in the message."""
    claim.judge("unsupported", _result(0.4, "refuted"))


def test_too_few_problems(analysis, claim, tier):
    """Two usable problems are inconclusive: skipped, not failed."""
    claim.judge("few", _result(0.001, "supported", n=2))


def test_known_failure(analysis, claim, tier):
    """Declared as a known outcome for the bundled model: a strict xfail."""
    claim.judge("known", _result(0.4, "refuted"))
'''


def _bundled_quick_fingerprint() -> str:
    from codi_fixtures.study.data import load_problems, problem_set_fingerprint, stratified_sample

    pool = load_problems(BUNDLED_CHECKPOINT / "eval.jsonl")
    return problem_set_fingerprint(stratified_sample(pool, 10, seed=0))


def _known() -> dict:
    return {
        "bundled": {
            "problem_sets": {"quick": _bundled_quick_fingerprint()},
            "outcomes": {"test_fake.py::test_known_failure[quick]": "planted failure"},
        }
    }


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One study cache for this module: the first run computes, later runs read."""
    return tmp_path_factory.mktemp("codi-cache")


def _fake_project(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_fake=FAKE_CLAIMS)
    pytester.makefile(".json", known=json.dumps(_known()))
    pytester.makefile(
        ".ini", pytest="[pytest]\ncodi_known_outcomes = known.json\nxfail_strict = true\n"
    )


def _summary(path: Path) -> dict:
    return json.loads((path / "summary_statistics.json").read_text())


@pytest.mark.slow
def test_verdicts_pass_fail_skip_and_known_xfail(pytester, shared_cache):
    _fake_project(pytester)
    result = pytester.runpytest_subprocess(
        "-m",
        "quick",
        f"--codi-cache={shared_cache}",
        "--report-dir=out",
        "-p",
        "no:cacheprovider",
        "-rfs",
    )
    result.assert_outcomes(passed=1, failed=1, skipped=1, xfailed=1, deselected=4)
    result.stdout.fnmatch_lines(
        [
            "*refuted: unsupported: planted refuted; statistic=0.3, SESOI=0.1, p=0.4*n=50*",
            "*inconclusive: only 2 usable problems for few*",
        ]
    )
    out = pytester.path / "out"
    verdicts = {v["test"].split("::")[1]: v["outcome"] for v in _summary(out)["verdicts"]}
    assert verdicts == {
        "test_known_failure[quick]": "known",
        "test_supported[quick]": "supported",
        "test_too_few_problems[quick]": "inconclusive",
        "test_unsupported[quick]": "refuted",
    }
    evidence = {v["test"].split("::")[1]: v["evidence"] for v in _summary(out)["verdicts"]}
    assert evidence["test_too_few_problems[quick]"].startswith("inconclusive: only 2 usable")
    result.stdout.fnmatch_lines(
        [
            "*= CODI findings =*",
            "model bundled · quick tier",
            "1 supported, 1 refuted, 1 inconclusive, 1 known",
            f"report: {out / 'report.html'}",
        ]
    )
    html = (out / "report.html").read_text()
    assert "codi-verdicts" in html and "data:image/png;base64," in html
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == [
        "quick-attention_vs_importance.png",
        "quick-head_correlation_map.png",
        "quick-importance_by_thought.png",
        "quick-importance_heatmap.png",
        "quick-per_thought_corr_early.png",
        "quick-per_thought_corr_late.png",
        "quick-per_thought_correlations.png",
        "quick-rq5_accuracy_vs_k.png",
        "quick-rq5_pairs_mean.png",
        "quick-rq5_subsets_mean.png",
        "quick-rq6_attention_heatmap.png",
        "quick-rq6_every_layer_rq2.png",
        "quick-rq6_knockout_heatmap.png",
        "quick-rq6_knockout_vs_attention.png",
    ]


@pytest.mark.slow
def test_two_xdist_workers_give_the_same_verdicts_and_statistics(pytester, shared_cache):
    _fake_project(pytester)
    args = ["-m", "quick", f"--codi-cache={shared_cache}", "-p", "no:cacheprovider"]
    single = pytester.runpytest_subprocess(*args, "--report-dir", "one")
    double = pytester.runpytest_subprocess(*args, "--report-dir", "two", "-n", "2")
    single.assert_outcomes(passed=1, failed=1, skipped=1, xfailed=1, deselected=4)
    double.assert_outcomes(passed=1, failed=1, skipped=1, xfailed=1)
    one, two = _summary(pytester.path / "one"), _summary(pytester.path / "two")
    for content in (one, two):
        content.pop("run")  # wall time and settings differ by design
    assert one == two


def test_tiers_parametrise_and_select_by_marker(pytester):
    _fake_project(pytester)
    result = pytester.runpytest_subprocess("--collect-only", "-q", "-m", "full", "--no-codi-report")
    result.stdout.fnmatch_lines(["test_fake.py::test_supported[[]full[]]"])
    assert "[quick]" not in result.stdout.str()


def test_max_step_sets_the_steps_claims_are_parametrised_over(pytester):
    pytester.makepyfile(
        test_steps="""
        def test_step(analysis, tier, step):
            pass
        """
    )
    result = pytester.runpytest_subprocess(
        "--collect-only", "-q", "-m", "quick", "--max-step", "5", "--no-codi-report"
    )
    result.stdout.fnmatch_lines(["test_steps.py::test_step[[]quick-s5[]]"])
    assert "-s6]" not in result.stdout.str()
    default = pytester.runpytest_subprocess("--collect-only", "-q", "-m", "quick")
    default.stdout.fnmatch_lines(["test_steps.py::test_step[[]quick-s3[]]"])
    assert "-s4]" not in default.stdout.str()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--kinds", "zero,bogus"],
            "*unknown ablation kind 'bogus'; allowed: zero,mean,noise,resample*",
        ),
        (
            ["--codi-ckpt=/nonexistent/ckpt"],
            "*checkpoint directory /nonexistent/ckpt does not exist*",
        ),
        (["--problems=missing.jsonl"], "*missing.jsonl*--problems*"),
        (["--layers", "1,2,99"], "*layer 99 out of range*6 layers*"),
        (["--layers", "1,2"], "*give exactly three layers*"),
        (["--layers=1,3,99"], "*layer 99 out of range*6 layers*"),
        (["--layers=-1,2,3"], "*not negative*"),
        (["--layers=1,1,3"], "*the three layers must differ*"),
        (["--quick-n=0"], "*--quick-n must be at least 1*"),
        (["--batch-rows=0"], "*--batch-rows must be at least 1*"),
        (["--batch-rows=lots"], "*--batch-rows 'lots': give a number of rows or auto*"),
        (["--max-batch-rows=0"], "*--max-batch-rows must be at least 1*"),
        (["--codi-cache=small.json/cache"], "*cannot use*small.json*cache*--codi-cache DIR*"),
        (["--codi-base=no_such_base"], "*cannot read the base model config from 'no_such_base'*"),
        (["--max-step=0"], "*--max-step must be at least 1*"),
        (["--alpha", "2"], "*--alpha must be between 0 and 0.5*"),
        (["--importance-kind", "noise", "--kinds", "zero"], "*--importance-kind 'noise'*--kinds*"),
        (["--ablation-site", "block99"], "*layer 99 out of range*"),
        (["--device", "cuda:0"], "*CUDA*--device cpu*"),
        (["--dtype", "float16", "--device", "cpu"], "*float16 is not supported on CPU*"),
        (["--quick-n", "1000"], "*cannot sample 1000 problems from a set of 400*--quick-n N*"),
        (
            ["--quick-n", "10", "--problems=small.json"],
            "*bin '5+step' has 0 problem(s)*needs 2*",
        ),
    ],
    ids=[
        "kind",
        "ckpt",
        "problems",
        "layer-range",
        "layer-count",
        "layer-range-eq",
        "layer-negative",
        "layer-duplicate",
        "quick-n-zero",
        "batch-rows-zero",
        "batch-rows-word",
        "max-batch-rows-zero",
        "cache-unwritable",
        "base-missing",
        "max-step-zero",
        "alpha",
        "importance-kind",
        "site",
        "device",
        "dtype",
        "too-many",
        "bin-too-small",
    ],
)
def test_bad_options_are_usage_errors_that_name_the_fix(pytester, args, message):
    pytester.makepyfile(test_fake=FAKE_CLAIMS)
    records = [
        {"question": f"q{i}", "answer": i, "difficulty": d, "gsm8k_id": i}
        for i, d in enumerate(["2-step"] * 5 + ["3-step"] * 5 + ["4-step"] * 5)
    ]
    pytester.makefile(".json", small=json.dumps(records))
    result = pytester.runpytest_subprocess("-m", "quick", "--no-codi-report", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    assert len(result.stderr.str().strip().splitlines()) == 1


@pytest.mark.slow
def test_a_model_that_gets_everything_wrong_makes_claims_inconclusive(pytester, tmp_path):
    from codi_fixtures.testing import save_tiny_checkpoint, tiny_codi

    ckpt = tmp_path / "random-codi"
    save_tiny_checkpoint(tiny_codi("llama"), ckpt)
    (ckpt / "eval.jsonl").write_text((BUNDLED_CHECKPOINT / "eval.jsonl").read_text())
    _fake_project(pytester)
    result = pytester.runpytest_subprocess(
        "-m",
        "quick",
        f"--codi-ckpt={ckpt}",
        "--no-codi-report",
        "-p",
        "no:cacheprovider",
        f"--codi-cache={tmp_path / 'cache'}",
        "-rs",
    )
    result.assert_outcomes(skipped=4, deselected=4)
    result.stdout.fnmatch_lines(["*inconclusive: the clean run answers only 0/10 problems*"])


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_GSM8K.exists(), reason="../shared/data/gsm8k not present")
def test_gsm8k_problems_build_a_stratified_set(pytester, tmp_path):
    pytester.makepyfile(
        test_gsm=(
            "def test_set(codi_session, tier):\n"
            "    problems = codi_session.problems(tier)\n"
            "    bins = [p.difficulty for p in problems]\n"
            "    assert len(problems) == 10\n"
            "    assert bins == ['2-step'] * 3 + ['3-step'] * 3 + ['4-step'] * 2 + ['5+step'] * 2\n"
            "    assert all(p.id.startswith('gsm8k-test-') for p in problems)\n"
        )
    )
    result = pytester.runpytest_subprocess(
        "-m", "quick", f"--problems={SHARED_GSM8K}", "--no-codi-report"
    )
    result.assert_outcomes(passed=1, deselected=1)


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_an_unreadable_checkpoint_is_a_usage_error_before_the_problem_set(
    pytester, tmp_path, weights
):
    ckpt = tmp_path / "broken"
    ckpt.mkdir()
    for name in ("config.json", "codi.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(BUNDLED_CHECKPOINT / name, ckpt / name)
    original = (BUNDLED_CHECKPOINT / "model.safetensors").read_bytes()
    # a truncated download, or garbage under the pickle's name; and no eval.jsonl beside it
    (ckpt / weights).write_bytes(original[:1000] if weights.endswith("safetensors") else b"junk")
    pytester.makepyfile(test_fake=FAKE_CLAIMS)
    result = pytester.runpytest_subprocess(
        "-m", "quick", f"--codi-ckpt={ckpt}", "--no-codi-report", "-p", "no:cacheprovider"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "cannot read weights from" in err and "truncated, corrupted, or a pickle" in err
    assert "eval.jsonl" not in err
    assert "Traceback" not in err + result.stdout.str()


def test_a_checkpoint_that_does_not_fit_its_base_is_a_usage_error_not_a_failed_study(
    pytester, tmp_path
):
    """Checked on a module built without memory: one line before any test, not N errors."""
    ckpt = tmp_path / "wrong-prj"
    shutil.copytree(BUNDLED_CHECKPOINT, ckpt)
    state = load_file(str(ckpt / "model.safetensors"))
    rows, cols = state["prj.1.weight"].shape
    state["prj.1.weight"] = np.zeros((rows + 1, cols), dtype=state["prj.1.weight"].dtype)
    save_file(state, str(ckpt / "model.safetensors"))
    pytester.makepyfile(test_fake=FAKE_CLAIMS)
    result = pytester.runpytest_subprocess(
        "-m", "quick", f"--codi-ckpt={ckpt}", "--no-codi-report", "-p", "no:cacheprovider"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stderr.fnmatch_lines(["*projection shape mismatch: prj.1.weight is (129, 64)*prj_dim*"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


BROKEN_ENGINE = """
import codi_fixtures.engine as engine


def _explode(*args, **kwargs):
    raise RuntimeError("forward exploded on purpose")


engine.forward_step = _explode
"""


@pytest.mark.slow
def test_a_study_that_crashes_is_one_paragraph_and_errors_never_expected_failures(
    pytester, tmp_path
):
    _fake_project(pytester)
    pytester.makeconftest(BROKEN_ENGINE)
    result = pytester.runpytest_subprocess(
        "-m",
        "quick",
        f"--codi-cache={tmp_path / 'cache'}",
        "--report-dir=out",
        "-p",
        "no:cacheprovider",
        "-rA",
    )
    result.assert_outcomes(errors=4, deselected=4)  # the known outcome is an ERROR too
    out = result.stdout.str()
    assert out.count("CODI study failed:") == 1
    result.stdout.fnmatch_lines(
        [
            "CODI study failed: the quick tier's study could not be computed, so none of its 4 "
            "claims was judged*",
            "  cause: RuntimeError: forward exploded on purpose",
            "  full traceback: *study-quick-*.log",
            "no report written: no claim reached a verdict*",
        ]
    )
    assert "Traceback" not in out and "XFAIL" not in out
    assert not (pytester.path / "out").exists()
    log = next((tmp_path / "cache" / "errors").glob("study-quick-*.log")).read_text()
    assert "Traceback" in log and "forward exploded on purpose" in log


CRASHING_CLAIMS = """
import pytest

from codi_fixtures.analyses import rq1


@pytest.mark.parametrize("which", [0, 1, 2])
def test_crashing_statistic(analysis, claim, tier, which):
    \"\"\"A claim whose statistics raise: an ERROR, never a verdict.\"\"\"
    claim.judge(rq1.lowers_logp(analysis, which, "no-such-kind"))


def test_known_failure(analysis, claim, tier):
    \"\"\"Declared a known outcome, but it crashes: an ERROR, not an expected failure.\"\"\"
    raise ZeroDivisionError("division by zero on purpose")


def test_malformed_statistic(analysis, claim, tier):
    \"\"\"A statistic called wrongly inside ``guarded``: a bug, an ERROR, not inconclusive.\"\"\"
    from functools import partial

    import numpy as np

    from codi_fixtures.analyses.view import guarded
    from codi_fixtures.stats import mean_effect

    claim.judge(guarded(partial(mean_effect, np.ones((20, 6))), 20, "greater"))
"""


@pytest.mark.slow
def test_a_claim_that_crashes_is_an_error_reported_once(pytester, shared_cache, tmp_path):
    _fake_project(pytester)
    pytester.makepyfile(test_fake=CRASHING_CLAIMS)
    result = pytester.runpytest_subprocess(
        "-m",
        "quick",
        f"--codi-cache={tmp_path / 'cache'}",
        "--report-dir=out",
        "-p",
        "no:cacheprovider",
        "-ra",
    )
    result.assert_outcomes(errors=5, deselected=5)
    assert not (pytester.path / "out").exists()  # no claim was judged: no report
    out = result.stdout.str()
    assert "Traceback" not in out and "XFAIL" not in out and " failed" not in out
    assert "inconclusive:" not in out  # the legend names the word; no claim is one
    assert out.count("CODI claims crashed:") == 3  # one paragraph per distinct cause
    result.stdout.fnmatch_lines(
        [
            "CODI claims crashed: 3 claim(s) raised the same error, so none of them was judged*",
            "  cause: *no-such-kind*",
            "  full traceback: *claim-*.log",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "CODI claims crashed: 1 claim(s) raised the same error*",
            "  cause: ZeroDivisionError: division by zero on purpose",
        ]
    )
    result.stdout.fnmatch_lines(["  cause: ValueError: deltas must be 1-D*"])
    logs = sorted((tmp_path / "cache" / "errors").glob("claim-*.log"))
    assert len(logs) == 3  # one traceback per cause, not one per claim
    assert all("Traceback" in log.read_text() for log in logs)


def _tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


@pytest.mark.slow
def test_no_run_destroys_an_earlier_report(pytester, shared_cache):
    _fake_project(pytester)
    args = ["-m", "quick", f"--codi-cache={shared_cache}", "-p", "no:cacheprovider"]
    pytester.runpytest_subprocess(*args).assert_outcomes(
        passed=1, failed=1, skipped=1, xfailed=1, deselected=4
    )
    report = pytester.path / "reports" / "quick"
    before = _tree(report)
    assert {"report.html", "summary_statistics.json"} <= set(before)
    for bad in (["--codi-ckpt=/nonexistent"], ["--device=cuda:0"], ["--layers=1,3,99"]):
        assert pytester.runpytest_subprocess(*args, *bad).ret == pytest.ExitCode.USAGE_ERROR
    assert pytester.runpytest_subprocess(*args, "-k", "no_such_claim").ret == 5
    assert _tree(report) == before
    # a run over some claims publishes beside the complete report, never over it
    partial = pytester.runpytest_subprocess(*args, "-k", "test_supported")
    partial.assert_outcomes(passed=1, deselected=7)
    assert _tree(report) == before
    verdicts = _summary(pytester.path / "reports" / "quick-partial")["verdicts"]
    assert [v["test"].split("::")[1] for v in verdicts] == ["test_supported[quick]"]
    # so does a run over every claim that stops early (-x): its report has fewer claims
    stopped = pytester.runpytest_subprocess(*args, "-x")
    stopped.assert_outcomes(passed=1, failed=1, deselected=4)
    assert _tree(report) == before
    summary = _summary(pytester.path / "reports" / "quick-partial")
    assert len(summary["verdicts"]) == 2 and summary["run"]["complete"] is False
    stopped.stdout.fnmatch_lines([f"report: {report}-partial{os.sep}report.html"])
    assert not list(pytester.path.glob("reports/.*"))  # no staging folder is left behind


def test_an_unwritable_report_dir_is_a_usage_error_not_an_internal_error(pytester):
    pytester.makepyfile(test_fake=FAKE_CLAIMS)
    (pytester.path / "afile").write_text("not a folder")
    result = pytester.runpytest_subprocess(
        "-m", "quick", "--report-dir=afile/out", "-p", "no:cacheprovider"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*cannot write the report to*afile*out*--report-dir*"])
    output = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in output and "Traceback" not in output


@pytest.mark.slow
def test_known_outcomes_apply_only_to_the_problem_set_they_were_declared_on(
    pytester, shared_cache, tmp_path
):
    _fake_project(pytester)
    other = tmp_path / "other.jsonl"
    lines = (BUNDLED_CHECKPOINT / "eval.jsonl").read_text().splitlines()
    other.write_text("\n".join(reversed(lines)) + "\n")  # same problems, another sample
    result = pytester.runpytest_subprocess(
        "-m",
        "quick",
        f"--codi-cache={shared_cache}",
        f"--problems={other}",
        "--no-codi-report",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=1, failed=2, skipped=1, deselected=4)


NARROW_CLAIMS = '''
import pytest

from codi_fixtures.analyses import rq1

pytestmark = pytest.mark.codi_analyses("rq1")


def test_first_thought(analysis, claim, tier):
    """RQ1 only: the study computes RQ1's conditions and nothing else."""
    claim.judge(rq1.lowers_accuracy(analysis, 0, "zero"))
'''


@pytest.mark.slow
@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_a_run_computes_only_the_analyses_its_claims_read(pytester, tmp_path, workers):
    pytester.makepyfile(test_narrow=NARROW_CLAIMS)
    cache = tmp_path / "cache"
    args = ["-m", "quick", f"--codi-cache={cache}", "--report-dir=out", "-p", "no:cacheprovider"]
    result = pytester.runpytest_subprocess(*args, *workers)
    result.assert_outcomes(passed=1)
    summary = _summary(pytester.path / "out")
    assert summary["analyses_run"] == ["rq1"] and "rq1" in summary
    assert "overall_correlation" not in summary and "analyses" not in summary
    (study,) = cache.glob("study-*.npz")
    from codi_fixtures.study.results import StudyResults

    conditions = StudyResults.from_bytes(study.read_bytes()).conditions
    assert conditions and all(re.fullmatch(r"(t\d|all)-[a-z]+", c) for c in conditions)
    figures = sorted(p.name for p in (pytester.path / "out" / "figures").glob("*.png"))
    assert figures == ["quick-importance_by_thought.png", "quick-importance_heatmap.png"]
    html = (pytester.path / "out" / "report.html").read_text()
    assert "not computed" in html and "rq6 (no selected claim reads it" in html


def test_a_mark_naming_an_unknown_analysis_is_a_usage_error(pytester):
    pytester.makepyfile(test_narrow=NARROW_CLAIMS.replace('"rq1")', '"rq9")', 1))
    result = pytester.runpytest_subprocess("-m", "quick", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*claims ask for analyses*rq9*that no one registered*"])


def test_redeclaring_known_outcomes_keeps_the_measured_evidence_once(tmp_path):
    """Regenerating the declarations from a run that had known outcomes does not nest them."""
    from codi_fixtures.plugin.known_outcomes import declarations_from_summaries

    summary = {
        "meta": {"tier": "quick", "problem_set_fingerprint": "abc"},
        "verdicts": [
            {
                "test": "experiments/test_x.py::test_a[quick]",
                "outcome": "known",
                "evidence": "declared: known outcome: not supported on this model: old; "
                "measured: statistic=-1.6, SESOI=0.1, p=0.99",
            },
            {
                "test": "experiments/test_x.py::test_b[quick]",
                "outcome": "refuted",
                "evidence": "claim b: statistic=0.01, SESOI=0.1, p=1",
            },
            {  # as the reporter writes it: the numbers, and a method that has ": " in it
                "test": "experiments/test_x.py::test_c[quick]",
                "outcome": "refuted",
                "evidence": "statistic=2.4, SESOI=0.1, n=99 (trimmed mean within +/-0.1: TOST)",
            },
        ],
    }
    path = tmp_path / "summary_statistics.json"
    path.write_text(json.dumps(summary))
    outcomes = declarations_from_summaries([path])["outcomes"]
    prefix = "not supported on this model: "
    assert outcomes == {
        "test_x.py::test_a[quick]": prefix + "statistic=-1.6, SESOI=0.1, p=0.99",
        "test_x.py::test_b[quick]": prefix + "statistic=0.01, SESOI=0.1, p=1",
        "test_x.py::test_c[quick]": prefix
        + "statistic=2.4, SESOI=0.1, n=99 (trimmed mean within +/-0.1: TOST)",
    }


def test_a_refuted_equivalence_shows_the_p_value_that_refuted_it():
    """An equivalence claim is refuted by p(|effect| > SESOI): the evidence line carries it."""
    import numpy as np

    from codi_fixtures.plugin.claims import evidence
    from codi_fixtures.stats.decoding import equivalence_effect

    deltas = np.random.default_rng(0).normal(2.0, 0.5, size=60)  # far beyond +/-0.1
    result = equivalence_effect(deltas, sesoi=0.1, n_boot=999)
    assert result.verdict == "refuted"
    line = evidence(result)
    assert "p=1," in line  # the TOST p: not equivalent
    assert f"p_sesoi_holm={result.p_sesoi_corrected:.3g}," in line
    assert result.p_sesoi_corrected is not None and result.p_sesoi_corrected < 0.05


CRASH_BESIDE_A_VERDICT = '''
from codi_fixtures.stats import StatResult


def test_supported(analysis, claim, tier):
    """A planted supported result passes."""
    claim.judge("supported", StatResult(statistic=0.3, p_value=0.001, ci_low=0.1, ci_high=0.5,
        n=50, method="planted", alternative="greater", p_corrected=0.001, ci_level=0.9,
        sesoi=0.1, verdict="supported", verdict_reason="planted"))


def test_crashes_before_judging(analysis, claim, tier):
    """Its evidence cannot be computed: an error, listed in the report with its cause."""
    raise ZeroDivisionError("no evidence on purpose")
'''


@pytest.mark.slow
def test_a_crashed_claim_is_in_the_report_and_its_statistics(pytester, shared_cache):
    """The report counts every claim: one that crashed is an error row, not a missing one."""
    pytester.makepyfile(test_fake=CRASH_BESIDE_A_VERDICT)
    result = pytester.runpytest_subprocess(
        "-m", "quick", f"--codi-cache={shared_cache}", "--report-dir=out", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1, errors=1, deselected=2)
    verdicts = {v["test"].split("::")[1]: v for v in _summary(pytester.path / "out")["verdicts"]}
    assert {k: v["outcome"] for k, v in verdicts.items()} == {
        "test_crashes_before_judging[quick]": "error",
        "test_supported[quick]": "supported",
    }
    crashed = verdicts["test_crashes_before_judging[quick]"]["evidence"]
    assert "ZeroDivisionError: no evidence on purpose" in crashed and "claim-" in crashed
    html = (pytester.path / "out" / "report.html").read_text()
    assert "1 supported, 1 error" in html


@pytest.mark.slow
def test_without_a_report_the_console_still_names_the_traceback(pytester, shared_cache):
    """--no-codi-report writes nothing, but the findings and each crash's log are printed."""
    pytester.makepyfile(test_fake=CRASH_BESIDE_A_VERDICT)
    result = pytester.runpytest_subprocess(
        "-m", "quick", f"--codi-cache={shared_cache}", "--no-codi-report", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1, errors=1, deselected=2)
    result.stdout.fnmatch_lines(
        [
            "*crashed, not a verdict: ZeroDivisionError: no evidence on purpose*"
            "full traceback: *claim-*.log*",
            "CODI claims crashed: 1 claim(s)*",
            "1 supported, 1 error",
            "no report written (--no-codi-report)",
        ]
    )
    assert not (pytester.path / "reports").exists()


@pytest.mark.slow
def test_known_outcomes_apply_only_under_the_settings_they_were_declared_with(
    pytester, shared_cache
):
    """Declared at the default SESOIs; a run with another SESOI judges every claim afresh."""
    from codi_fixtures.plugin.known_outcomes import declarations_from_summaries

    _fake_project(pytester)
    args = ["-m", "quick", f"--codi-cache={shared_cache}", "-p", "no:cacheprovider"]
    first = pytester.runpytest_subprocess(*args, "--report-dir=out")
    first.assert_outcomes(passed=1, failed=1, skipped=1, xfailed=1, deselected=4)
    declared = declarations_from_summaries([pytester.path / "out" / "summary_statistics.json"])
    assert declared["settings"]["min_effect_logp"] == 0.1
    (pytester.path / "known.json").write_text(json.dumps({"bundled": declared}))
    same = pytester.runpytest_subprocess(*args, "--no-codi-report")
    same.assert_outcomes(passed=1, skipped=1, xfailed=2, deselected=4)
    other = pytester.runpytest_subprocess(*args, "--no-codi-report", "--min-effect-logp=0.5")
    other.assert_outcomes(passed=1, failed=2, skipped=1, deselected=4)
    other.stdout.fnmatch_lines(
        ["known outcomes of 'bundled' not applied*min_effect_logp: 0.1 -> 0.5*judged afresh"]
    )


@pytest.mark.slow
def test_stale_declarations_are_named(pytester, shared_cache):
    """A declaration that matches no claim, or whose claim is now inconclusive, is said.

    Only the tiers that ran count: a full-tier declaration is not stale on a quick run.
    """
    _fake_project(pytester)
    known = _known()
    known["bundled"]["outcomes"].update(
        {
            "test_fake.py::test_renamed_long_ago[quick]": "gone",
            "test_fake.py::test_too_few_problems[quick]": "was refuted once",
            # another tier's declaration cannot match a quick run: not stale here
            "test_fake.py::test_unsupported[full]": "refuted on the full tier",
        }
    )
    (pytester.path / "known.json").write_text(json.dumps(known))
    result = pytester.runpytest_subprocess(
        "-m", "quick", f"--codi-cache={shared_cache}", "--no-codi-report", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1, failed=1, skipped=1, xfailed=1, deselected=4)
    result.stdout.fnmatch_lines(
        [
            "known outcomes: 1 declaration(s) matched no claim of this run (first: "
            "test_fake.py::test_renamed_long_ago*",
            "known outcomes: 1 claim(s) declared refuted ended inconclusive (first: "
            "test_fake.py::test_too_few_problems*",
        ]
    )


STATED_REASON_CLAIMS = '''
from codi_fixtures.stats import inconclusive_verdict


def test_nothing_to_measure(analysis, claim, tier):
    """Nothing was measured (n = 0) for a stated reason: the skip says that reason."""
    claim.judge("empty", inconclusive_verdict("inconclusive: no step is decodable at all"))
'''


def test_an_unmeasured_claim_is_skipped_with_its_own_reason(pytester, shared_cache):
    """Not 'only 0 usable problems': the reason the analysis gave for measuring nothing."""
    _fake_project(pytester)
    pytester.makepyfile(test_fake=STATED_REASON_CLAIMS)
    result = pytester.runpytest_subprocess(
        "-m", "quick", f"--codi-cache={shared_cache}", "--no-codi-report", "-rs",
        "-p", "no:cacheprovider",
    )  # fmt: skip
    result.assert_outcomes(skipped=1, deselected=1)
    result.stdout.fnmatch_lines(["*inconclusive: empty: no step is decodable at all (n=0)*"])
    result.stdout.no_fnmatch_line("*usable problems*")


@pytest.mark.slow
def test_declarations_of_a_tier_sample_that_did_not_run_are_not_named(pytester, shared_cache):
    """Both tiers, quick resampled (--quick-n 12): only the full tier's declarations apply.

    A quick claim declared refuted that ends inconclusive is not "no longer holding": its
    declaration was made on another sample and applies to nothing in this run.
    """
    from codi_fixtures.study.data import load_problems, problem_set_fingerprint, stratified_sample

    _fake_project(pytester)
    pool = load_problems(BUNDLED_CHECKPOINT / "eval.jsonl")
    known = _known()
    known["bundled"]["problem_sets"]["full"] = problem_set_fingerprint(
        stratified_sample(pool, 100, seed=0)
    )
    known["bundled"]["outcomes"]["test_fake.py::test_too_few_problems[quick]"] = "was refuted"
    known["bundled"]["outcomes"]["test_fake.py::test_unsupported[full]"] = "refuted on full"
    (pytester.path / "known.json").write_text(json.dumps(known))
    # --report-dir: the claims are outside experiments/ and both tiers run (no -m)
    result = pytester.runpytest_subprocess(
        f"--codi-cache={shared_cache}",
        "--report-dir=out",
        "--no-codi-report",
        "-p",
        "no:cacheprovider",
        "--quick-n",
        "12",
    )
    outcomes = result.parseoutcomes()
    result.stdout.fnmatch_lines(["*= CODI findings =*"])
    assert "errors" not in outcomes and outcomes["xfailed"] == 1, outcomes  # full's applies
    result.stdout.no_fnmatch_line("known outcomes:*")
