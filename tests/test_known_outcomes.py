"""Known-outcome declarations: which tests they match, under which settings, from which runs."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pytest

from codi_fixtures.config import Settings
from codi_fixtures.errors import ConfigError
from codi_fixtures.plugin.known_outcomes import (
    declarations_from_summaries,
    known_for_run,
    matcher,
    names_tier,
    not_applied_reason,
    settings_mismatch,
    verdict_settings,
)


def test_a_declared_id_matches_that_file_in_any_folder_and_no_other_file():
    pattern = matcher("test_rq1_importance.py::test_last[full-mean]")
    assert pattern.fullmatch("experiments/test_rq1_importance.py::test_last[full-mean]")
    assert pattern.fullmatch("test_rq1_importance.py::test_last[full-mean]")
    assert not pattern.fullmatch("experiments/old_test_rq1_importance.py::test_last[full-mean]")
    assert not pattern.fullmatch("experiments/test_rq1_importance.py::test_last[full-zero]")
    assert matcher("test_x.py::test_a[*]").fullmatch("a/b/test_x.py::test_a[quick-t0]")


def _summary(path: Path, outcome: str = "refuted", **settings: object) -> Path:
    described = {**Settings().describe(), **settings}
    path.write_text(
        json.dumps(
            {
                "meta": {"tier": "quick", "problem_set_fingerprint": "abc"},
                "run": {"settings": described},
                "verdicts": [
                    {"test": "e/test_x.py::test_a[quick]", "outcome": outcome, "evidence": "x"}
                ],
            }
        )
    )
    return path


def test_declarations_record_the_settings_and_apply_only_under_them(tmp_path):
    declared = declarations_from_summaries([_summary(tmp_path / "s.json")])
    known = tmp_path / "known.json"
    known.write_text(json.dumps({"m": declared}))
    same = verdict_settings(Settings().describe())
    assert declared["settings"] == same
    assert known_for_run(known, "m", {"quick": "abc"}, same) == {
        "quick": {"test_x.py::test_a[quick]": "not supported on this model: x"}
    }
    assert not_applied_reason(known, "m", same) is None
    other = verdict_settings(Settings(min_effect_logp=0.5).describe())
    assert known_for_run(known, "m", {"quick": "abc"}, other) == {}
    reason = not_applied_reason(known, "m", other)
    assert reason is not None and "min_effect_logp: 0.1 -> 0.5" in reason
    site = verdict_settings(
        {**Settings().describe(), "run": {**Settings().describe()["run"], "site": "L3"}}
    )
    assert "run.site" in str(not_applied_reason(known, "m", site))
    every_layer = verdict_settings(Settings(rq3_all_layers=True).describe())  # wider RQ3 family
    assert "rq3_all_layers: False -> True" in str(not_applied_reason(known, "m", every_layer))


def test_declarations_without_settings_still_apply(tmp_path):
    """A file written before settings were recorded keeps working (as if declared for all)."""
    known = tmp_path / "known.json"
    entry = {"problem_sets": {"quick": "abc"}, "outcomes": {"t.py::a[quick]": "r"}}
    known.write_text(json.dumps({"m": entry}))
    other = verdict_settings(Settings(alpha=0.01).describe())
    assert known_for_run(known, "m", {"quick": "abc"}, other) == {"quick": {"t.py::a[quick]": "r"}}


@pytest.mark.parametrize("outcome", ["error", "unexpected"])
def test_a_run_with_errors_cannot_be_declared(tmp_path, outcome):
    """A crashed claim has no verdict: declaring around it would drop its old declaration."""
    with pytest.raises(ConfigError, match="fix the run before declaring"):
        declarations_from_summaries([_summary(tmp_path / "s.json", outcome)])


def test_summaries_measured_under_different_settings_cannot_be_mixed(tmp_path):
    a = _summary(tmp_path / "a.json")
    b = _summary(tmp_path / "b.json", alpha=0.01)
    with pytest.raises(ConfigError, match="alpha"):
        declarations_from_summaries([a, b])


def test_the_command_line_turns_a_refusal_into_a_usage_error(tmp_path, capsys):
    from codi_fixtures.plugin.known_outcomes import main

    bad = _summary(tmp_path / "s.json", "error")
    out = tmp_path / "known.json"
    with pytest.raises(SystemExit) as exit_:
        main([str(bad), "--out", str(out)])
    assert exit_.value.code == 2 and not out.exists()
    assert "fix the run before declaring" in capsys.readouterr().err


def test_a_known_outcome_row_does_not_repeat_numbers_declared_from_the_same_run():
    """Declared evidence equal to the measured one is named once (the row stays parseable)."""
    from codi_fixtures.plugin.properties import CLAIM_PROPERTY
    from codi_fixtures.plugin.reporter import claim_rows

    numbers = "statistic=-0.9, SESOI=0.1, p=1, n=100"

    def row(declared: str) -> str:
        payload = {"message": numbers, "tier": "full", "label": "x", "stats": {}}
        report = pytest.TestReport(
            "e.py::t[full]",
            ("e.py", 1, "t"),
            {},
            "skipped",
            None,
            "call",
            user_properties=[(CLAIM_PROPERTY, json.dumps(payload))],
        )
        report.wasxfail = declared  # type: ignore[attr-defined]
        return claim_rows([report], {"e.py::t[full]": "known"})[0].message

    same = row(f"known outcome: not supported on this model: {numbers}")
    assert same == (
        f"declared: known outcome: not supported on this model (the same numbers); "
        f"measured: {numbers}"
    )
    other = row("known outcome: not supported on this model: statistic=-1.0")
    assert other.count("statistic=") == 2


def test_settings_mismatch_names_every_difference_both_ways():
    """A setting only one side records differs too (declared -> this run, sorted by name)."""
    declared = {"alpha": 0.05, "min_effect_logp": 0.1, "old_flag": True}
    run = {"alpha": 0.05, "min_effect_logp": 0.5, "rq3_all_layers": False}
    assert settings_mismatch(declared, run) == [
        "min_effect_logp: 0.1 -> 0.5",
        "old_flag: True -> None",
        "rq3_all_layers: None -> False",
    ]
    assert settings_mismatch(run, dict(run)) == []


def test_each_tier_gets_only_the_declarations_that_can_name_its_claims(tmp_path):
    """A quick run gets no full-tier id (it could never match, nor be 'stale' there)."""
    known = tmp_path / "known.json"
    outcomes = {"t.py::a[quick]": "q", "t.py::a[full-t0]": "f", "t.py::b[*]": "any", "t.py::c": "c"}
    known.write_text(
        json.dumps({"m": {"problem_sets": {"quick": "q1", "full": "f1"}, "outcomes": outcomes}})
    )
    assert known_for_run(known, "m", {"quick": "q1", "full": "other sample"}) == {
        "quick": {"t.py::a[quick]": "q", "t.py::b[*]": "any", "t.py::c": "c"}
    }
    assert names_tier("t.py::a[full-t0]", "full") and not names_tier("t.py::a[full-t0]", "quick")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read *missing.json (No such file or directory); pass the summary"),
        ("{not json", "cannot read *s.json (Expecting property name*); pass the summary"),
        ('{"a": 1}', "*s.json is not a summary_statistics.json (no verdicts)*"),
        ("dir", "cannot read *s.json (Is a directory); pass the summary"),
    ],
    ids=["missing", "invalid-json", "not-a-summary", "directory"],
)
def test_the_command_line_names_an_unreadable_summary_not_a_traceback(
    tmp_path, capsys, content, message
):
    from codi_fixtures.plugin.known_outcomes import main

    path = tmp_path / ("missing.json" if content is None else "s.json")
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    out = tmp_path / "known.json"
    with pytest.raises(SystemExit) as exit_:
        main([str(path), "--out", str(out)])
    assert exit_.value.code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert any(fnmatch.fnmatch(line, f"*{message}*") for line in err.splitlines()), err


def _with_run(path: Path, **run: object) -> Path:
    summary = json.loads(path.read_text())
    summary["run"].update(run)
    path.write_text(json.dumps(summary))
    return path


def test_a_partial_run_or_another_models_run_cannot_be_declared(tmp_path):
    """A -k run has only some claims: declaring from it would drop every other declaration."""
    partial = _with_run(_summary(tmp_path / "p.json"), complete=False, model="bundled")
    with pytest.raises(ConfigError, match="only some claims"):
        declarations_from_summaries([partial], "bundled")
    other = _with_run(_summary(tmp_path / "o.json"), complete=True, model="planted")
    with pytest.raises(ConfigError, match="model 'planted', not --model 'bundled'"):
        declarations_from_summaries([other], "bundled")
    assert declarations_from_summaries([other], "planted")["outcomes"]


def test_redeclaring_from_fewer_tiers_than_declared_is_refused(tmp_path, capsys):
    from codi_fixtures.plugin.known_outcomes import main

    out = tmp_path / "known.json"
    before = {"bundled": {"problem_sets": {"quick": "abc", "full": "def"}, "outcomes": {}}}
    out.write_text(json.dumps(before))
    with pytest.raises(SystemExit) as exit_:
        main([str(_summary(tmp_path / "s.json")), "--out", str(out)])
    assert exit_.value.code == 2 and json.loads(out.read_text()) == before
    assert "tier(s) ['full']" in capsys.readouterr().err
