"""The LLVM optimisation level generated kernels compile at.

Numba runs LLVM's pass pipeline at `NUMBA_OPT` (3 unless set) for everything it
compiles in the process. The generated kernels compile at KERNEL_OPT_LEVEL instead:
measured on the 2-core development machine (ad-hoc script, LSTM (1, 100, 32, 64),
the kernel's first call in a fresh process, median of runs), 3.4-3.5 s at level 3
and 2.9 s at level 2, while the kernels ran as fast (LSTM one-row calls, us per call
at level 3 / 2: 100 steps H=64 130 / 126, H=256 1,554 / 1,546; 1000 steps H=64
1,147 / 1,090). Level 3 adds passes (argument promotion, aggressive instruction
combining, more unrolling) that gain nothing on loop nests whose vector code comes
from the loop vectoriser and the register tiles (compiled apart, tiles.py).

`kernel_optimization()` sets Numba's level for what compiles inside the block and
holds Numba's global compiler lock meanwhile, so no other thread's compilation sees
it. Only compilations go inside: never a kernel run (a team's members compile in
their own threads and would wait for the lock).
"""

from __future__ import annotations

from contextlib import contextmanager

from numba.core import config
from numba.core.compiler_lock import global_compiler_lock

KERNEL_OPT_LEVEL = 2


@contextmanager
def kernel_optimization():
    with global_compiler_lock:
        previous = config.OPT
        config.OPT = type(previous)(KERNEL_OPT_LEVEL)
        try:
            yield
        finally:
            config.OPT = previous


def compile_for(dispatcher, arguments) -> None:
    """Compile (or load from Numba's cache) `dispatcher` for the types of `arguments`
    at KERNEL_OPT_LEVEL, unless it has a compiled version already."""
    if not dispatcher.overloads:     # the per-call check: no typing of the arguments
        compile_for_types(dispatcher, arguments)


def compile_for_types(dispatcher, arguments) -> None:
    """Compile (or load from Numba's cache) `dispatcher` for the types of `arguments`
    at KERNEL_OPT_LEVEL, unless it has a version for exactly these types."""
    from numba import typeof

    signature = tuple(typeof(argument) for argument in arguments)
    if signature in dispatcher.overloads:
        return
    with kernel_optimization():
        dispatcher.compile(signature)
