"""codi-interp: a pytest-driven hypothesis test suite for causal interpretability of CODI models.

Public entry points (import from their modules): ``codi_fixtures.model.load_codi``,
``codi_fixtures.engine.run_latent``, ``codi_fixtures.study.runs.compute_study``,
``codi_fixtures.analyses.StudyAnalysis``. The pytest plugin is ``codi_fixtures.plugin``.
"""

__version__ = "0.1.0"
