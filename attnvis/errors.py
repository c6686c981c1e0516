"""Exceptions for bad input. The CLI prints their message as one line and exits non-zero."""


class AttnvisError(Exception):
    """Base class: the message names the bad value and what to do."""

    exit_code = 2


class InputError(AttnvisError):
    """A file or argument given by the user is missing, unreadable or out of range."""


class ModelError(AttnvisError):
    """A model cannot be loaded, exported or has no supported attention module."""


class DeviceError(AttnvisError):
    """The requested device or execution provider cannot be used."""


class MissingExtraError(AttnvisError):
    """An optional dependency is not installed; the message names the extra that brings it."""


class AttnvisWarning(UserWarning):
    """Something found and worked around (e.g. a map store's images stored twice, or missing): said, not fatal."""
