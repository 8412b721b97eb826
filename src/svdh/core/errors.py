"""Error types a user can act on.

Every error that reaches the command line is one of these: the CLI prints
``error: <message>`` on one line and exits with a non-zero code, no stack trace.
Messages name the file, row or option at fault and say what to do.
"""

from __future__ import annotations


class SvdhError(Exception):
    """Base class of all errors meant for the user."""

    exit_code = 2


class BadRadiographError(SvdhError):
    """An image file that cannot be read as a radiograph."""


class BadDatasetError(SvdhError):
    """A data source, manifest, CSV or label that is missing, malformed or out of range."""


class BadConfigError(SvdhError):
    """An invalid option, experiment file or combination of settings."""


class BadBundleError(SvdhError):
    """A model bundle that is corrupt, tampered with or from an incompatible version."""


class BadRunError(SvdhError):
    """A run or ensemble directory that is incomplete or inconsistent."""


class WeightsUnavailableError(SvdhError):
    """Pretrained weights that cannot be found locally nor downloaded."""
