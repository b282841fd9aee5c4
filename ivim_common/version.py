"""The toolbox's version (``pyproject.toml`` reads it from here; the package re-exports it)."""

__version__ = "1.0.0.dev0"
