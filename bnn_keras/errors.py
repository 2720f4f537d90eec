"""The one exception family for user-facing failures."""


class BnnError(Exception):
    """A failure the user can fix; its message says what was wrong and what to do.

    The CLI prints it as one line, `Error: <message>`, and exits with code 2.
    """


class KerasVersionError(BnnError, ImportError):
    """`tf.keras` is Keras 3, which larq and Larq Compute Engine do not support."""
