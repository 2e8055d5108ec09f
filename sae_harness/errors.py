"""Failures that the harness explains in one line.

The automated research loop sees only the exit code and the tail of stderr, so every failure we
can foresee is raised as a `HarnessError` whose message names the problem and the fix. `main`
prints that message as the last line of stderr and exits non-zero.
"""


class HarnessError(Exception):
    """A failure with a one-line, self-explaining message (problem and fix)."""


class ConfigurationError(HarnessError):
    """The configuration or environment asks for something impossible; found before any work."""


class DataError(HarnessError):
    """A model, dataset or cache could not be loaded or is corrupt."""
