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
Weight values never enter it: weights are arguments. Nor do the names of the program's
inputs and weights: `run`'s arguments are named after them (`w_lstm_cell_1_kernel`,
readable in the source), and the key hashes the source with those names replaced by
their positions (`canonical_source`). So two models alike but for their layer names
(Keras numbers each new layer: `lstm_cell`, `lstm_cell_1`, ...) share one module, in
memory and on disk, instead of compiling it again. It also hashes the source of the
modules whose Numba functions and intrinsics the generated code compiles into itself
(SUPPORT_MODULES): Numba's cache would not notice that one of them changed.

Cache directory: `$RSHOP_CACHE_DIR`, else `$XDG_CACHE_HOME/rshop_ir/cpu`, else
`~/.cache/rshop_ir/cpu`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re

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


def canonical_source(source: str, named_arguments=()) -> str:
    """`source` with each of `named_arguments` (identifiers) replaced, as a whole word, by
    `@` and its position: text for the key only (no identifier contains `@`)."""
    if not named_arguments:
        return source
    positions = {name: f"@{index}" for index, name in enumerate(named_arguments)}
    pattern = r"\b(" + "|".join(map(re.escape, sorted(positions, key=len, reverse=True))) \
        + r")\b"
    return re.sub(pattern, lambda match: positions[match.group(1)], source)


def module_key(source: str, globals_dict: dict, named_arguments=()) -> str:
    digest = hashlib.sha256()
    digest.update(GENERATOR_VERSION.encode())
    digest.update(_support_digest())
    digest.update(canonical_source(source, named_arguments).encode())
    for name in sorted(globals_dict):
        value = np.ascontiguousarray(globals_dict[name])
        digest.update(name.encode())
        digest.update(str((value.dtype.str, value.shape)).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:24]


def load_module(source: str, globals_dict: dict, named_arguments=()):
    """The module for `source` (from memory, or written/imported from the cache dir);
    `named_arguments`: the names `module_key` leaves out (`KernelSource`'s). The
    module's text may then name them as another program alike did."""
    key = module_key(source, globals_dict, named_arguments)
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
