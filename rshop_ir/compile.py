"""`rshop_ir.compile`: the one place joining frontend tracing, passes and kernels.

    c = rshop_ir.compile(layer_or_program, target="cpu")
    y = c(x, initial_state=None, initial_readout=None)   # numpy in, numpy out
    c.ir, c.ir_before_passes, c.source

Accepts an IR `Program` (with `weights=`) or `BoundProgram` (traced, or from
`rshop_ir.load`), or a Keras layer/model (RecurrentModel, RecurrentSequential,
keras.layers.SimpleRNN/GRU/LSTM/RNN(cell)/Bidirectional, or a whole keras.Model). The
Keras tracer is imported only for a Keras object, so compiling and running a loaded
program never imports Keras or TensorFlow. For a Keras object the compiled callable
re-reads the layer's variables at each call and recomputes the weight prologue when
they changed, so it never returns stale results after `set_weights` or training.
"""

from __future__ import annotations

import sys

from rshop_ir.bound import BoundProgram
from rshop_ir.errors import UnsupportedError
from rshop_ir.ir import Program
from rshop_ir.passes.pipeline import optimize

TARGETS = ("cpu", "cuda")


def compile(target_object, target: str = "cpu", *, weights=None, chunk_steps: int = 256,
            max_chunk_bytes: int = 16 * 2 ** 20, rows_per_block: int = 4,
            threads_per_block: int = None):
    """Compile a recurrent layer, a Keras model or an IR program into a kernel.

    Args:
        target_object: a `Program` (give `weights=`), a `BoundProgram`, anything with
            `to_bound_program()` (a compiled object), or a Keras layer/model.
        target: "cpu" (Numba `@njit`) or "cuda" (Numba `@cuda.jit` persistent kernels;
            needs a CUDA GPU, or Numba's simulator with NUMBA_ENABLE_CUDASIM=1).
        weights: name -> array, for a bare `Program`.
        chunk_steps: steps whose input projection is computed by one GEMM (at most;
            fewer when the chunk buffers would exceed `max_chunk_bytes`).
        max_chunk_bytes: bound on the extra memory of the projection chunk buffers.
        rows_per_block: (cuda) batch rows each thread block of a scan kernel owns.
        threads_per_block: (cuda) threads per block; default 256 (32 in the simulator).

    Returns:
        A `CompiledProgram` (cpu) or `CompiledCudaProgram` (cuda): call it like the
        layer (`c(x, initial_state=None, initial_readout=None)`); the CUDA one also
        takes device arrays (`__cuda_array_interface__`) and then returns device arrays.

    Raises:
        UnsupportedError: a layer or op the compiler cannot handle (named).
        ValueError: an unknown or unavailable target (target="cuda" without a GPU).
    """
    if target not in TARGETS:
        raise ValueError(f"Unknown target {target!r}. Expected one of {TARGETS}.")
    if target == "cuda":
        from rshop_ir.kernels.cuda import cuda_available

        available, reason = cuda_available()
        if not available:
            raise ValueError(f"target='cuda' needs a CUDA GPU, and {reason}. Use "
                             f"target='cpu' (or set NUMBA_ENABLE_CUDASIM=1 before importing "
                             f"numba to run the CUDA kernels in Numba's simulator).")
    bound, weight_reader, name = _as_bound_program(target_object, weights)
    optimized = optimize(bound)
    try:
        if target == "cuda":
            from rshop_ir.kernels.cuda import build as build_cuda

            return build_cuda(optimized, bound, weight_reader=weight_reader, name=name,
                              rows_per_block=rows_per_block,
                              threads_per_block=threads_per_block)
        from rshop_ir.kernels.cpu import build

        return build(optimized, bound, weight_reader=weight_reader, name=name,
                     chunk_steps=chunk_steps, max_chunk_bytes=max_chunk_bytes)
    except UnsupportedError as error:
        raise UnsupportedError(f"Cannot compile {name!r} for target={target!r}: "
                               f"{error}") from None


def _as_bound_program(target_object, weights):
    """(BoundProgram, weight reader or None, display name)."""
    if hasattr(target_object, "to_bound_program") and not _is_keras(target_object):
        target_object = target_object.to_bound_program()
    if isinstance(target_object, BoundProgram):
        return target_object, None, "program"
    if isinstance(target_object, Program):
        return BoundProgram(target_object, weights if weights is not None else {}), None, \
            "program"
    if _is_keras(target_object):
        from rshop_ir.frontends.keras_trace import trace_with_variables

        traced = trace_with_variables(target_object)
        return traced.bound, _variable_reader(traced), getattr(target_object, "name", "layer")
    raise TypeError(f"rshop_ir.compile expects an IR Program/BoundProgram or a Keras "
                    f"layer/model; received {type(target_object).__name__}.")


def _variable_reader(traced):
    """The watcher of the traced Keras variables (re-read before every call)."""
    from rshop_ir.keras_variables import VariableWatcher

    return VariableWatcher(traced.variables)


def _is_keras(value) -> bool:
    keras = sys.modules.get("keras")   # a Keras object implies Keras is already imported
    return keras is not None and isinstance(value, (keras.layers.Layer, keras.Model))
