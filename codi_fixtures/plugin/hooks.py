"""The plugin's hooks: options, markers, tier parametrisation, known outcomes, the report.

Any test that takes a ``tier`` argument runs once per tier, marked ``quick`` or ``full``.
Expensive objects (model, problems, study) live in one session object
(:mod:`codi_fixtures.plugin.session`), built lazily and shared read-only.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import sys
from collections.abc import Generator
from pathlib import Path

import pytest

from codi_fixtures.config import (
    TIERS,
    ModelConfig,
    RunConfig,
    Settings,
    parse_batch_rows,
    parse_kinds,
    parse_layers,
    parse_subset_kinds,
    tier_of_markexpr,
)
from codi_fixtures.errors import CodiError, ConfigError
from codi_fixtures.plugin import gcpolicy
from codi_fixtures.plugin.properties import ANALYSES_MARK, marked_analyses
from codi_fixtures.plugin.session import SESSION_KEY, CodiSession, collection_shape

__all__ = [
    "pytest_addhooks",
    "pytest_addoption",
    "pytest_collection_finish",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_generate_tests",
    "pytest_report_header",
    "pytest_report_teststatus",
    "pytest_runtest_makereport",
    "pytest_sessionfinish",
    "pytest_unconfigure",
]

log = logging.getLogger(__name__)


# --- options ------------------------------------------------------------------------------
def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    """Add the plugin's own hooks (``pytest_codi_analyses``)."""
    from codi_fixtures.plugin import newhooks

    pluginmanager.add_hookspecs(newhooks)


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
        "--subset-kinds",
        default="mean",
        help="RQ5: kinds whose every subset of thoughts is ablated (among --kinds), or none",
    )
    group.addoption(
        "--knockout-heads",
        action="store_true",
        help="RQ6: also knock out each (layer, head, thought) edge alone",
    )
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
    group.addoption(
        "--batch-rows",
        default="auto",
        help="sequences per forward pass, or auto: what free memory allows (default)",
    )
    group.addoption(
        "--max-batch-rows", type=int, default=None, help="simulated memory budget (rows)"
    )
    group.addoption("--codi-cache", default=None, help="cache dir (default <rootdir>/.codi_cache)")
    group.addoption("--report-dir", default=None, help="report dir (default reports/<tier>)")
    group.addoption(
        "--no-codi-report", action="store_true", help="do not write the HTML/JSON report"
    )
    group.addoption(
        "--codi-pdf", action="store_true", help="also write every figure as PDF (PNG always)"
    )
    group.addoption(
        "--max-step",
        type=int,
        default=3,
        help="RQ3, RQ4 and routing claims for reasoning steps 1..N (default 3)",
    )
    group.addoption(
        "--rq3-all-layers",
        action="store_true",
        help="RQ3 probes at every layer (default: input embedding and the three role layers)",
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
    if opt("max_batch_rows") is not None and opt("max_batch_rows") < 1:
        raise ConfigError(  # 0 is RunConfig's "not even one row fits", never a usable budget
            f"--max-batch-rows must be at least 1 (a batch is split down to one row, never "
            f"below), got {opt('max_batch_rows')}; or leave it out"
        )
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
            batch_rows=parse_batch_rows(opt("batch_rows")),
            max_rows=opt("max_batch_rows"),
        ),
        importance_kind=opt("importance_kind"),
        subset_kinds=parse_subset_kinds(opt("subset_kinds")),
        knockout_heads=opt("knockout_heads"),
        max_step=opt("max_step"),
        rq3_all_layers=bool(opt("rq3_all_layers")),
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
    gcpolicy.session_started(config)
    config.addinivalue_line("markers", "quick: the ten-problem smoke tier of a research claim")
    config.addinivalue_line("markers", "full: the 100-problem study tier of a research claim")
    config.addinivalue_line(
        "markers",
        f"{ANALYSES_MARK}(*names): the analyses a claim reads (a run computes only those of "
        "the claims it selects; a claim without the mark reads every registered analysis)",
    )
    try:
        settings = _settings(config)
    except CodiError as err:
        raise pytest.UsageError(str(err)) from None
    session = CodiSession(config, settings)
    config.stash[SESSION_KEY] = session
    if _runs_claims(config):
        session.validate_inputs()  # every bad option is a usage error before anything runs
        gcpolicy.long_lived_ready()  # torch, transformers: imported by the validation
    if _runs_claims(config) and not hasattr(config, "workerinput"):
        target = None  # --no-codi-report: the findings are printed, nothing is written
        if _writes_report(config):
            from codi_fixtures.report.publish import ReportTarget

            target = ReportTarget.for_run(
                settings.report_dir,
                explicit=bool(config.getoption("report_dir")),
                complete=_selects_every_claim(config),
            )
            try:  # pytest-html would fail on it with an INTERNALERROR traceback
                target.staging.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise pytest.UsageError(
                    f"cannot write the report to {target.final}: {err.strerror or err} "
                    f"({err.filename}); pass --report-dir DIR in a writable place, or "
                    "--no-codi-report"
                ) from None
            if not config.getoption("htmlpath", None):
                # Must run before pytest-html's own pytest_configure reads the option.
                config.option.htmlpath = str(target.staging / "report.html")
                config.option.self_contained_html = True
        from codi_fixtures.plugin.reporter import CodiReporter

        reporter = CodiReporter(session, target, complete=_selects_every_claim(config))
        config.pluginmanager.register(reporter, "codi-reporter")


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say which model and problems a run uses."""
    settings = config.stash[SESSION_KEY].settings
    source = settings.problems_label
    return [f"codi: model={settings.model_label} problems={source} kinds={settings.run.kinds}"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise claim arguments: tier, thought, kind, role, difficulty, pair, layer, edge_layer.

    ``pair``: two thoughts (ids ``t0-t1``); ``layer``: every layer (``L0``, ...); ``edge_layer``:
    every layer and all layers at once (``L0``, ..., ``Lall``).
    """
    names = metafunc.fixturenames
    if "tier" in names:
        metafunc.parametrize(
            "tier",
            [pytest.param(t, marks=getattr(pytest.mark, t), id=t) for t in TIERS],
            scope="session",
        )
    claim_args = {"thought", "kind", "role", "difficulty", "step", "pair", "layer", "edge_layer"}
    if "analysis" not in names or not claim_args & set(names):
        return  # only claims get these; unit tests keep their own parametrisation
    from codi_fixtures.model.architecture import layer_roles
    from codi_fixtures.study.problems import DIFFICULTY_BINS

    settings = metafunc.config.stash[SESSION_KEY].settings
    n_thoughts, n_layers = collection_shape(settings)
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
    if "step" in names:
        steps = range(1, settings.max_step + 1)
        metafunc.parametrize("step", steps, ids=[f"s{k}" for k in steps])
    if "pair" in names:
        pairs = list(itertools.combinations(range(n_thoughts), 2))
        metafunc.parametrize("pair", pairs, ids=[f"t{i}-t{j}" for i, j in pairs])
    if {"layer", "edge_layer"} & set(names) and n_layers is None:
        raise pytest.UsageError("claims over every layer need the model's depth at collection")
    if "layer" in names:
        assert n_layers is not None
        metafunc.parametrize("layer", range(n_layers), ids=[f"L{x}" for x in range(n_layers)])
    if "edge_layer" in names:
        assert n_layers is not None
        values: list[int | str] = [*range(n_layers), "all"]
        metafunc.parametrize("edge_layer", values, ids=[f"L{x}" for x in values])


def _known_outcomes(config: pytest.Config, session: CodiSession) -> dict[str, dict[str, str]]:
    """Tier -> {pattern: reason} declared for this model and these tier samples."""
    from codi_fixtures.plugin.known_outcomes import (
        known_for_run,
        known_outcomes_path,
        verdict_settings,
    )
    from codi_fixtures.study.data import problem_set_fingerprint

    path = known_outcomes_path(config)
    if not path.exists():
        return {}
    fingerprints = {t: problem_set_fingerprint(session.problems(t)) for t in session.tiers()}
    settings = verdict_settings(session.settings.describe())
    try:
        return known_for_run(path, session.settings.model_label, fingerprints, settings)
    except CodiError as err:
        raise pytest.UsageError(str(err)) from None


def _role_labels(settings: Settings) -> dict[str, str]:
    """``early`` -> ``early-L1`` where the depth is known cheaply."""
    from codi_fixtures.model.architecture import layer_roles

    _, n_layers = collection_shape(settings)
    if n_layers is None:
        return {}
    return {
        role: f"{role}-L{layer}"
        for role, layer in layer_roles(n_layers, settings.layers).as_dict().items()
    }


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark known outcomes as strict xfails that match only a refuted claim."""
    from codi_fixtures.plugin.known_outcomes import matcher
    from codi_fixtures.plugin.outcomes import ClaimNotSupported

    claims = [i for i in items if "analysis" in getattr(i, "fixturenames", ())]
    if not claims:
        return
    session = config.stash[SESSION_KEY]
    session.validate_inputs()
    known = {
        tier: {matcher(pattern): reason for pattern, reason in entries.items()}
        for tier, entries in _known_outcomes(config, session).items()
    }
    from codi_fixtures.plugin.console import PARAMS_PROPERTY

    roles = _role_labels(session.settings)
    for item in claims:
        callspec = getattr(item, "callspec", None)
        params = dict(callspec.params) if callspec is not None else {}
        tier = params.get("tier")
        if "role" in params:
            params["role"] = roles.get(params["role"], params["role"])
        if "thought" in params:
            params["thought"] = f"t{params['thought']}"
        if "pair" in params:
            params["pair"] = "-".join(f"t{t}" for t in params["pair"])
        for name in ("layer", "edge_layer"):
            if name in params:
                params[name] = f"L{params[name]}"
        item.user_properties.append((PARAMS_PROPERTY, json.dumps(params, default=str)))
        for pattern, reason in known.get(str(tier), {}).items():
            if pattern.fullmatch(item.nodeid):
                item.add_marker(
                    pytest.mark.xfail(
                        reason=f"known outcome: {reason}", strict=True, raises=ClaimNotSupported
                    )
                )
                break


def analyses_read_by(items: list[pytest.Item]) -> frozenset[str] | None:
    """The analyses the claims among ``items`` read, from their marks (None: every one)."""
    wanted: set[str] = set()
    for item in items:
        if "analysis" not in getattr(item, "fixturenames", ()):
            continue
        names = marked_analyses(item)
        if not names:
            return None  # an unmarked claim may read anything
        wanted.update(names)
    return frozenset(wanted)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Once ``-k`` / ``-m`` have chosen the claims, narrow the study to what they read."""
    codi = session.config.stash[SESSION_KEY]
    try:
        codi.select_analyses(analyses_read_by(session.items))
    except CodiError as err:
        raise pytest.UsageError(str(err)) from None
    gcpolicy.long_lived_ready()  # the imports and the collected claims


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A claim that did not reach a verdict shows one line, not a traceback per claim.

    A study that is unavailable says so; a claim that crashed (anything but a verdict,
    raised while it ran) becomes an ERROR whose full traceback is written once per cause
    and summarised once at the end of the run (:class:`~.outcomes.ClaimCrash`).
    """
    from codi_fixtures.plugin.outcomes import (
        CRASH_PROPERTY,
        ClaimNotSupported,
        StudyUnavailable,
    )

    report = yield
    err = None if call.excinfo is None else call.excinfo.value
    if isinstance(err, StudyUnavailable):
        report.longrepr = str(err)
    elif (
        call.when == "call"
        and report.failed
        and err is not None
        and not isinstance(err, ClaimNotSupported)
        and {"claim", "analysis"} & set(getattr(item, "fixturenames", ()))
    ):
        try:
            crash = item.config.stash[SESSION_KEY].record_crash(err)
        except Exception as failure:  # e.g. an unwritable cache: keep pytest's own report
            log.warning("could not record the crash of %s: %s", item.nodeid, failure)
        else:
            report.longrepr = crash.short()
            report.user_properties.append((CRASH_PROPERTY, crash.to_json()))
    return report


def pytest_report_teststatus(
    report: pytest.TestReport, config: pytest.Config
) -> tuple[str, str, str] | None:
    """A crashed claim counts as an error (``E``, ``ERROR``), never as a failed verdict."""
    from codi_fixtures.plugin.outcomes import CRASH_PROPERTY

    if report.when == "call" and report.failed and CRASH_PROPERTY in dict(report.user_properties):
        return "error", "E", "ERROR"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """The run is over: freeze what is left, so that the last collections skip it.

    pytest's and the interpreter's final collections, :mod:`~codi_fixtures.plugin.gcpolicy`.
    """
    gcpolicy.session_ended(config)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> Generator[None, None, None]:
    """Innermost wrapper: once every plain hook (pytest-html's writer too) ran, publish."""
    result = yield
    reporter = session.config.pluginmanager.get_plugin("codi-reporter")
    if reporter is not None:
        reporter.publish(session)
    _skip_idle_hypothesis_summary(session.config)
    return result


def _skip_idle_hypothesis_summary(config: pytest.Config) -> None:
    """Drop Hypothesis's pytest plugin when no test used Hypothesis (its summary has nothing).

    Its terminal summary imports ``hypothesis`` unconditionally (0.8 s on 2 cores), even in a
    research run that never touched it; the summary itself (run after this hook) only reports
    on tests that did.
    """
    manager = config.pluginmanager
    plugin = manager.get_plugin("hypothesispytest")
    if plugin is None or "hypothesis" in sys.modules:
        return
    if config.getoption("hypothesis_show_statistics", default=False):
        return
    manager.unregister(plugin)
