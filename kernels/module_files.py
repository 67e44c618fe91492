"""Generated modules as real files: the cache directory, writing, importing.

A generated module is written to a file and imported from it (rather than exec'd) so
that Numba's `cache=True` has a file to key its cache on and tracebacks show the
generated lines. Both targets use this; each keeps its own key derivation and
in-memory cache.

Cache directory of a target: `$RSHOP_CACHE_DIR/<target>`, else
`$XDG_CACHE_HOME/rshop_ir/<target>`, else `~/.cache/rshop_ir/<target>`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile


def cache_dir(target_subdir: str) -> str:
    """The directory generated modules of the target `target_subdir` ("cpu", "cuda")
    are written to."""
    explicit = os.environ.get("RSHOP_CACHE_DIR")
    if explicit:
        return os.path.join(explicit, target_subdir)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rshop_ir", target_subdir)


def write_module_file(directory: str, filename: str, source: str) -> tuple:
    """Write `source` to `directory/filename` atomically, unless the file already holds
    exactly that text. Returns (path, True when the file was written)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, filename)
    if same_text(path, source):
        return path, False
    handle, temporary = tempfile.mkstemp(dir=directory, suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(source)
    os.replace(temporary, path)
    return path, True


def import_module_file(path: str, module_name: str):
    """Import the file `path` as the module `module_name` (registered in sys.modules)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def same_text(path: str, source: str) -> bool:
    """True when the file `path` exists and holds exactly `source`."""
    try:
        with open(path, encoding="utf-8") as stream:
            return stream.read() == source
    except OSError:
        return False
