"""The Numba CUDA target: generated persistent kernels running whole sequences.

    from rshop_ir.kernels.cuda import build, cuda_available
    ok, reason = cuda_available()                       # (False, why) on a CPU machine
    compiled = build(optimized_bound, original_bound)   # a CompiledCudaProgram
    compiled(x)                                          # numpy or device arrays

device.py is the one module importing numba.cuda; codegen.py writes the module (the
host `run` plus kernels), scan_kernel.py the persistent kernel of each scan (in two
layouts: a block per rows, or groups of blocks meeting at group_sync.py's barrier),
eqn_rendering.py every other op, weights.py the packed weight buffer, gemm.py the input
projection GEMM, loader.py loads the source, runtime.py is the callable.
`RSHOP_DEBUG=2` prints the generated source to stderr.
"""

from __future__ import annotations

import sys

from rshop_ir.kernels.cuda.device import cuda_available, in_simulator


def build(optimized, original, weight_reader=None, name: str = "program",
          rows_per_block: int = 4, threads_per_block: int = None,
          shared_memory_bytes: int = None, blocks_per_group: int = None):
    """Generate, load and wrap the CUDA kernels of an optimised BoundProgram.
    `shared_memory_bytes` (default 48 KiB) bounds each scan kernel's shared memory;
    `blocks_per_group` (default: automatic) chooses the scans' layout (runtime.py)."""
    from rshop_ir.kernels.cuda.codegen import generate
    from rshop_ir.kernels.cuda.loader import load_module
    from rshop_ir.kernels.cuda.runtime import CompiledCudaProgram
    from rshop_ir.passes.pipeline import debug_level

    from rshop_ir.kernels.cuda.device import SHARED_MEMORY_BYTES

    module_source = generate(optimized.program, rows_per_block=rows_per_block,
                             shared_memory_bytes=SHARED_MEMORY_BYTES
                             if shared_memory_bytes is None else shared_memory_bytes)
    if debug_level() >= 2:
        print(f"--- generated Numba CUDA source for {name} ---\n{module_source.source}",
              file=sys.stderr)
    module = load_module(module_source.source)
    return CompiledCudaProgram(optimized, original, module_source, module,
                               weight_reader=weight_reader, name=name,
                               threads_per_block=threads_per_block,
                               blocks_per_group=blocks_per_group)


__all__ = ["build", "cuda_available", "in_simulator"]
