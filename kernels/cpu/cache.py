"""Loading generated modules, with an in-memory and an on-disk cache.

Numba's `cache=True` only works for functions defined in a real module file (exec'd
source has no file to key the cache on), so each generated module is written to
`<cache dir>/rshop_<key>.py` and imported from there; Numba then keeps its compiled
machine code in `<cache dir>/__pycache__/`. A fresh process generating the same source
finds the file and the machine code and compiles nothing; it loads the machine code
without Numba's registry refresh (quick_cache_load.py).

The key hashes the generator version and the generated source (which is a function of
the program text, the shapes and the dtypes; batch and time sizes are runtime
arguments), plus the bytes of any constant arrays the module reads from its globals.
Weight values never enter it: weights are arguments. It also hashes the source of the
modules whose Numba functions and intrinsics the generated code compiles into itself
(SUPPORT_MODULES): Numba's cache would not notice that one of them changed.

Cache directory: `$RSHOP_CACHE_DIR`, else `$XDG_CACHE_HOME/rshop_ir/cpu`, else
`~/.cache/rshop_ir/cpu`.
"""

from __future__ import annotations

import functools
import hashlib
import os

import numpy as np

from rshop_ir.kernels import module_files
from rshop_ir.kernels.cpu.codegen import GENERATOR_VERSION
from rshop_ir.kernels.cpu.quick_cache_load import load_quickly

SUPPORT_MODULES = ("mathlib.py", "new_array.py", "packed_product.py", "reductions.py",
                   "team_sync.py")
_MODULES = {}        # key -> module (the in-memory cache)
STATS = {"memory_hits": 0, "modules_loaded": 0, "files_written": 0}


def cache_dir() -> str:
    """The CPU target's cache directory (see the module docstring)."""
    return module_files.cache_dir("cpu")


@functools.lru_cache(maxsize=1)
def _support_digest() -> bytes:
    """A digest of the SUPPORT_MODULES' source files (read once per process)."""
    digest = hashlib.sha256()
    folder = os.path.dirname(os.path.abspath(__file__))
    for name in SUPPORT_MODULES:
        with open(os.path.join(folder, name), "rb") as file:
            digest.update(file.read())
    return digest.digest()


def module_key(source: str, globals_dict: dict) -> str:
    digest = hashlib.sha256()
    digest.update(GENERATOR_VERSION.encode())
    digest.update(_support_digest())
    digest.update(source.encode())
    for name in sorted(globals_dict):
        value = np.ascontiguousarray(globals_dict[name])
        digest.update(name.encode())
        digest.update(str((value.dtype.str, value.shape)).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:24]


def load_module(source: str, globals_dict: dict):
    """The module for `source` (from memory, or written/imported from the cache dir)."""
    key = module_key(source, globals_dict)
    directory = cache_dir()
    cached = _MODULES.get((directory, key))
    if cached is not None:
        STATS["memory_hits"] += 1
        return cached
    path, written = module_files.write_module_file(directory, f"rshop_{key}.py", source)
    if written:
        STATS["files_written"] += 1
    module = module_files.import_module_file(path, f"rshop_ir_generated_{key}")
    module.__dict__.update(globals_dict)   # objects are passed in, never repr-ed
    load_quickly(module)
    STATS["modules_loaded"] += 1
    _MODULES[(directory, key)] = module
    return module


def clear_memory_cache() -> None:
    _MODULES.clear()
