"""The one module that imports Numba's CUDA target; every other file goes through it.

Switching between the `numba.cuda` bundled with numba and the separate `numba-cuda`
package (which installs the same import name) is a change to this file only. It also
answers "is there a device?" (`cuda_available()`), tells device arrays from host arrays
(anything exposing `__cuda_array_interface__`, and the simulator's fake device arrays),
and allocates/copies device memory.

    ok, reason = cuda_available()       # (False, "no CUDA GPU: ...") on a CPU machine
    array = as_device_array(torch_tensor_on_gpu)   # zero-copy numba device array

Under `NUMBA_ENABLE_CUDASIM=1` (set before numba.cuda is first imported) Numba's CUDA
simulator stands in for a GPU: kernels run as Python, one block at a time.
"""

from __future__ import annotations

import numpy as np

# numba-cuda 0.30 still types NumPy functions that NumPy 2.5 removed (np.row_stack among
# them): with NumPy 2.5 every kernel compilation fails with an AttributeError. Give the
# removed names back as the aliases they were, only where they are missing.
for _removed, _same in (("row_stack", "vstack"), ("trapz", "trapezoid"), ("in1d", "isin")):
    if not hasattr(np, _removed) and hasattr(np, _same):
        setattr(np, _removed, getattr(np, _same))

from numba import config as numba_config  # noqa: E402
from numba import cuda  # noqa: E402

# numba-cuda caps static + dynamic shared memory at 48 KiB per block without opt-in.
SHARED_MEMORY_BYTES = 48 * 1024
DEFAULT_THREADS_PER_BLOCK = 256
SIMULATOR_THREADS_PER_BLOCK = 32    # each simulated thread is a Python thread

__all__ = ["SHARED_MEMORY_BYTES", "as_device_array", "compile_ptx", "cuda",
           "cuda_available", "nvvm_available",
           "default_threads_per_block", "device_count_of_sms", "empty", "in_simulator",
           "is_device_array", "synchronize", "to_device", "to_host"]


def in_simulator() -> bool:
    """True when Numba's CUDA simulator is active (NUMBA_ENABLE_CUDASIM=1)."""
    return bool(getattr(numba_config, "ENABLE_CUDASIM", False))


def cuda_available() -> tuple:
    """(True, description) when kernels can run here, else (False, the reason)."""
    if in_simulator():
        return True, "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"
    try:
        available = cuda.is_available()
    except Exception as error:            # a broken driver install raises here
        return False, f"no CUDA GPU was found: the CUDA driver failed to load ({error})"
    if not available:
        detail = ""
        try:
            from numba.cuda.cudadrv.driver import driver

            cause = getattr(driver, "initialization_error", None)
            if cause:
                detail = f" ({str(cause).strip().splitlines()[0]})"
        except Exception:
            pass
        return False, f"no CUDA GPU was found: numba.cuda.is_available() is False{detail}"
    try:
        device = cuda.get_current_device()
        name = device.name.decode() if isinstance(device.name, bytes) else device.name
        return True, f"{name} (compute capability {device.compute_capability})"
    except Exception as error:
        return False, f"no usable CUDA GPU: {error}"


def default_threads_per_block() -> int:
    return SIMULATOR_THREADS_PER_BLOCK if in_simulator() else DEFAULT_THREADS_PER_BLOCK


def device_count_of_sms() -> int:
    """Streaming multiprocessors of the current device (1 in the simulator)."""
    if in_simulator():
        return 1
    return int(cuda.get_current_device().MULTIPROCESSOR_COUNT)


def is_device_array(value) -> bool:
    """True for numba device arrays, CuPy arrays, torch CUDA tensors, ..."""
    return hasattr(value, "__cuda_array_interface__") or bool(
        getattr(value, "__cuda_ndarray__", False))


def as_device_array(value):
    """A numba device array viewing `value`'s device memory (no copy)."""
    if getattr(value, "__cuda_ndarray__", False) and hasattr(value, "copy_to_host"):
        return value
    return cuda.as_cuda_array(value)


def to_device(array: np.ndarray):
    return cuda.to_device(np.ascontiguousarray(array))


def to_host(array) -> np.ndarray:
    return array.copy_to_host()


def empty(shape, dtype):
    return cuda.device_array(tuple(int(d) for d in shape), dtype=np.dtype(dtype))


def synchronize() -> None:
    cuda.synchronize()


def compile_ptx(kernel, argument_types, compute_capability=(9, 0)) -> str:
    """Compile a `@cuda.jit` kernel to PTX for `argument_types` (numba type names such as
    "float32[::1]", "int64") without a GPU: needs only NVVM (the CUDA toolkit), not a
    driver. Used to type-check generated kernels on machines without a GPU."""
    import numba.cuda.dispatcher as dispatcher_module

    function = getattr(kernel, "py_func", kernel)
    signature = f"void({', '.join(argument_types)})"

    # Device functions called by the kernel ask the current device for its capability.
    fake_device = type("PtxTarget", (), {"compute_capability": tuple(compute_capability)})
    original = getattr(dispatcher_module, "get_current_device", None)
    if original is not None:
        dispatcher_module.get_current_device = lambda: fake_device
    try:
        ptx, _ = cuda.compile_ptx(function, signature, cc=tuple(compute_capability))
    finally:
        if original is not None:
            dispatcher_module.get_current_device = original
    return ptx


def nvvm_available() -> tuple:
    """(True, "") when kernels can be compiled to PTX here, else (False, the reason)."""
    if in_simulator():
        return False, "the CUDA simulator is active (it does not compile kernels)"

    def probe(a):
        a[0] = 1.0

    try:
        compile_ptx(probe, ["float32[::1]"])
    except Exception as error:
        return False, f"NVVM is not available: {type(error).__name__}: {error}"
    return True, ""
