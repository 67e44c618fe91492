"""Type-checking generated kernels by compiling them to PTX, without a GPU.

Numba's CUDA simulator runs kernels as Python, so it never checks that they type and
compile for a real device. Compiling them to PTX needs only NVVM (the CUDA toolkit's
compiler library, present on many machines without a GPU):

    from rshop_ir.kernels.cuda.ptx_check import compile_all
    sizes = compile_all(optimized_bound_program)    # {kernel name: PTX characters}

Run it in a process WITHOUT NUMBA_ENABLE_CUDASIM (device.nvvm_available() says when it
can run). The projection GEMM kernel (gemm.py) is compiled too.
"""

from __future__ import annotations

import numpy as np

from rshop_ir.kernels.cuda import device, gemm
from rshop_ir.kernels.cuda.codegen import generate
from rshop_ir.kernels.cuda.loader import load_module


def generated_ptx(program, rows_per_block: int = 4, compute_capability=(9, 0)) -> tuple:
    """({kernel name: PTX} of every kernel the generator writes for `program`, an
    optimised Program or BoundProgram; the module source)."""
    program = getattr(program, "program", program)
    module_source = generate(program, rows_per_block=rows_per_block)
    module = load_module(module_source.source)
    return ({name: device.compile_ptx(getattr(module, name), types, compute_capability)
             for name, types in module_source.kernels.items()}, module_source)


def compile_all(program, rows_per_block: int = 4, compute_capability=(9, 0)) -> dict:
    """Compile every kernel of `program` (an optimised Program or BoundProgram)."""
    ptx, module_source = generated_ptx(program, rows_per_block, compute_capability)
    sizes = {name: len(text) for name, text in ptx.items()}
    for dtype in sorted({module_source.float_dtype}):
        kernel = gemm._tiled_kernel(gemm.TILE, np.dtype(dtype).type)
        types = [f"{dtype}[::1]", f"{dtype}[::1]", "int64", f"{dtype}[::1]", "int64",
                 "int64", "int64"]
        sizes[f"gemm_tiled_{dtype}"] = len(device.compile_ptx(kernel, types,
                                                              compute_capability))
    return sizes
