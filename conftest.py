"""Root conftest: intentionally empty.

The ``codi`` pytest plugin (``codi_fixtures.plugin``) is registered through the
``pytest11`` entry point in ``pyproject.toml``, so it is active wherever the
package is installed; nothing of substance lives here.
"""
