"""Errors raised by the compiler."""


class UnsupportedError(NotImplementedError):
    """A layer or op that the compiler cannot handle.

    The message names the layer (by its Keras name) and the op, so that a user knows
    what to change, or that `backend="auto"` will run that part in Keras instead.
    """
