"""The error every model-file problem raises: the message names the file and what was found."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint could not be read, recognised or loaded; the message says what was found."""
