"""The package's user errors: mistakes in what a run was given, not bugs.

Every error a user can fix by changing the input (data, options, strategy names, the model,
a checkpoint, the context window) derives from :class:`UserError`. The ``paralleldecode``
command prints such an error as one line, ``paralleldecode: error: <message>``, and exits
with status 2; the message names the file, record or option at fault and the accepted
choices. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the run's input; the message says what and where."""


class OptionError(UserError, ValueError):
    """An option has a value the package does not accept."""


class CheckpointError(UserError, ValueError):
    """A checkpoint file is unreadable, of another kind, or does not fit the model."""


class MissingFileError(UserError, FileNotFoundError):
    """A file the run was told to read (a checkpoint, an adapter folder) is not there."""
