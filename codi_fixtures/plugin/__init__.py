"""Layer 6, the ``codi`` pytest plugin (registered by the ``pytest11`` entry point).

Claims (``experiments/test_*.py``) use the fixtures ``analysis`` (a
:class:`~codi_fixtures.analyses.StudyAnalysis` for the test's tier) and ``claim`` (a
:class:`~codi_fixtures.plugin.claims.Claim` that judges a result).

Modules: :mod:`~codi_fixtures.plugin.hooks` (options, markers, parametrisation, known outcomes),
:mod:`~codi_fixtures.plugin.session` (the lazily built model, problems and studies),
:mod:`~codi_fixtures.plugin.fixtures`, :mod:`~codi_fixtures.plugin.claims` (verdicts),
:mod:`~codi_fixtures.plugin.reporter` (the controller's report),
:mod:`~codi_fixtures.plugin.console`, :mod:`~codi_fixtures.plugin.outcomes`,
:mod:`~codi_fixtures.plugin.known_outcomes`, :mod:`~codi_fixtures.plugin.newhooks`. This
module only gathers the hooks and fixtures, so that pytest finds them on the registered plugin.
"""

from codi_fixtures.plugin.fixtures import analysis, claim, codi_model, codi_session
from codi_fixtures.plugin.hooks import (
    pytest_addhooks,
    pytest_addoption,
    pytest_collection_finish,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_generate_tests,
    pytest_report_header,
    pytest_report_teststatus,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_unconfigure,
)

__all__ = [
    "analysis",
    "claim",
    "codi_model",
    "codi_session",
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
