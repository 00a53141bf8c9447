"""The one error family MorphScope raises for bad input.

The CLI and the app catch :class:`MorphScopeError` only and print its one-line message;
anything else is a bug and is allowed to surface.
"""


class MorphScopeError(Exception):
    """Base of every error caused by input (a file, a name, an option), never by a bug."""


class UnsupportedFileError(MorphScopeError):
    """The file is missing, empty, truncated or not in a format MorphScope reads."""


class UnsafeFileError(MorphScopeError):
    """The file would run code when loaded (a pickle with a code payload, an unsafe Keras layer)."""


class GraphError(MorphScopeError):
    """The model could not be turned into a channel graph (capture failed, bad input shape)."""


class CheckpointMismatchError(MorphScopeError):
    """A gamma checkpoint does not fit the model (missing or extra keys, wrong shapes)."""
