"""codi-interp: a pytest-driven hypothesis test suite for causal interpretability of CODI models.

Layers (each imports only from those below; ``pyproject.toml`` holds the import-linter
contract): ``model`` -> ``engine`` -> ``study`` | ``stats`` -> ``analyses`` -> ``report`` ->
``plugin``. Public entry points: ``codi_fixtures.model.load_codi``,
``codi_fixtures.engine.run_latent``, ``codi_fixtures.study.runs.compute_study``,
``codi_fixtures.analyses.Analysis`` (the extension point) and ``StudyAnalysis``. The pytest
plugin is ``codi_fixtures.plugin``.
"""

__version__ = "0.1.0"
