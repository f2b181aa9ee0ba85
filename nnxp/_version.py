"""The package version, in a module of its own so that low modules can read it.

:mod:`nnxp.archive` records the version in every file it writes; importing it from the
package facade instead would make the file format depend on everything the facade imports.
Keep it equal to ``version`` in ``pyproject.toml``.
"""

__version__ = "0.1.0"
