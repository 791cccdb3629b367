"""RQ3 / RQ4 claims end to end through the plugin (pytester, real models).

On the planted organism (thought t holds step t+1's value at its input embedding, and the
answer uses it) the lens claims and the interchange claims recover the planted map; the
bundled model (the same recipe without the planted losses: the control) shows it under
neither; a problem file without step values makes every RQ3 / RQ4 claim skip with that reason.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from codi_fixtures.config import BUNDLED_CHECKPOINT

REPO = Path(__file__).resolve().parents[1]
PLANTED = REPO / "codi_fixtures" / "planted"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (BUNDLED_CHECKPOINT / "model.safetensors").exists()
        or not (PLANTED / "model.safetensors").exists(),
        reason="bundled / planted model not built",
    ),
]


def _project(pytester: pytest.Pytester) -> None:
    """The experiments' RQ3 / RQ4 files and their conftest, unchanged.

    ``-k`` also matches the names of a test's parents, and pytester's directory is named after
    the test calling it ("..._lens_..."): a bare ``-k lens`` would select every test.
    """
    for name in ("conftest.py", "test_rq3_decoding.py", "test_rq4_interchange.py"):
        pytester.makepyfile(**{name[:-3]: (REPO / "experiments" / name).read_text()})


def _outcomes(result: pytest.RunResult) -> dict[str, str]:
    """Test id -> PASSED / FAILED / SKIPPED from the -rA summary."""
    out = {}
    for line in result.outlines:
        m = re.match(r"(PASSED|FAILED|SKIPPED|XFAIL|ERROR) (\S+::\S+)", line)
        if m:
            out[m.group(2).split("::", 1)[1]] = m.group(1)
    return out


def test_planted_map_is_recovered_by_the_lens_and_interchange_claims(pytester, tmp_path):
    _project(pytester)
    result = pytester.runpytest_subprocess(
        "-m",
        "full",
        "--codi-model=planted",
        "--kinds=mean",
        f"--codi-cache={tmp_path / 'cache'}",
        f"--report-dir={tmp_path / 'report'}",
        "-k",
        "decodable_by_the_lens or embedding_holds or important_ones or rq4",
        "-p",
        "no:cacheprovider",
        "-rA",
    )
    got = _outcomes(result)
    assert not [k for k, v in got.items() if v == "ERROR"], result.stdout.str()[-3000:]
    for k in (1, 2, 3):
        assert got[f"test_step_value_is_decodable_by_the_lens[full-s{k}]"] == "PASSED"
        # thought k-1's input embedding holds step k (the planted map), beyond the baseline
        assert got[f"test_thought_embedding_holds_step_value[full-t{k - 1}-s{k}]"] == "PASSED"
        others = [t for t in range(6) if t != k - 1]
        for t in others:
            # refuted, or inconclusive (a skip, not listed by name): never supported
            assert got.get(f"test_thought_embedding_holds_step_value[full-t{t}-s{k}]") != "PASSED"
    # with interchange training the planted thoughts are used: the best-encoding thoughts are
    # the important ones (without it they were the least important: readable, not used)
    assert got["test_best_encoding_thoughts_are_the_important_ones[full]"] == "PASSED"
    # RQ4: a different step-k value patched into thought k-1 gives the counterfactual answer
    # (measured IIA 66 / 72 / 67% vs 14 / 6 / 7% for random donors), and only there; a
    # same-value patch anywhere else moves log p(gold) by nats (another step's value changes)
    for k in (1, 2, 3):
        for t in range(6):
            iia = got.get(f"test_patched_value_changes_the_answer[full-t{t}-s{k}]")
            same = got.get(f"test_same_value_patch_preserves_the_answer[full-t{t}-s{k}]")
            if t == k - 1:
                assert iia == "PASSED"
                assert same != "FAILED"  # measured: inconclusive, trimmed mean 0.12-0.26 nats
            else:
                assert iia != "PASSED"
                assert same == "FAILED"
    summary = json.loads((tmp_path / "report" / "summary_statistics.json").read_text())
    rq3 = summary["analyses"]["rq3"]
    rates = rq3["lens_rate_embedding"]
    assert all(rates[k][k] >= 0.9 for k in range(3))  # measured 100 / 100 / 93%
    assert rq3["codi_paper_step_decoding"]["step1"]["top5"] >= 0.9
    # probes per difficulty bin: step k is the answer of the k-step bin, an intermediate of
    # the longer ones, and absent from the shorter ones (100 problems, 25 per bin)
    by_bin = rq3["probe_by_bin"]
    assert {b: c["role"] for b, c in by_bin["s2-t1"].items()} == {
        "2-step": "answer",
        "3-step": "intermediate",
        "4-step": "intermediate",
        "5+step": "intermediate",
    }
    assert sorted(by_bin["s3-t2"]) == ["3-step", "4-step", "5+step"]
    assert sum(c["n"] for c in by_bin["s3-t2"].values()) == 75
    for cell in by_bin["s3-t2"].values():
        low, high = cell["minus_permuted"][1:]
        assert low <= cell["minus_permuted"][0] <= high


def test_bundled_model_shows_no_map_under_the_lens_or_interchange(pytester, tmp_path):
    _project(pytester)
    result = pytester.runpytest_subprocess(
        "-m",
        "full",
        "--kinds=mean",
        f"--codi-cache={tmp_path / 'cache'}",
        "--no-codi-report",
        "-k",
        "decodable_by_the_lens or patched_value",
        "-p",
        "no:cacheprovider",
        "-rA",
    )
    got = _outcomes(result)
    lens = {k: v for k, v in got.items() if "lens" in k}
    assert list(lens.values()) == ["FAILED"] * 3, lens  # refuted at every step
    # no thought carries a step's value for the answer: no interchange cell is supported
    # (measured: 5 of 18 refuted, the rest inconclusive)
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) == 0 and outcomes.get("errors", 0) == 0, outcomes
    assert outcomes["failed"] + outcomes["skipped"] == 3 + 18


def test_problems_without_step_values_make_rq3_and_rq4_claims_skip(pytester, tmp_path):
    _project(pytester)
    text = (BUNDLED_CHECKPOINT / "eval.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    bare = [{k: v for k, v in r.items() if k not in ("intermediates", "cot")} for r in rows]
    path = tmp_path / "bare.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in bare))
    result = pytester.runpytest_subprocess(
        "-m",
        "quick",
        "--kinds=mean",
        f"--problems={path}",
        f"--codi-cache={tmp_path / 'cache'}",
        "--no-codi-report",
        "-p",
        "no:cacheprovider",
        "-rs",
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) == outcomes.get("failed", 0) == 0
    assert outcomes.get("errors", 0) == 0
    assert outcomes["skipped"] == 3 + 18 + 18 + 1 + 18 + 18
    # one reason, said once: pytest folds the 76 identical skips into one summary line
    lines = [line for line in result.outlines if "no step values" in line]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"SKIPPED [{outcomes['skipped']}] ")
