"""Names of the execution backends a recurrent layer may ask for."""

KERAS = "keras"
AUTO = "auto"
NUMBA_CPU = "numba-cpu"
NUMBA_CUDA = "numba-cuda"

BACKEND_NAMES = (AUTO, KERAS, NUMBA_CPU, NUMBA_CUDA)
COMPILED_BACKENDS = (NUMBA_CPU, NUMBA_CUDA)


def check_backend_name(backend):
    """Validates a `backend=` argument and returns it.

    Until the kernel generators are built, `"auto"` runs the Keras reference and the
    explicit compiled backends raise a `ValueError` saying so.
    """
    if not isinstance(backend, str) or backend not in BACKEND_NAMES:
        raise ValueError(
            f"Unknown backend. Received: backend={backend!r}. Expected one of "
            f"{', '.join(repr(name) for name in BACKEND_NAMES)}."
        )
    if backend in COMPILED_BACKENDS:
        raise ValueError(
            f"backend={backend!r} is not available in this version: the compiled kernels "
            "are not built yet. Pass backend='auto' (compiled where possible, the Keras "
            "reference otherwise) or backend='keras'."
        )
    return backend
