"""The ``codi`` pytest plugin: options, markers, tier parametrisation, fixtures, report hooks.

Claims (``experiments/test_*.py``) use the fixtures ``analysis`` (a
:class:`~codi_fixtures.analysis.StudyAnalysis` for the test's tier) and
``claim`` (a :class:`~codi_fixtures.claims.Claim` that judges a result). Any
test that takes a ``tier`` argument runs once per tier, marked ``quick`` or
``full``. Expensive objects (model, problems, study) live in one session object,
built lazily and shared read-only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from codi_fixtures.config import (
    BUNDLED_CHECKPOINT,
    TIERS,
    ModelConfig,
    RunConfig,
    Settings,
    parse_kinds,
    parse_layers,
    tier_of_markexpr,
)
from codi_fixtures.errors import CodiError, ConfigError

log = logging.getLogger(__name__)

SESSION_KEY = pytest.StashKey["CodiSession"]()
CLAIM_PROPERTY = "codi_claim"
STUDY_PROPERTY = "codi_study"


# --- options ------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``codi`` option group and ini keys."""
    group = parser.getgroup("codi", "CODI interpretability study")
    group.addoption(
        "--codi-ckpt", default=None, help="CODI checkpoint or adapter directory (default: bundled)"
    )
    group.addoption(
        "--codi-model",
        default=None,
        help="a shipped model instead of --codi-ckpt: bundled, planted or smol",
    )
    group.addoption(
        "--codi-base", default=None, help="base model dir or cached HF name; a .gguf for an adapter"
    )
    group.addoption(
        "--codi-allow-download", action="store_true", help="allow fetching the base from the hub"
    )
    group.addoption("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    group.addoption("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    group.addoption(
        "--problems", default=None, help="problem file (GSM8K .jsonl or research .json)"
    )
    group.addoption("--kinds", default="zero,mean,noise,resample", help="ablation kinds to run")
    group.addoption("--importance-kind", default="mean", help="ablation kind used as importance")
    group.addoption(
        "--ablation-site", default="embedding", help="'embedding' or 'block<L>' (block output)"
    )
    group.addoption(
        "--layers", default=None, help="early,middle,late layers (default n/4,n/2,7n/8)"
    )
    group.addoption("--alpha", type=float, default=0.05, help="significance level (after Holm)")
    group.addoption(
        "--min-effect-logp",
        type=float,
        default=0.1,
        help="SESOI for a mean delta log p(gold), nats (default 0.1)",
    )
    group.addoption(
        "--min-effect-acc",
        type=float,
        default=0.05,
        help="SESOI for an accuracy drop, fraction of problems (default 0.05)",
    )
    group.addoption(
        "--min-effect-r", type=float, default=0.1, help="SESOI for a correlation (default 0.1)"
    )
    group.addoption("--codi-seed", type=int, default=0, help="seed for sampling and ablations")
    group.addoption("--quick-n", type=int, default=TIERS["quick"], help="problems in quick tier")
    group.addoption("--full-n", type=int, default=TIERS["full"], help="problems in full tier")
    group.addoption("--batch-rows", type=int, default=512, help="sequences per forward pass")
    group.addoption(
        "--max-batch-rows", type=int, default=None, help="simulated memory budget (rows)"
    )
    group.addoption("--codi-cache", default=None, help="cache dir (default <rootdir>/.codi_cache)")
    group.addoption("--report-dir", default=None, help="report dir (default reports/<tier>)")
    group.addoption(
        "--no-codi-report", action="store_true", help="do not write the HTML/JSON report"
    )
    parser.addini(
        "codi_known_outcomes",
        "JSON file of known (strict xfail) outcomes per model, relative to rootdir",
        default="experiments/known_outcomes.json",
    )


def _settings(config: pytest.Config) -> Settings:
    opt = config.getoption
    root = Path(config.rootpath)
    ckpt = opt("codi_ckpt")
    if opt("codi_model") is not None:
        from codi_fixtures.models import model_dir

        if ckpt is not None:
            raise ConfigError("give --codi-model or --codi-ckpt, not both")
        ckpt = model_dir(opt("codi_model"))
    problems = opt("problems")
    tier = tier_of_markexpr(config.option.markexpr or "")
    report = opt("report_dir")
    settings = Settings(
        model=ModelConfig(
            ckpt=Path(ckpt) if ckpt else None,
            base=opt("codi_base"),
            device=opt("device"),
            dtype=opt("dtype"),
            allow_download=opt("codi_allow_download"),
        ),
        problems=Path(problems) if problems else None,
        run=RunConfig(
            kinds=parse_kinds(opt("kinds")),
            site=opt("ablation_site"),
            seed=opt("codi_seed"),
            batch_rows=opt("batch_rows"),
            max_rows=opt("max_batch_rows"),
        ),
        importance_kind=opt("importance_kind"),
        layers=parse_layers(opt("layers")),
        alpha=opt("alpha"),
        min_effect_logp=opt("min_effect_logp"),
        min_effect_acc=opt("min_effect_acc"),
        min_effect_r=opt("min_effect_r"),
        tiers={"quick": opt("quick_n"), "full": opt("full_n")},
        cache_dir=Path(opt("codi_cache")) if opt("codi_cache") else root / ".codi_cache",
        report_dir=Path(report) if report else root / "reports" / tier,
    )
    if not report and settings.model_label != "bundled":  # never over the bundled report
        folder = f"{settings.model_label}-{tier}"
        settings = dataclasses.replace(settings, report_dir=root / "reports" / folder)
    return settings


def _runs_claims(config: pytest.Config) -> bool:
    """True when this run selects research claims (a tier mark, experiments/ or --report-dir)."""
    if config.getoption("report_dir"):
        return True
    if (config.option.markexpr or "").strip() in TIERS:
        return True
    return any("experiments" in Path(str(a).split("::")[0]).resolve().parts for a in config.args)


def _writes_report(config: pytest.Config) -> bool:
    return (
        _runs_claims(config)
        and not config.getoption("no_codi_report")
        and not config.option.collectonly
    )


def _selects_every_claim(config: pytest.Config) -> bool:
    """True unless the run narrows the claims (-k, --deselect, a file or a test id)."""
    if config.option.keyword or getattr(config.option, "deselect", None):
        return False
    return all(Path(str(a)).is_dir() and "::" not in str(a) for a in config.args)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Markers, the session object, input validation, and the staged HTML report location."""
    config.addinivalue_line("markers", "quick: the ten-problem smoke tier of a research claim")
    config.addinivalue_line("markers", "full: the 100-problem study tier of a research claim")
    try:
        settings = _settings(config)
    except CodiError as err:
        raise pytest.UsageError(str(err)) from None
    session = CodiSession(config, settings)
    config.stash[SESSION_KEY] = session
    if _runs_claims(config):
        session.validate_inputs()  # every bad option is a usage error before anything runs
    if _writes_report(config) and not hasattr(config, "workerinput"):
        from codi_fixtures.publish import ReportTarget

        target = ReportTarget.for_run(
            settings.report_dir,
            explicit=bool(config.getoption("report_dir")),
            complete=_selects_every_claim(config),
        )
        if not config.getoption("htmlpath", None):
            # Must run before pytest-html's own pytest_configure reads the option.
            config.option.htmlpath = str(target.staging / "report.html")
            config.option.self_contained_html = True
        config.pluginmanager.register(CodiReporter(session, target), "codi-reporter")


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say which model and problems a run uses."""
    settings = config.stash[SESSION_KEY].settings
    source = settings.problems or "bundled held-out set"
    return [f"codi: model={settings.model_label} problems={source} kinds={settings.run.kinds}"]


# --- tiers and known outcomes ------------------------------------------------------------
def _collection_shape(settings: Settings) -> tuple[int, int | None]:
    """(thoughts, layers) read cheaply from codi.json / config.json, for test ids."""
    ckpt = Path(settings.model.ckpt or BUNDLED_CHECKPOINT)
    n_thoughts = 6
    spec = ckpt / "codi.json"
    if spec.is_file():
        try:
            n_thoughts = int(json.loads(spec.read_text()).get("n_thoughts", 6))
        except (ValueError, AttributeError):
            pass  # reported properly when the model loads
    from codi_fixtures.models import n_layers as depth

    return n_thoughts, depth(settings.model)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise claim arguments: tier, thought, kind, role (layer), difficulty."""
    names = metafunc.fixturenames
    if "tier" in names:
        metafunc.parametrize(
            "tier",
            [pytest.param(t, marks=getattr(pytest.mark, t), id=t) for t in TIERS],
            scope="session",
        )
    if "analysis" not in names or not {"thought", "kind", "role", "difficulty"} & set(names):
        return  # only claims get these; unit tests keep their own parametrisation
    from codi_fixtures.architecture import layer_roles
    from codi_fixtures.problems import DIFFICULTY_BINS

    settings = metafunc.config.stash[SESSION_KEY].settings
    n_thoughts, n_layers = _collection_shape(settings)
    if "thought" in names:
        metafunc.parametrize("thought", range(n_thoughts), ids=[f"t{t}" for t in range(n_thoughts)])
    if "kind" in names:
        metafunc.parametrize("kind", settings.run.kinds)
    if "role" in names:
        roles = ["early", "middle", "late"]
        ids = roles
        if n_layers is not None:
            try:
                mapping = layer_roles(n_layers, settings.layers).as_dict()
                ids = [f"{r}-L{mapping[r]}" for r in roles]
            except ValueError as err:
                raise pytest.UsageError(f"--layers: {err}") from None
        metafunc.parametrize("role", roles, ids=ids)
    if "difficulty" in names:
        metafunc.parametrize("difficulty", DIFFICULTY_BINS)


def _known_outcomes(config: pytest.Config, session: CodiSession) -> dict[str, dict[str, str]]:
    """Tier -> {pattern: reason} declared for this model and these tier samples."""
    from codi_fixtures.data import problem_set_fingerprint
    from codi_fixtures.known_outcomes import known_for_run

    base = config.inipath.parent if config.inipath else Path(config.rootpath)
    path = base / str(config.getini("codi_known_outcomes"))
    if not path.exists():
        return {}
    fingerprints = {t: problem_set_fingerprint(session.problems(t)) for t in session.tiers()}
    try:
        return known_for_run(path, session.settings.model_label, fingerprints)
    except CodiError as err:
        raise pytest.UsageError(str(err)) from None


def _role_labels(settings: Settings) -> dict[str, str]:
    """``early`` -> ``early-L1`` where the depth is known cheaply."""
    from codi_fixtures.architecture import layer_roles

    _, n_layers = _collection_shape(settings)
    if n_layers is None:
        return {}
    return {
        role: f"{role}-L{layer}"
        for role, layer in layer_roles(n_layers, settings.layers).as_dict().items()
    }


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark known outcomes as strict xfails that match only a refuted claim."""
    from codi_fixtures.known_outcomes import matcher
    from codi_fixtures.outcomes import ClaimNotSupported

    claims = [i for i in items if "analysis" in getattr(i, "fixturenames", ())]
    if not claims:
        return
    session = config.stash[SESSION_KEY]
    session.validate_inputs()
    known = {
        tier: {matcher(pattern): reason for pattern, reason in entries.items()}
        for tier, entries in _known_outcomes(config, session).items()
    }
    from codi_fixtures.console import PARAMS_PROPERTY

    roles = _role_labels(session.settings)
    for item in claims:
        callspec = getattr(item, "callspec", None)
        params = dict(callspec.params) if callspec is not None else {}
        tier = params.get("tier")
        if "role" in params:
            params["role"] = roles.get(params["role"], params["role"])
        if "thought" in params:
            params["thought"] = f"t{params['thought']}"
        item.user_properties.append((PARAMS_PROPERTY, json.dumps(params, default=str)))
        for pattern, reason in known.get(str(tier), {}).items():
            if pattern.fullmatch(item.nodeid):
                item.add_marker(
                    pytest.mark.xfail(
                        reason=f"known outcome: {reason}", strict=True, raises=ClaimNotSupported
                    )
                )
                break


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A claim whose study is unavailable shows one line, not the fixture's traceback."""
    from codi_fixtures.outcomes import StudyUnavailable

    report = yield
    if call.excinfo is not None and isinstance(call.excinfo.value, StudyUnavailable):
        report.longrepr = str(call.excinfo.value)
    return report


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> Generator[None, None, None]:
    """Innermost wrapper: once every plain hook (pytest-html's writer too) ran, publish."""
    result = yield
    reporter = session.config.pluginmanager.get_plugin("codi-reporter")
    if reporter is not None:
        reporter.publish(session)
    return result


# --- the session object -----------------------------------------------------------------
@dataclass
class CodiSession:
    """Lazily built, shared, read-only study objects for one pytest process."""

    config: pytest.Config
    settings: Settings
    started: float = field(default_factory=time.monotonic)
    _model: Any = None
    _pool: Any = None
    _studies: dict[str, Any] = field(default_factory=dict)
    _analyses: dict[str, Any] = field(default_factory=dict)
    _failures: dict[str, Any] = field(default_factory=dict)
    _validated: bool = False

    def tiers(self) -> list[str]:
        """The tiers this run selects (both when the mark expression names neither)."""
        selected = tier_of_markexpr(self.config.option.markexpr or "")
        return [selected] if selected in TIERS else list(TIERS)

    def validate_inputs(self) -> None:
        """Cheap checks of every option before any test runs; problems become usage errors.

        The checkpoint is checked (readable weights) before the problem set is considered.
        """
        from codi_fixtures.architecture import layer_roles
        from codi_fixtures.devices import resolve_device, resolve_dtype
        from codi_fixtures.interventions import parse_site
        from codi_fixtures.models import probe_model

        if self._validated:
            return
        settings = self.settings
        try:
            resolve_dtype(settings.model.dtype, resolve_device(self._device()))
            probe_model(settings.model)
            _, n_layers = _collection_shape(settings)
            if n_layers is not None:
                try:
                    layer_roles(n_layers, settings.layers)
                except ValueError as err:
                    raise CodiError(f"--layers: {err}") from None
                try:
                    parse_site(settings.run.site, n_layers)
                except ValueError as err:
                    raise CodiError(f"--ablation-site: {err}") from None
            for tier in self.tiers():  # every selected tier can be sampled from the source
                self.problems(tier)
        except CodiError as err:
            raise pytest.UsageError(str(err)) from None
        self._validated = True

    def _device(self) -> str:
        device = self.settings.model.device
        worker = os.environ.get("PYTEST_XDIST_WORKER", "")
        if device == "auto" and worker.startswith("gw"):
            import torch

            if torch.cuda.device_count() > 1:  # one GPU per xdist worker
                return f"cuda:{int(worker[2:]) % torch.cuda.device_count()}"
        return device

    def model(self) -> Any:
        """The CODI model (loaded once)."""
        if self._model is None:
            from dataclasses import replace

            from codi_fixtures.models import load_model

            self._model = load_model(replace(self.settings.model, device=self._device()))
        return self._model

    def problem_pool(self) -> list[Any]:
        """Every problem of the configured source."""
        if self._pool is None:
            from codi_fixtures.data import load_problems

            path = self.settings.problems
            if path is None:
                ckpt = Path(self.settings.model.ckpt or BUNDLED_CHECKPOINT)
                path = ckpt / "eval.jsonl"
                if not path.exists():
                    raise CodiError(
                        f"no --problems given and {ckpt} ships no eval.jsonl; pass --problems "
                        "PATH (e.g. GSM8K test.jsonl) for this checkpoint"
                    )
            self._pool = load_problems(path)
        return self._pool

    def problems(self, tier: str) -> list[Any]:
        """The tier's stratified sample (a :class:`CodiError` names the problem and the fix)."""
        from codi_fixtures.data import stratified_sample

        return stratified_sample(
            self.problem_pool(), self.settings.tiers[tier], seed=self.settings.run.seed
        )

    def study(self, tier: str) -> Any:
        """Cached study results for the tier (computed once across processes)."""
        if tier not in self._studies:
            from codi_fixtures.runs import compute_study

            self._studies[tier] = compute_study(
                self.model(), self.problems(tier), self.settings.run, self.settings.cache_dir
            )
        return self._studies[tier]

    def analysis(self, tier: str) -> Any:
        """Statistics over the tier's study; if it cannot be computed, :class:`StudyFailure`.

        The failure is recorded once (full traceback in a log file) and every later call
        returns it at once, so a broken study costs one attempt, not one per claim.
        """
        if tier not in self._analyses and tier not in self._failures:
            from codi_fixtures.analysis import StudyAnalysis

            try:
                self._analyses[tier] = StudyAnalysis.from_settings(self.study(tier), self.settings)
            except Exception as err:
                self._failures[tier] = self._record_failure(tier, err)
        return self._analyses[tier] if tier in self._analyses else self._failures[tier]

    def _record_failure(self, tier: str, err: Exception) -> Any:
        import traceback

        from codi_fixtures.atomic import atomic_write_text
        from codi_fixtures.outcomes import StudyFailure

        frames = traceback.extract_tb(err.__traceback__)
        own = [f for f in frames if "codi_fixtures" in f.filename] or frames
        where = f"{own[-1].filename}:{own[-1].lineno} in {own[-1].name}" if own else "?"
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        log_path = self.settings.cache_dir / "errors" / f"study-{tier}-{worker}.log"
        atomic_write_text(log_path, "".join(traceback.format_exception(err)))
        message = " ".join(str(err).split())
        cause = message if isinstance(err, CodiError) else f"{type(err).__name__}: {message}"
        return StudyFailure(tier, cause[:300], where, str(log_path))


# --- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def codi_session(pytestconfig: pytest.Config) -> CodiSession:
    """The shared session object (settings, model, problems, studies). Do not mutate."""
    return pytestconfig.stash[SESSION_KEY]


@pytest.fixture(scope="session")
def codi_model(codi_session: CodiSession) -> Any:
    """The loaded CODI model, shared read-only by every test."""
    return codi_session.model()


@pytest.fixture
def analysis(codi_session: CodiSession, tier: str, request: pytest.FixtureRequest) -> Any:
    """Statistics for this test's tier (read-only); a study that failed is an ERROR here."""
    from codi_fixtures.outcomes import STUDY_ERROR_PROPERTY, StudyFailure, StudyUnavailable

    result = codi_session.analysis(tier)
    if isinstance(result, StudyFailure):
        request.node.user_properties.append((STUDY_ERROR_PROPERTY, result.to_json()))
        raise StudyUnavailable(result.short())
    fingerprint = result.results.meta["fingerprint"]
    request.node.user_properties.append(
        (STUDY_PROPERTY, json.dumps({"tier": tier, "fingerprint": fingerprint}))
    )
    return result


@pytest.fixture
def claim(analysis: Any, tier: str, request: pytest.FixtureRequest, extras: list[Any]) -> Any:
    """Judge a claim: pass / fail / skip, with its figure and stats attached to the report."""
    from codi_fixtures.claims import Claim

    return Claim(analysis, tier, request.node, extras)


# --- report (controller only) ------------------------------------------------------------
def _html_plugin(config: pytest.Config) -> Any:
    """pytest-html's report writer (registered without a name), if active."""
    from pytest_html.basereport import BaseReport

    return next((p for p in config.pluginmanager.get_plugins() if isinstance(p, BaseReport)), None)


class CodiReporter:
    """Collects verdicts from every worker's reports and writes the session-level report.

    Registered only in the controller (never in an xdist worker), so exactly one process
    writes the report; it writes to a staging folder and publishes only a run that judged
    at least one claim (:mod:`codi_fixtures.publish`).
    """

    def __init__(self, codi: CodiSession, target: Any) -> None:
        self.codi = codi
        self.target = target
        self.reports: list[pytest.TestReport] = []
        self.outcomes: dict[str, str] = {}  # nodeid -> outcome (codi_fixtures.outcomes)
        self.failures: dict[str, Any] = {}  # tier -> StudyFailure
        self.params: dict[str, dict[str, Any]] = {}  # nodeid -> claim parameters
        self.summary_html = ""
        self.published = False

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Classify every claim report; keep call-phase reports that carry a judged claim."""
        from codi_fixtures.console import PARAMS_PROPERTY
        from codi_fixtures.outcomes import STUDY_ERROR_PROPERTY, StudyFailure, outcome_of

        props = dict(report.user_properties)
        is_claim = PARAMS_PROPERTY in props
        if is_claim:
            self.params[report.nodeid] = json.loads(str(props[PARAMS_PROPERTY]))
        if STUDY_ERROR_PROPERTY in props:
            failure = StudyFailure.from_json(str(props[STUDY_ERROR_PROPERTY]))
            self.failures.setdefault(failure.tier, failure)
            is_claim = True
        if not is_claim:
            return
        outcome = outcome_of(report)
        if outcome is not None and (outcome == "error" or report.when != "teardown"):
            self.outcomes[report.nodeid] = outcome
        if report.when == "call" and CLAIM_PROPERTY in props:
            self.reports.append(report)

    def judged(self) -> bool:
        """True when at least one claim reached a verdict (anything but an error)."""
        return any(o != "error" for o in self.outcomes.values())

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Write figures and summary_statistics.json (staged); prepare the HTML summary block."""
        if not self.reports or not self.judged():
            return
        from codi_fixtures.summary import build_summary

        self.summary_html = build_summary(
            self.codi, self.reports, self.outcomes, self.target.staging
        )

    def pytest_html_results_summary(
        self, prefix: list[str], summary: list[str], postfix: list[str], session: pytest.Session
    ) -> None:
        """Put the verdict table, figures and run metadata at the top of report.html."""
        if self.summary_html:
            prefix.append(self.summary_html)

    def publish(self, session: pytest.Session) -> None:
        """After pytest-html wrote the staged report: publish it, or leave the old one."""
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

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """The findings in the console: verdict grids, counts, paths; study failures once."""
        from codi_fixtures.console import summary_lines

        lines = summary_lines(
            self.outcomes,
            self.params,
            self.failures,
            model=self.codi.settings.model_label,
            report_dir=self.target.final if self.published else None,
        )
        if lines:
            terminalreporter.write_sep("=", "CODI findings")
            for line in lines:
                terminalreporter.write_line(line)
