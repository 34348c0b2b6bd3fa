"""User-facing errors.

A ``MopdxError`` is a mistake the user can fix (a config typo, a missing
folder, mismatched tokenizers).  The CLI prints its message as one line and
exits with status 2 instead of dumping a traceback, so the message must say
what to fix.
"""

from __future__ import annotations


class MopdxError(Exception):
    """An error caused by user input; its message says what to change."""


class ConfigError(MopdxError):
    """The merged configuration is invalid (unknown key, wrong type, bad value)."""


class DataError(MopdxError):
    """Prompt data is missing, empty or malformed."""


class ModelError(MopdxError):
    """A model or tokenizer folder is missing or incompatible."""


class RunFolderError(MopdxError):
    """A run folder cannot be used: another process trains in it, or it is not a run folder."""


class TrainingError(MopdxError):
    """Training cannot continue (for example the loss became NaN)."""
