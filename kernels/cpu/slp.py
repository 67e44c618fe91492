"""Compiling with LLVM's SLP vectoriser on, for the code that needs it.

Numba builds its LLVM pass pipeline with the SLP (straight-line) vectoriser off unless
`NUMBA_SLP_VECTORIZE=1` is set for the whole process. The register tiles of tiles.py
are straight-line code (one scalar accumulator per product element) and only the SLP
vectoriser packs them into vector registers: measured on one core here, a 4x16 tile
ran at 7 GFLOP/s without it and 106-109 GFLOP/s with it.

`slp_vectorizer()` turns Numba's flag on for what compiles inside the block (for a
`cfunc`: its definition) and holds Numba's global compiler lock meanwhile, so no other
thread's compilation sees the flag.
"""

from __future__ import annotations

from contextlib import contextmanager

from numba.core import config
from numba.core.compiler_lock import global_compiler_lock


@contextmanager
def slp_vectorizer():
    with global_compiler_lock:
        previous = config.SLP_VECTORIZE
        config.SLP_VECTORIZE = 1
        try:
            yield
        finally:
            config.SLP_VECTORIZE = previous
