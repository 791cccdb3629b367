"""The controller's reporter: collects every worker's verdicts, writes and publishes the report."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pytest

from codi_fixtures.plugin.properties import CLAIM_PROPERTY, STUDY_PROPERTY
from codi_fixtures.plugin.session import CodiSession

if TYPE_CHECKING:
    from codi_fixtures.report.summary import ClaimRow

__all__ = [
    "CodiReporter",
    "analyses_computed",
    "claim_rows",
    "error_rows",
    "study_fingerprints",
]


def claim_rows(
    reports: Sequence[pytest.TestReport],
    outcomes: Mapping[str, str],
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[ClaimRow]:
    """One row per judged claim, in a stable order (tier, then test id).

    ``outcomes`` (test id -> outcome, :mod:`codi_fixtures.plugin.outcomes`) is what the controller
    classified from every phase of every claim's reports; ``params`` (test id -> claim
    parameters) places each row in its verdict grid.
    """
    from codi_fixtures.report.summary import ClaimRow  # heavy: only once the run is over

    rows = []
    for report in reports:
        payload = json.loads(str(dict(report.user_properties)[CLAIM_PROPERTY]))
        message = payload["message"]
        if report.skipped and not hasattr(report, "wasxfail"):  # the reason, not pytest's label
            if isinstance(report.longrepr, tuple):
                message = str(report.longrepr[2]).removeprefix("Skipped: ")
        elif hasattr(report, "wasxfail"):  # a known outcome: what was declared, what was measured
            declared = str(report.wasxfail)
            head, _, numbers = declared.partition("statistic=")
            # declared from these very numbers (a declaration keeps at most their start)
            if numbers and message.startswith("statistic=" + numbers):
                declared = head.rstrip(": ") + " (the same numbers)"
            message = f"declared: {declared}; measured: {message}"
        rows.append(
            ClaimRow(
                nodeid=report.nodeid,
                outcome=outcomes.get(report.nodeid, "error"),
                tier=payload["tier"],
                label=payload["label"],
                message=message,
                stats=payload["stats"],
                params=(params or {}).get(report.nodeid, {}),
                hypothesis=payload.get("hypothesis", ""),
                analyses=tuple(payload.get("analyses", ())),
            )
        )
    return sorted(rows, key=lambda r: (r.tier, r.nodeid))


def error_rows(
    outcomes: Mapping[str, str],
    judged: set[str],
    params: Mapping[str, Mapping[str, Any]],
    messages: Mapping[str, str],
) -> list[ClaimRow]:
    """One row per claim that ended as an error without a judged result.

    A claim whose statistics crashed before ``claim.judge``, or whose tier's study failed,
    carries no numbers; it still belongs in the report, as an error with its one-line cause,
    so that the report's tallies count it and nobody reads a partial report as complete.
    """
    from codi_fixtures.report.summary import ClaimRow

    rows = []
    for nodeid, outcome in outcomes.items():
        if outcome != "error" or nodeid in judged:
            continue
        claim_params = dict(params.get(nodeid, {}))
        rows.append(
            ClaimRow(
                nodeid=nodeid,
                outcome="error",
                tier=str(claim_params.get("tier", "?")),
                label=nodeid.rpartition("::")[2],
                message=messages.get(nodeid, "crashed, not a verdict"),
                stats={},
                params=claim_params,
            )
        )
    return rows


def study_fingerprints(reports: Sequence[pytest.TestReport]) -> dict[str, str]:
    """Tier -> fingerprint of the study its claims read (recorded by the ``analysis`` fixture)."""
    out: dict[str, str] = {}
    for report in reports:
        for key, value in report.user_properties:
            if key == STUDY_PROPERTY:
                info = json.loads(str(value))
                out[info["tier"]] = info["fingerprint"]
    return out


def analyses_computed(reports: Sequence[pytest.TestReport]) -> set[str]:
    """Names of the analyses the workers' studies computed (the run's narrowed selection)."""
    names: set[str] = set()
    for report in reports:
        for key, value in report.user_properties:
            if key == STUDY_PROPERTY:
                names.update(json.loads(str(value)).get("analyses", ()))
    return names


def _html_plugin(config: pytest.Config) -> Any:
    """pytest-html's report writer (registered without a name), if active."""
    from pytest_html.basereport import BaseReport

    return next((p for p in config.pluginmanager.get_plugins() if isinstance(p, BaseReport)), None)


def _run_info(codi: CodiSession) -> dict[str, object]:
    """What actually ran: the device and dtype "auto" resolved to, and the command line."""
    import shlex
    import sys

    from codi_fixtures.model.devices import resolve_device, resolve_dtype

    model = codi.settings.model
    device = resolve_device(model.device)
    return {
        "device": str(device),
        "dtype": str(resolve_dtype(model.dtype, device)).removeprefix("torch."),
        "command": " ".join(shlex.quote(a) for a in ["pytest", *sys.argv[1:]]),
    }


class CodiReporter:
    """Collects verdicts from every worker's reports and writes the session-level report.

    Registered only in the controller (never in an xdist worker), so exactly one process
    writes the report; it writes to a staging folder and publishes only a run that judged
    at least one claim (:mod:`codi_fixtures.report.publish`).
    """

    def __init__(self, codi: CodiSession, target: Any | None, complete: bool = False) -> None:
        self.codi = codi
        self.target = target
        self.complete = complete  # the run selects every claim (-k, a file or an id do not)
        self.reports: list[pytest.TestReport] = []
        self.outcomes: dict[str, str] = {}  # nodeid -> outcome (codi_fixtures.plugin.outcomes)
        self.failures: dict[str, tuple[Any, set[str]]] = {}  # tier -> (StudyFailure, claims)
        # (cause, where) -> (the first ClaimCrash reported, the claims it ended)
        self.crashes: dict[tuple[str, str], tuple[Any, list[str]]] = {}
        self.params: dict[str, dict[str, Any]] = {}  # nodeid -> claim parameters
        self.error_messages: dict[str, str] = {}  # nodeid -> why it ended without a verdict
        self.summary_html = ""
        self.published = False

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Classify every claim report; keep call-phase reports that carry a judged claim."""
        from codi_fixtures.plugin.console import PARAMS_PROPERTY
        from codi_fixtures.plugin.outcomes import (
            CRASH_PROPERTY,
            STUDY_ERROR_PROPERTY,
            ClaimCrash,
            StudyFailure,
            outcome_of,
        )

        props = dict(report.user_properties)
        is_claim = PARAMS_PROPERTY in props
        if is_claim:
            self.params[report.nodeid] = json.loads(str(props[PARAMS_PROPERTY]))
        if CRASH_PROPERTY in props:
            crash = ClaimCrash.from_json(str(props[CRASH_PROPERTY]))
            # one paragraph per cause and place, whichever xdist worker logged it
            first = self.crashes.setdefault((crash.cause, crash.where), (crash, []))
            first[1].append(report.nodeid)
            self.error_messages[report.nodeid] = crash.short()
        if STUDY_ERROR_PROPERTY in props:
            failure = StudyFailure.from_json(str(props[STUDY_ERROR_PROPERTY]))
            self.failures.setdefault(failure.tier, (failure, set()))[1].add(report.nodeid)
            self.error_messages[report.nodeid] = failure.short()
            is_claim = True
        if not is_claim:
            return
        outcome = outcome_of(report)
        if outcome is not None and (outcome == "error" or report.when != "teardown"):
            self.outcomes[report.nodeid] = outcome
        if outcome == "error" and report.nodeid not in self.error_messages:
            lines = str(report.longreprtext or "").strip().splitlines()
            self.error_messages[report.nodeid] = (
                f"error in {report.when}: {lines[-1] if lines else 'no message'}"
            )
        if report.when == "call" and CLAIM_PROPERTY in props:
            self.reports.append(report)

    def judged(self) -> bool:
        """True when at least one claim reached a verdict (anything but an error)."""
        return any(o != "error" for o in self.outcomes.values())

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Write figures and summary_statistics.json (staged); prepare the HTML summary block."""
        if session.shouldfail or session.shouldstop:  # -x / --maxfail: claims left unrun
            self.complete = False
            if self.target is not None:
                self.target = self.target.partial()
        if self.target is None or not self.reports or not self.judged():
            return
        from codi_fixtures.report.build import build_summary, not_computed

        analyses = self._analyses()
        run_info = _run_info(self.codi)
        run_info["complete"] = self.complete  # False: declare no known outcomes from it
        run_info["not_computed"] = not_computed(
            self.codi.settings, analyses, self.codi.registered_analyses()
        )
        self.summary_html = build_summary(
            self.codi.settings,
            study_fingerprints(self.reports),
            self.codi.problems,
            self._rows(),
            self.target.staging,
            time.monotonic() - self.codi.started,
            analyses,
            run_info=run_info,
            figure_formats=("png", "pdf") if self.codi.config.getoption("codi_pdf") else ("png",),
            loaded=self.codi.loaded_analyses(),
        )

    def _rows(self) -> list[ClaimRow]:
        """Every claim's row: the judged ones and those that ended in an error."""
        judged = claim_rows(self.reports, self.outcomes, self.params)
        errors = error_rows(
            self.outcomes, {r.nodeid for r in self.reports}, self.params, self.error_messages
        )
        return sorted([*judged, *errors], key=lambda r: (r.tier, r.nodeid))

    def _analyses(self) -> tuple[Any, ...]:
        """The registered analyses the workers computed (every one, if none said)."""
        registered = self.codi.registered_analyses()
        computed = analyses_computed(self.reports)
        return tuple(a for a in registered if a.name in computed) if computed else registered

    def pytest_html_report_title(self, report: Any) -> None:
        """The page title names the model and the tier, not the file."""
        settings = self.codi.settings
        report.title = f"CODI findings: {settings.model_label} ({', '.join(self.codi.tiers())})"

    def pytest_html_results_summary(
        self, prefix: list[str], summary: list[str], postfix: list[str], session: pytest.Session
    ) -> None:
        """Put the verdict table, figures and run metadata at the top of report.html."""
        if self.summary_html:
            prefix.append(self.summary_html)

    def publish(self, session: pytest.Session) -> None:
        """After pytest-html wrote the staged report: publish it, or leave the old one."""
        if self.target is None:  # --no-codi-report
            return
        if self.judged() and session.exitstatus not in (
            pytest.ExitCode.INTERRUPTED,
            pytest.ExitCode.USAGE_ERROR,
            pytest.ExitCode.INTERNAL_ERROR,
        ):
            self.target.publish()
            self.published = True
            html_plugin = _html_plugin(self.codi.config)
            if html_plugin is not None and hasattr(html_plugin, "_report_path"):
                # pytest-html prints the path it wrote; it wrote to the staging folder.
                html_plugin._report_path = self.target.final / "report.html"
        else:
            self.target.discard()
            html_plugin = _html_plugin(self.codi.config)
            if html_plugin is not None:  # it would announce the discarded staging file
                self.codi.config.pluginmanager.unregister(html_plugin)

    def _notes(self) -> list[str]:
        """Lines that qualify the verdicts (known outcomes declared under other settings)."""
        from codi_fixtures.errors import CodiError
        from codi_fixtures.plugin.known_outcomes import (
            known_for_run,
            known_outcomes_path,
            matcher,
            not_applied_reason,
            verdict_settings,
        )
        from codi_fixtures.study.data import problem_set_fingerprint

        settings = self.codi.settings
        path = known_outcomes_path(self.codi.config)
        run_settings = verdict_settings(settings.describe())
        try:
            reason = not_applied_reason(path, settings.model_label, run_settings)
            if reason:
                return [reason, ""]
            tiers = self._tiers()
            fingerprints = {t: problem_set_fingerprint(self.codi.problems(t)) for t in tiers}
            known = known_for_run(path, settings.model_label, fingerprints, run_settings)
        except CodiError:  # a malformed file was a usage error at collection already
            return []
        patterns = {p: matcher(p) for entries in known.values() for p in entries}
        notes = []
        if self.complete:
            unmatched = [
                p for p, m in patterns.items() if not any(m.fullmatch(n) for n in self.outcomes)
            ]
            if unmatched:
                notes.append(
                    f"known outcomes: {len(unmatched)} declaration(s) matched no claim of this "
                    f"run (first: {unmatched[0]}); re-declare them (README, Development)"
                )
        weakened = [
            n
            for n, o in self.outcomes.items()
            if o == "inconclusive" and any(m.fullmatch(n) for m in patterns.values())
        ]
        if weakened:
            notes.append(
                f"known outcomes: {len(weakened)} claim(s) declared refuted ended inconclusive "
                f"(first: {weakened[0]}): the declaration no longer holds as measured"
            )
        return [*notes, ""] if notes else []

    def _tiers(self) -> list[str]:
        """The tiers whose claims this run reported."""
        tiers = {str(p.get("tier")) for p in self.params.values()}
        return [t for t in self.codi.tiers() if t in tiers]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """The findings in the console: verdict grids, counts, paths; study failures once."""
        from codi_fixtures.plugin.console import summary_lines

        lines = summary_lines(
            self.outcomes,
            self.params,
            self.failures,
            crashes=dict(self.crashes.values()),
            model=self.codi.settings.model_label,
            report_dir=self.target.final if self.target and self.published else None,
            writes_report=self.target is not None,
            notes=self._notes(),
        )
        if lines:
            terminalreporter.write_sep("=", "CODI findings")
            for line in lines:
                terminalreporter.write_line(line)
