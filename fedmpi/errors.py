"""The one user-facing error type, at the bottom of the import graph so any layer may raise it."""
from __future__ import annotations


class ConfigError(ValueError):
    """A user error in the experiment description: reported as one `fedmpi: error:` line, no traceback."""
