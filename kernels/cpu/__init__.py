"""The Numba CPU target: generated `@njit` modules running whole sequences.

    from rshop_ir.kernels.cpu import build
    compiled = build(optimized_bound, original_bound)   # a CompiledProgram
    compiled(x)                                          # numpy in, numpy out

codegen.py writes the module source (one function per scan plus `run`, or `run` alone
for a lone scan), cache.py loads it (in-memory and on-disk caches), runtime.py is the
callable, mathlib.py the vectorisable scalar math, packed_product.py the
register-tiled recurrent matmul over a packed weight (a Numba intrinsic).
`RSHOP_DEBUG=2` prints the generated source to stderr.
"""

from __future__ import annotations

import sys

from rshop_ir.kernels.cpu.cache import cache_dir, load_module
from rshop_ir.kernels.cpu.codegen import generate
from rshop_ir.kernels.cpu.runtime import CompiledProgram


def build(optimized, original, weight_reader=None, name: str = "program",
          **options) -> CompiledProgram:
    """Generate, load (cached) and wrap the kernel of an optimised BoundProgram."""
    from rshop_ir.passes.pipeline import debug_level

    kernel = generate(optimized.program)
    if debug_level() >= 2:
        print(f"--- generated Numba CPU source for {name} ---\n{kernel.source}",
              file=sys.stderr)
    module = load_module(kernel.source, kernel.globals, kernel.named_arguments)
    return CompiledProgram(optimized, original, kernel, module, weight_reader=weight_reader,
                           name=name, **options)


__all__ = ["CompiledProgram", "build", "cache_dir", "generate", "load_module"]
