"""Errors raised by the compiler."""


class UnsupportedError(NotImplementedError):
    """A layer or op that the compiler cannot handle.

    The message names the layer (by its Keras name) and the op, so that a user knows
    what to change, or that `backend="auto"` will run that part in Keras instead.
    """


class IRVerificationError(ValueError):
    """An IR program is malformed: a value used before it is defined, assigned twice,
    or an equation whose shapes/dtypes disagree with its op's rule.

    The message names the problem and shows the offending line with a few lines of IR
    around it (marked with `>>`).
    """


class IRFormatError(ValueError):
    """A saved program cannot be read: corrupted, truncated, or from a newer format."""
