"""Names of the execution backends a recurrent layer may ask for."""

KERAS = "keras"
AUTO = "auto"
NUMBA_CPU = "numba-cpu"
NUMBA_CUDA = "numba-cuda"

BACKEND_NAMES = (AUTO, KERAS, NUMBA_CPU, NUMBA_CUDA)
COMPILED_BACKENDS = (NUMBA_CPU, NUMBA_CUDA)


def check_backend_name(backend):
    """Validates a `backend=` argument and returns it.

    `"auto"` runs the compiled CPU kernel at inference where the layer can be compiled
    and the Keras reference otherwise (and always in training); `"numba-cpu"` insists
    on the kernel at inference. The CUDA generator is not built yet, so `"numba-cuda"`
    raises a `ValueError` saying so.
    """
    if not isinstance(backend, str) or backend not in BACKEND_NAMES:
        raise ValueError(
            f"Unknown backend. Received: backend={backend!r}. Expected one of "
            f"{', '.join(repr(name) for name in BACKEND_NAMES)}."
        )
    if backend == NUMBA_CUDA:
        raise ValueError(
            f"backend={backend!r} is not available in this version: the CUDA kernel "
            "generator is not built yet. Pass backend='auto' (compiled CPU kernel where "
            "possible, the Keras reference otherwise), 'numba-cpu' or 'keras'."
        )
    return backend
