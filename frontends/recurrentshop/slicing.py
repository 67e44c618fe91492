"""`get_slices`: split the last axis of a tensor into equal parts."""


def get_slices(x, n):
    """Splits the last axis of `x` into `n` equal parts.

    Args:
        x: a tensor or KerasTensor whose last dimension is divisible by `n`.
        n: the number of parts, a positive integer.

    Returns:
        A list of `n` tensors, each with last dimension `x.shape[-1] // n`.

    Example:

    >>> z = keras.Input((40,))
    >>> i, f, c, o = get_slices(z, 4)   # four (None, 10) tensors
    """
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise ValueError(f"`n` must be a positive integer. Received: n={n!r}")
    width = x.shape[-1]
    if width is None or width % n != 0:
        raise ValueError(
            f"The last dimension of `x` must be known and divisible by n={n}. "
            f"Received: x.shape={tuple(x.shape)}"
        )
    step = width // n
    return [x[..., k * step:(k + 1) * step] for k in range(n)]
