"""Recording a failure never becomes a second failure; a crash is never read as a verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codi_fixtures.config import Settings
from codi_fixtures.plugin.outcomes import CRASH_PROPERTY, VERDICT_PROPERTY, outcome_of
from codi_fixtures.plugin.session import CodiSession, write_traceback


def _raised(err: Exception) -> Exception:
    try:
        raise err
    except Exception as caught:
        return caught


def test_a_traceback_goes_to_the_temp_folder_where_the_cache_cannot_be_written(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    where = write_traceback(_raised(RuntimeError("boom")), blocked / "errors" / "x.log")
    assert not where.startswith(str(blocked)) and Path(where).exists()
    assert "RuntimeError: boom" in Path(where).read_text()


def test_a_study_failure_is_recorded_once_even_with_an_unwritable_cache(tmp_path, monkeypatch):
    """The study is attempted once; every later claim gets the same failure at once."""
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    session = CodiSession(config=None, settings=Settings(cache_dir=blocked / "cache"))
    attempts = []

    def study(tier: str) -> None:
        attempts.append(tier)
        raise RuntimeError("study exploded")

    monkeypatch.setattr(session, "study", study)
    monkeypatch.setattr(session, "selected_analyses", lambda: ())
    first = session.analysis("quick")
    assert session.analysis("quick") is first and attempts == ["quick"]
    assert first.cause == "RuntimeError: study exploded"
    assert Path(first.log).exists() and first.log in first.short()


def _report(when: str, outcome: str, props: dict[str, str]) -> pytest.TestReport:
    return pytest.TestReport(
        nodeid="e/test_x.py::test_a[quick]",
        location=("e/test_x.py", 1, "test_a"),
        keywords={},
        outcome=outcome,  # type: ignore[arg-type]
        longrepr="boom",
        when=when,  # type: ignore[arg-type]
        user_properties=list(props.items()),
    )


def test_a_crash_is_an_error_even_after_a_refuted_verdict_was_noted():
    refuted = {VERDICT_PROPERTY: "refuted"}
    assert outcome_of(_report("call", "failed", refuted)) == "refuted"
    crashed = {**refuted, CRASH_PROPERTY: json.dumps({"cause": "c", "where": "w", "log": "l"})}
    assert outcome_of(_report("call", "failed", crashed)) == "error"
