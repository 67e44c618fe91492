"""Loading a generated CUDA module: written to a file and imported, cached in memory.

The file (`<cache dir>/cuda/rshop_cuda_<key>.py`, key = hash of the generator version
and the source) gives the kernels a real filename, so tracebacks and the simulator show
the generated lines. Numba compiles each kernel at its first launch (per argument
types); a module loaded again from memory reuses those compilations. The cache
directory follows the CPU target's: `$RSHOP_CACHE_DIR/cuda`, else
`$XDG_CACHE_HOME/rshop_ir/cuda`, else `~/.cache/rshop_ir/cuda`.
"""

from __future__ import annotations

import hashlib

from rshop_ir.kernels import module_files
from rshop_ir.kernels.cuda.codegen import GENERATOR_VERSION
from rshop_ir.kernels.cuda.device import in_simulator

_MODULES = {}


def cache_dir() -> str:
    """The CUDA target's cache directory (see the module docstring)."""
    return module_files.cache_dir("cuda")


def load_module(source: str):
    digest = hashlib.sha256(f"{GENERATOR_VERSION}\n{in_simulator()}\n{source}".encode())
    key = digest.hexdigest()[:24]
    directory = cache_dir()
    cached = _MODULES.get((directory, key))
    if cached is not None:
        return cached
    path, _ = module_files.write_module_file(directory, f"rshop_cuda_{key}.py", source)
    module = module_files.import_module_file(path, f"rshop_ir_cuda_generated_{key}")
    _MODULES[(directory, key)] = module
    return module

