"""Names of the execution backends a recurrent layer may ask for."""

KERAS = "keras"
AUTO = "auto"
NUMBA_CPU = "numba-cpu"
NUMBA_CUDA = "numba-cuda"

BACKEND_NAMES = (AUTO, KERAS, NUMBA_CPU, NUMBA_CUDA)
COMPILED_BACKENDS = (NUMBA_CPU, NUMBA_CUDA)


def check_backend_name(backend):
    """Validates a `backend=` argument and returns it.

    `"auto"` runs a compiled kernel at inference where the layer can be compiled (CUDA
    on a real GPU, the CPU otherwise) and the Keras reference otherwise and always in
    training; `"numba-cpu"` / `"numba-cuda"` insist on that kernel at inference (the
    GPU is looked for at the first inference call, so a model saved with
    "numba-cuda" still loads on a machine without one); `"keras"` is the reference.
    """
    if not isinstance(backend, str) or backend not in BACKEND_NAMES:
        raise ValueError(
            f"Unknown backend. Received: backend={backend!r}. Expected one of "
            f"{', '.join(repr(name) for name in BACKEND_NAMES)}."
        )
    return backend
