"""The thread count of the BLAS that Numba's `np.dot` calls (SciPy's OpenBLAS).

Measured on 2 cores: when another process holds a core, OpenBLAS's threads make a
per-step recurrent GEMM 3-30x SLOWER (they spin and wake each step, and fight the other
pool); on idle cores they pay from about 1 MFLOP per step (LSTM H=256: batch 32 1.65x
faster, batch 8 1.6x, batch 2 1.1x; batch 1 H=512 1.75x). So a kernel call runs BLAS
single-threaded unless its per-step GEMMs are big enough (`THREADED_MIN_STEP_FLOPS`)
AND other processes leave the cores idle (core_load.py), then with OpenBLAS's own
default.
The kernels themselves are never `parallel=True`, so there is one pool at a time.
If SciPy's OpenBLAS cannot be found (another BLAS), nothing is changed.
"""

from __future__ import annotations

import ctypes
import glob
import os
from contextlib import contextmanager

from rshop_ir.kernels.cpu.core_load import others_idle

THREADED_MIN_STEP_FLOPS = 1e6

_API = None


def _api():
    global _API
    if _API is None:
        _API = ()
        try:
            import scipy
            import scipy.linalg.cython_blas  # noqa: F401  (loads the library)

            root = os.path.dirname(os.path.dirname(scipy.__file__))
            for path in sorted(glob.glob(os.path.join(root, "scipy.libs",
                                                      "libscipy_openblas*.so*"))):
                library = ctypes.CDLL(path)
                getter = getattr(library, "scipy_openblas_get_num_threads", None)
                setter = getattr(library, "scipy_openblas_set_num_threads", None)
                if getter is not None and setter is not None:
                    setter.argtypes = [ctypes.c_int]
                    _API = (getter, setter, int(getter()))
                    break
        except (ImportError, OSError):
            _API = ()
    return _API


def blas_predicate(guard: str):
    """`calls(batch, steps)`: whether a call of a kernel whose `KernelSource.blas_guard`
    is `guard` may run BLAS (Numba's `np.dot`, its only route). A call that cannot skips
    `blas_threads_for`, whose library calls cost 2 us of a 0.13 ms LSTM call (S1) and
    12-19 us of a 0.6 ms attention decoder call on a team (S2), which at batch 1 never
    reaches its `np.dot` branches. A guard naming more than B and T is taken as true."""
    if not guard:
        return lambda batch, steps: False
    if guard == "True":
        return lambda batch, steps: True
    test = eval(f"lambda B, T: bool({guard})", {})     # the generator's own expression

    def calls(batch, steps):
        try:
            return test(batch, steps)
        except NameError:
            return True
    return calls


@contextmanager
def blas_threads_for(step_flops: float):
    """Run the block with 1 BLAS thread, or the default count for big step GEMMs."""
    api = _api()
    if not api:
        yield
        return
    getter, setter, default = api
    wanted = default if step_flops >= THREADED_MIN_STEP_FLOPS and others_idle() else 1
    previous = getter()
    if previous != wanted:
        setter(wanted)
    try:
        yield
    finally:
        if previous != wanted:
            setter(previous)
